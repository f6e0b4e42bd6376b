// Population models, MFM and CGFM (population_model.h): training, conditioning, model files.
#include <torch/torch.h>

#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "config_text.h"
#include "fixtures.h"
#include "model.h"
#include "population_model.h"
#include "transport.h"

using namespace popflow;
using namespace fixtures;

TEST_CASE("train_population_model: MFM predicts an unseen population's mean-dependent shift") {
  torch::manual_seed(53);
  std::vector<std::vector<float>> means;
  for (int i = 0; i < 12; ++i) {
    const double a = 2 * M_PI * i / 12;
    means.push_back({static_cast<float>(1.5 * std::cos(a)), static_cast<float>(1.5 * std::sin(a))});
  }
  auto data = mean_shift_populations(means, 150);
  PopulationConfig mc;
  mc.encoder.kind = EncoderKind::GCN;
  mc.encoder.layers = 2;
  mc.encoder.width = 16;
  mc.k = 10;
  mc.cells_per_population = 64;
  mc.populations_per_step = 4;
  auto model = make_population_model(population_flow(), mc, "cpu");
  PF_CHECK(model->config.network.cond_dim == 16);
  PF_CHECK(validate_population_set(*model, data).empty());
  TrainConfig tc;
  tc.steps = 400;
  tc.lr = 3e-3;
  tc.seed = 3;
  auto res = train_population_model(*model, data, tc);
  PF_CHECK(res.status == "completed" && res.steps_done == 400);
  const double first = std::accumulate(res.loss.begin(), res.loss.begin() + 20, 0.0) / 20;
  const double last = std::accumulate(res.loss.end() - 20, res.loss.end(), 0.0) / 20;
  // Independent pairs leave an irreducible variance in the loss: it halves at best here.
  PF_CHECK_MSG(last < 0.6 * first, "loss " << first << " -> " << last);
  // Unseen population between two training ones.
  auto mu = torch::tensor({1.5f * std::cos(0.3f), 1.5f * std::sin(0.3f)});
  auto src = torch::randn({200, 2}) + mu;
  auto cond = population_condition(*model, {src}, torch::Tensor(), torch::Tensor());
  PF_CHECK(cond.size(0) == 1 && cond.size(1) == 16);
  auto pred = transport(model->flow(), src, {0.0, 1.0}, cond.expand({200, -1}), SolverConfig())[1];
  auto gap = (pred.mean(0) - (src.mean(0) + 2 * mu).to(torch::kDouble)).norm().item<double>();
  PF_CHECK_MSG(gap < 0.6, "unseen population's predicted mean is off by " << gap);
  // Save/load: the same conditioning and the same predictions, bit for bit.
  const std::string bytes = save_population_model(*model, "meta");
  std::string meta;
  auto back = load_population_model(bytes, "cpu", &meta);
  PF_CHECK(meta == "meta");
  PF_CHECK(population_config_to_text(back->population) == population_config_to_text(model->population));
  auto cond2 = population_condition(*back, {src}, torch::Tensor(), torch::Tensor());
  PF_CHECK(torch::equal(cond, cond2));
  PF_CHECK(torch::equal(pred, transport(back->flow(), src, {0.0, 1.0}, cond2.expand({200, -1}), SolverConfig())[1]));
  PF_CHECK(save_population_model(*back, "meta") == bytes);
  // The kinds do not mix, and damage is caught.
  PF_CHECK_THROWS_AS(load_model(bytes), std::runtime_error);
  PF_CHECK_THROWS_AS(load_population_model(save_model(model->flow())), std::runtime_error);
  PF_CHECK_THROWS_AS(load_population_model(bytes.substr(0, bytes.size() / 2)), std::runtime_error);
  // A population of no more than k = 10 cells is embedded with k = n - 1 (all its other cells): the
  // same embedding as with any k >= n - 1; an empty one is refused.
  auto few = src.slice(0, 0, 5);
  auto small = embed_populations(*model, {few});
  PF_CHECK(small.size(0) == 1 && torch::isfinite(small).all().item<bool>());
  PF_CHECK_NEAR(small.norm().item<double>(), 1.0, 1e-5);
  model->population.k = 4;
  PF_CHECK(torch::equal(embed_populations(*model, {few}), small));
  model->population.k = 10;
  PF_CHECK_THROWS_AS(population_condition(*model, {src.slice(0, 0, 0)}, torch::Tensor(), torch::Tensor()),
                     std::invalid_argument);
}

TEST_CASE("train_population_model: CGFM learns label-dependent shifts; encoders and OT coupling run") {
  torch::manual_seed(54);
  // Two labels: +2 or -2 along x, whatever the population.
  auto data = mean_shift_populations({{0, 0}, {0, 0}, {0, 1}, {0, 1}}, 120);
  auto x = data.x.clone();
  for (int64_t p = 0; p < 4; ++p) {
    const float shift = p % 2 == 0 ? 2.0f : -2.0f;
    auto src = x.slice(0, p * 240, p * 240 + 120);
    x.slice(0, p * 240 + 120, p * 240 + 240).copy_(src + torch::tensor({shift, 0.0f}));
  }
  data.x = x;
  data.labels = torch::tensor({0, 1, 0, 1}, torch::kLong).reshape({4, 1});
  data.covariates = torch::tensor({0.5f, 0.5f, -0.5f, -0.5f}).reshape({4, 1});
  PopulationConfig mc;
  mc.use_encoder = false;
  mc.label_levels = {2};
  mc.label_dim = 4;
  mc.covariates = 1;
  mc.cells_per_population = 64;
  mc.populations_per_step = 4;
  auto model = make_population_model(population_flow(), mc, "cpu");
  PF_CHECK(model->config.network.cond_dim == 5);
  TrainConfig tc;
  tc.steps = 300;
  tc.lr = 3e-3;
  auto res = train_population_model(*model, data, tc);
  PF_CHECK(res.status == "completed");
  auto src = torch::randn({100, 2});
  auto cond = population_condition(*model, {src, src}, torch::tensor({0, 1}, torch::kLong).reshape({2, 1}),
                                   torch::tensor({0.5f, 0.5f}).reshape({2, 1}));
  auto up = transport(model->flow(), src, {0.0, 1.0}, cond[0].expand({100, -1}), SolverConfig())[1].mean(0);
  auto down = transport(model->flow(), src, {0.0, 1.0}, cond[1].expand({100, -1}), SolverConfig())[1].mean(0);
  PF_CHECK_MSG(up[0].item<double>() - src.mean(0)[0].item<double>() > 1.5, "label 0 moved " << up);
  PF_CHECK_MSG(down[0].item<double>() - src.mean(0)[0].item<double>() < -1.5, "label 1 moved " << down);
  PF_CHECK_THROWS_AS(population_condition(*model, {src}, torch::tensor({2}, torch::kLong).reshape({1, 1}),
                                          torch::tensor({0.5f}).reshape({1, 1})),
                     std::invalid_argument);
  PF_CHECK_THROWS_AS(embed_populations(*model, {src}), std::invalid_argument);
  // Every encoder with an exact-OT coupling runs a few steps; mean and KME need no graph.
  for (auto kind : {EncoderKind::GCN, EncoderKind::Mean, EncoderKind::KME}) {
    PopulationConfig m2;
    m2.encoder.kind = kind;
    m2.encoder.width = 8;
    m2.k = 5;
    m2.max_cells = 50;
    m2.label_levels = {2};
    m2.cells_per_population = 16;
    m2.populations_per_step = 2;
    FlowConfig fc = population_flow();
    fc.coupling.kind = CouplingKind::ExactOT;
    auto mm = make_population_model(fc, m2, "cpu");
    TrainConfig t2;
    t2.steps = 3;
    data.covariates = torch::Tensor();
    auto r2 = train_population_model(*mm, data, t2);
    PF_CHECK(r2.status == "completed" && r2.steps_done == 3);
    auto e = embed_populations(*mm, {src, src + 1});
    PF_CHECK(e.size(0) == 2 && e.size(1) == 8);
    PF_CHECK_NEAR(max_abs(e.norm(2, 1) - 1), 0.0, 1e-5);
    PF_CHECK(population_config_from_text(population_config_to_text(mm->population)).graph_k() == mm->population.graph_k());
  }
  // A model without anything to condition on is refused.
  PopulationConfig none;
  none.use_encoder = false;
  PF_CHECK_THROWS_AS(make_population_model(population_flow(), none, "cpu"), std::invalid_argument);
}

TEST_CASE("train_population_model: alternating schedule trains, round-trips, and unseen labels use the mean embedding") {
  torch::manual_seed(55);
  auto data = mean_shift_populations({{-1.5, 0}, {1.5, 0}, {0, 1.5}, {0, -1.5}}, 120);
  data.labels = torch::tensor({0, 1, 0, 1}, torch::kLong).reshape({4, 1});
  PopulationConfig mc;
  mc.encoder.width = 8;
  mc.k = 5;
  mc.label_levels = {2};
  mc.label_dim = 4;
  mc.alternating = true;
  mc.encoder_lr = 2e-3;
  mc.cells_per_population = 64;
  mc.populations_per_step = 4;
  auto model = make_population_model(population_flow(), mc, "cpu");
  auto encoder_before = model->net->encoder->parameters()[0].clone();
  auto field_before = model->net->field->parameters()[0].clone();
  TrainConfig tc;
  tc.steps = 200;
  tc.lr = 3e-3;
  auto res = train_population_model(*model, data, tc);
  PF_CHECK(res.status == "completed" && res.steps_done == 200);
  // Both parts learn, each on its own steps.
  PF_CHECK(!torch::equal(encoder_before, model->net->encoder->parameters()[0]));
  PF_CHECK(!torch::equal(field_before, model->net->field->parameters()[0]));
  const double first = std::accumulate(res.loss.begin(), res.loss.begin() + 10, 0.0) / 10;
  const double last = std::accumulate(res.loss.end() - 10, res.loss.end(), 0.0) / 10;
  PF_CHECK_MSG(last < first, "loss " << first << " -> " << last);
  auto back = load_population_model(save_population_model(*model), "cpu");
  PF_CHECK(back->population.alternating && back->population.encoder_lr == 2e-3);
  PF_CHECK(population_config_to_text(back->population) == population_config_to_text(model->population));
  // A file without the schedule keys (written before they existed) reads as joint.
  std::string text = population_config_to_text(model->population);
  text = text.substr(0, text.find("schedule="));
  PF_CHECK(!population_config_from_text(text).alternating);
  PF_CHECK_THROWS_AS(population_config_from_text(text + "schedule=sometimes\n"), std::runtime_error);
  // Code -1: the mean of the label's embeddings; training refuses it.
  auto src = torch::randn({60, 2});
  auto cond = population_condition(*model, {src, src, src}, torch::tensor({0, 1, -1}, torch::kLong).reshape({3, 1}),
                                   torch::Tensor());
  auto labels = cond.slice(1, cond.size(1) - 4);
  PF_CHECK_NEAR(max_abs(labels[2] - (labels[0] + labels[1]) / 2), 0.0, 1e-6);
  data.labels = torch::tensor({0, 1, -1, 1}, torch::kLong).reshape({4, 1});
  PF_CHECK_THROWS_AS(train_population_model(*model, data, tc), std::invalid_argument);
}

TEST_CASE("train_population_model: samples by the population configuration, refuses sizes below 1") {
  torch::manual_seed(56);
  auto data = mean_shift_populations({{-1.f, 0.f}, {1.f, 0.f}}, 40);
  PopulationConfig mc;
  mc.use_encoder = false;
  mc.covariates = 1;
  data.covariates = torch::tensor({0.5f, -0.5f}).reshape({2, 1});
  mc.cells_per_population = 24;
  mc.populations_per_step = 1;
  auto model = make_population_model(population_flow(), mc, "cpu");
  TrainConfig tc = quick_train(2);
  tc.batch_size = 0;  // a flow model's setting: not used here
  tc.groups_per_step = 0;
  PF_CHECK(train_population_model(*model, data, tc).steps_done == 2);
  // The sizes travel with the model file.
  auto back = load_population_model(save_population_model(*model));
  PF_CHECK(back->population.cells_per_population == 24 && back->population.populations_per_step == 1);
  for (auto [cells, populations] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {24, 0}, {-3, 2}}) {
    model->population.cells_per_population = cells;
    model->population.populations_per_step = populations;
    const std::string msg = thrown_message([&] { train_population_model(*model, data, tc); });
    PF_CHECK_MSG(msg.find(cells < 1 ? "cells_per_population" : "populations_per_step") != std::string::npos, msg);
    PF_CHECK_THROWS_AS(train_population_model(*model, data, tc), std::invalid_argument);
  }
}

// Paired coupling (CouplingKind::Paired): source row i and target row i are the same cell.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "check.h"
#include "config_text.h"
#include "fixtures.h"
#include "model.h"
#include "population_model.h"
#include "trainer.h"
#include "transport.h"

using namespace popflow;
using namespace fixtures;

namespace {

// A quarter turn of every cell: an isotropic cloud keeps its distribution, so
// only the pairs tell the field what to learn.
torch::Tensor quarter_turn(const torch::Tensor& x) { return torch::stack({-x.select(1, 1), x.select(1, 0)}, 1); }

// Source N(0, I) and target = its quarter turn, row by row; `groups` blocks of n cells each.
TrainingData turned_pairs(int64_t n, int64_t groups = 1) {
  auto src = torch::randn({n * groups, 2});
  TrainingData d;
  d.x = torch::cat({src, quarter_turn(src)});
  d.time_index.assign(n * groups, 0);
  d.time_index.resize(2 * n * groups, 1);
  if (groups > 1)
    for (int side = 0; side < 2; ++side)
      for (int64_t g = 0; g < groups; ++g) d.group.insert(d.group.end(), n, g);
  return d;
}

FlowConfig paired_flow(CouplingKind coupling) {
  FlowConfig cfg = small_flow(2);
  cfg.path.sigma = 0.0;
  cfg.coupling.kind = coupling;
  return cfg;
}

// Mean distance between each transported source cell and its own target.
double mean_pair_error(const FlowModel& model, const torch::Tensor& src) {
  auto pred = transport(model, src, model.config.times, torch::Tensor(), solver(SolverKind::RK4, 20)).back();
  return (pred - quarter_turn(src).to(torch::kDouble)).norm(2, 1).mean().item<double>();
}

}  // namespace

TEST_CASE("draw_paired_rows: the same positions on both sides, drawn as draw_rows draws") {
  std::vector<int64_t> sources(12), targets(12);
  std::iota(sources.begin(), sources.end(), 10);
  std::iota(targets.begin(), targets.end(), 110);
  for (int64_t n : {5, 12, 30}) {  // without replacement, all rows, with replacement
    std::mt19937_64 rng(n), same(n);
    const PairedRows rows = draw_paired_rows(sources, targets, n, rng);
    PF_CHECK(rows.source.size(0) == n && rows.target.size(0) == n);
    PF_CHECK(torch::equal(rows.target, rows.source + 100));
    PF_CHECK(torch::equal(rows.source, draw_rows(sources, n, same)));
    PF_CHECK(rng() == same());  // and nothing more
  }
  std::mt19937_64 rng(1);
  PF_CHECK_THROWS_AS(draw_paired_rows(sources, {1, 2}, 3, rng), std::invalid_argument);
}

TEST_CASE("draw_rows: Floyd's sampling without replacement, distinct rows, the positions a plain set gives") {
  // The reference: Floyd's algorithm with a std::set for "was r picked?", then the same shuffle.
  const auto reference = [](int64_t m, int64_t n, std::mt19937_64& rng) {
    std::vector<int64_t> out;
    std::set<int64_t> chosen;
    for (int64_t j = m - n; j < m; ++j) {
      const int64_t r = std::uniform_int_distribution<int64_t>(0, j)(rng);
      const int64_t pick = chosen.count(r) ? j : r;
      chosen.insert(pick);
      out.push_back(pick);
    }
    std::shuffle(out.begin(), out.end(), rng);
    return out;
  };
  std::mt19937_64 rng(7), same(7);
  // Successive draws from one generator (the picks of one draw must not linger into the next),
  // pools growing and shrinking, all of a pool, one row.
  for (int64_t m : {50, 3, 1000, 200, 64, 65, 1}) {
    std::vector<int64_t> pool(static_cast<size_t>(m));
    std::iota(pool.begin(), pool.end(), 1000);
    for (int64_t n : {m, (m + 1) / 2, int64_t{1}}) {
      const torch::Tensor rows = draw_rows(pool, n, rng);
      const std::vector<int64_t> expected = reference(m, n, same);
      PF_CHECK(rows.size(0) == n);
      for (int64_t k = 0; k < n; ++k) PF_CHECK_MSG(rows[k].item<int64_t>() == 1000 + expected[k], m << " " << n);
      PF_CHECK(std::get<0>(torch::_unique(rows)).size(0) == n);
    }
  }
  PF_CHECK(rng() == same());
}

TEST_CASE("train: paired coupling learns each cell's own target, which unpaired couplings cannot") {
  auto data = [] {
    torch::manual_seed(81);
    return turned_pairs(400);
  }();
  auto held_out = torch::randn({200, 2});
  double error[2];
  int i = 0;
  for (auto coupling : {CouplingKind::Paired, CouplingKind::Independent}) {
    torch::manual_seed(82);
    auto model = make_model(paired_flow(coupling), "cpu");
    auto res = train(*model, data, quick_train(300));
    PF_CHECK(res.status == "completed");
    error[i++] = mean_pair_error(*model, held_out);
  }
  // A quarter turn moves a cell sqrt(2) |x| ~ 1.8 on average; independent pairs learn (nearly) no motion.
  PF_CHECK_MSG(error[0] < 0.25, "paired: mean distance to the true partner " << error[0]);
  PF_CHECK_MSG(error[1] > 1.0, "independent: mean distance to the true partner " << error[1]);
  // Groups pair within themselves; the seeded fit is reproducible.
  auto grouped = [] {
    torch::manual_seed(83);
    return turned_pairs(50, 3);
  }();
  auto fit = [&] {
    torch::manual_seed(84);
    auto model = make_model(paired_flow(CouplingKind::Paired), "cpu");
    TrainConfig tc = quick_train(5);
    tc.batch_size = 16;
    tc.groups_per_step = 2;
    return train(*model, grouped, tc).loss;
  };
  PF_CHECK(fit() == fit());
}

TEST_CASE("train: paired coupling refuses unequal groups, three snapshots and target FM") {
  torch::manual_seed(85);
  TrainingData data = turned_pairs(6, 2);
  data.group[1] = 1;  // group 0: 5 source cells, group 1: 7
  auto model = make_model(paired_flow(CouplingKind::Paired), "cpu");
  std::string msg = thrown_message([&] { train(*model, data, quick_train(2)); });
  PF_CHECK_MSG(msg.find("group 0 has 5 source and 6 target cells") != std::string::npos, msg);
  PF_CHECK_THROWS_AS(train(*model, data, quick_train(2)), std::invalid_argument);

  TrainingData three = turned_pairs(6);
  three.time_index.back() = 2;
  model = make_model(small_flow(2, {0.0, 1.0, 2.0}), "cpu");
  model->config.coupling.kind = CouplingKind::Paired;
  msg = thrown_message([&] { train(*model, three, quick_train(2)); });
  PF_CHECK_MSG(msg.find("exactly two snapshot times") != std::string::npos, msg);

  FlowConfig target_fm = paired_flow(CouplingKind::Paired);
  target_fm.path.kind = PathKind::TargetFM;
  model = make_model(target_fm, "cpu");
  msg = thrown_message([&] { train(*model, turned_pairs(6), quick_train(2)); });
  PF_CHECK_MSG(msg.find("target FM") != std::string::npos, msg);
}

TEST_CASE("train_population_model: paired coupling pairs within populations, refuses unequal ones") {
  torch::manual_seed(86);
  // Three populations at different places, each turned a quarter about its own centre.
  PopulationSet data;
  std::vector<torch::Tensor> xs;
  for (int64_t p = 0; p < 3; ++p) {
    auto centre = torch::tensor({static_cast<float>(p) - 1.0f, 0.5f * static_cast<float>(p)});
    auto src = torch::randn({80, 2}) * 0.5;
    xs.push_back(src + centre);
    xs.push_back(quarter_turn(src) + centre);
    data.side.insert(data.side.end(), 80, 0);
    data.side.insert(data.side.end(), 80, 1);
    data.population.insert(data.population.end(), 160, p);
  }
  data.x = torch::cat(xs);
  const PopulationConfig mc = small_population(EncoderKind::Mean, 1, 8, 64, 3);
  FlowConfig fc = population_flow();
  fc.path.sigma = 0.0;
  fc.coupling.kind = CouplingKind::Paired;
  torch::manual_seed(87);
  auto model = make_population_model(fc, mc, "cpu");
  TrainConfig tc = quick_train(300);
  auto res = train_population_model(*model, data, tc);
  PF_CHECK(res.status == "completed");
  // Every training cell of population 1 lands near its own partner.
  auto src = data.x.slice(0, 160, 240), tgt = data.x.slice(0, 240, 320);
  auto cond = population_condition(*model, {src}, torch::Tensor(), torch::Tensor());
  auto pred = transport(model->flow(), src, {0.0, 1.0}, cond.expand({80, -1}), solver(SolverKind::RK4, 20))[1];
  const double error = (pred - tgt.to(torch::kDouble)).norm(2, 1).mean().item<double>();
  PF_CHECK_MSG(error < 0.2, "mean distance to the true partner " << error);

  PopulationSet unequal = data;
  unequal.side[2 * 160 + 3] = 1;  // population 2: 79 source and 81 target cells
  std::string msg = thrown_message([&] { train_population_model(*model, unequal, quick_train(2)); });
  PF_CHECK_MSG(msg.find("population 2 has 79 source and 81 target cells") != std::string::npos, msg);
  PF_CHECK_THROWS_AS(train_population_model(*model, unequal, quick_train(2)), std::invalid_argument);
}

TEST_CASE("model file: coupling=paired round-trips (flow and population models)") {
  torch::manual_seed(88);
  auto flow = make_model(paired_flow(CouplingKind::Paired), "cpu");
  PF_CHECK(flow_config_to_text(flow->config).find("coupling=paired\n") != std::string::npos);
  const std::string bytes = save_model(*flow);
  auto back = load_model(bytes);
  PF_CHECK(back->config.coupling.kind == CouplingKind::Paired);
  PF_CHECK(save_model(*back) == bytes);
  FlowConfig fc = population_flow();
  fc.coupling.kind = CouplingKind::Paired;
  PopulationConfig mc;
  mc.encoder.layers = 1;
  mc.encoder.width = 8;
  auto population = make_population_model(fc, mc, "cpu");
  auto population_back = load_population_model(save_population_model(*population));
  PF_CHECK(population_back->config.coupling.kind == CouplingKind::Paired);
}

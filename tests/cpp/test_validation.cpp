// Validation during training (TrainCallbacks::validate in run_training) and the
// validators of held-out data (validation.h).
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "check.h"
#include "config_text.h"
#include "fixtures.h"
#include "model.h"
#include "population_model.h"
#include "trainer.h"
#include "validation.h"

using namespace popflow;
using namespace fixtures;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// A flow fit whose validator returns scripted scores by step and keeps a copy
// of the weights it was shown at each step.
struct ScriptedFit {
  std::map<int64_t, double> scores;
  std::map<int64_t, std::vector<torch::Tensor>> shown;
  std::shared_ptr<FlowModel> model;
  TrainResult result;

  ScriptedFit(std::map<int64_t, double> scripted, int64_t steps, int64_t every, int64_t patience, bool keep_best = true)
      : scores(std::move(scripted)) {
    auto data = [] {
      torch::manual_seed(91);
      return shifted_pair(100, 2.0);
    }();
    torch::manual_seed(92);
    model = make_model(small_flow(2), "cpu");
    TrainCallbacks cb;
    cb.validate_every = every;
    cb.patience = patience;
    cb.keep_best = keep_best;
    cb.validate = [this](int64_t step) {
      PF_CHECK(!torch::GradMode::is_enabled() && !model->net->is_training());
      for (const auto& p : model->net->parameters()) shown[step].push_back(p.detach().clone());
      return scores.count(step) ? scores.at(step) : 100.0;
    };
    TrainConfig tc = quick_train(steps);
    tc.batch_size = 32;
    tc.ema_decay = 0.9;  // validation sees (and keeps) the averaged weights
    result = train(*model, data, tc, cb);
  }

  bool holds_weights_of(int64_t step) const {
    const auto params = model->net->parameters();
    const auto& kept = shown.at(step);
    for (size_t i = 0; i < params.size(); ++i)
      if (!torch::equal(params[i], kept[i])) return false;
    return true;
  }
};

}  // namespace

TEST_CASE("run_training: validation keeps the best step's weights") {
  ScriptedFit fit({{5, 3.0}, {10, 1.0}, {15, 2.0}, {20, 1.0}, {25, 4.0}}, 28, 5, 0);
  PF_CHECK(fit.result.status == "completed" && fit.result.steps_done == 28);
  // Every 5 steps and after the last; ties are no improvement.
  PF_CHECK((fit.result.validation_steps == std::vector<int64_t>{5, 10, 15, 20, 25, 28}));
  PF_CHECK((fit.result.validation_scores == std::vector<double>{3.0, 1.0, 2.0, 1.0, 4.0, 100.0}));
  PF_CHECK(fit.result.best_step == 10 && fit.result.best_score == 1.0);
  PF_CHECK(fit.holds_weights_of(10));
  PF_CHECK(!fit.holds_weights_of(28));
  // Without keep_best the last step's (averaged) weights stay; the losses never depend on validation.
  ScriptedFit last({{5, 3.0}, {10, 1.0}}, 28, 5, 0, false);
  PF_CHECK(last.result.best_step == 10 && last.holds_weights_of(28));
  PF_CHECK(last.result.loss == fit.result.loss);
  // Non-finite scores never win; validate_every = 0 validates after the last step only.
  ScriptedFit nonfinite({{4, kNaN}, {8, 5.0}, {12, std::numeric_limits<double>::infinity()}}, 12, 4, 0);
  PF_CHECK(nonfinite.result.best_step == 8 && nonfinite.holds_weights_of(8));
  ScriptedFit once({}, 7, 0, 0);
  PF_CHECK((once.result.validation_steps == std::vector<int64_t>{7}) && once.result.best_step == 7);
  PF_CHECK(once.holds_weights_of(7));
  ScriptedFit none({{1, kNaN}, {2, kNaN}, {3, kNaN}}, 3, 1, 0);
  PF_CHECK(none.result.best_step == 0 && std::isnan(none.result.best_score) && none.holds_weights_of(3));
}

TEST_CASE("run_training: early stop after `patience` validations without improvement") {
  ScriptedFit fit({{5, 3.0}, {10, 1.0}, {15, 2.0}, {20, 1.5}, {25, 0.5}}, 40, 5, 2);
  PF_CHECK(fit.result.status == "early_stop" && fit.result.steps_done == 20);
  PF_CHECK((fit.result.validation_steps == std::vector<int64_t>{5, 10, 15, 20}));
  PF_CHECK(fit.result.best_step == 10 && fit.holds_weights_of(10));
  PF_CHECK(fit.result.loss.size() == 20);
  // Patience 1 stops at the first validation that does not improve.
  ScriptedFit eager({{5, 3.0}, {10, 3.5}}, 40, 5, 1);
  PF_CHECK(eager.result.status == "early_stop" && eager.result.steps_done == 10 && eager.result.best_step == 5);
}

TEST_CASE("run_training: a fit that returns its best weights resumes from its last step") {
  auto data = [] {
    torch::manual_seed(93);
    return shifted_pair(100, 2.0);
  }();
  for (double ema : {0.0, 0.9}) {
    auto fresh = [] {
      torch::manual_seed(94);
      return make_model(small_flow(2), "cpu");
    };
    TrainConfig tc = quick_train(20);
    tc.batch_size = 32;
    tc.ema_decay = ema;
    auto full = fresh();
    train(*full, data, tc);
    TrainCallbacks cb;
    cb.validate_every = 5;
    cb.validate = [](int64_t step) { return step == 5 ? 0.0 : 1.0; };
    auto half = fresh();
    tc.steps = 10;
    auto res = train(*half, data, tc, cb);
    PF_CHECK(res.best_step == 5 && half->train_state.step == 10);
    auto resumed = load_model(save_model(*half));
    tc.steps = 20;
    tc.resume = true;
    train(*resumed, data, tc);
    PF_CHECK_MSG(same_parameters(*resumed->net, *full->net), "ema " << ema);
  }
}

TEST_CASE("set_distance: the metrics of metrics.h on cell sets") {
  torch::manual_seed(95);
  auto x = torch::randn({30, 2});
  auto y = x + torch::tensor({3.0f, 4.0f});
  PF_CHECK_NEAR(set_distance(DistanceMetric::W1, x, y), 5.0, 1e-5);
  PF_CHECK_NEAR(set_distance(DistanceMetric::W2, x, y), 5.0, 1e-5);
  PF_CHECK_NEAR(set_distance(DistanceMetric::MMD, x, x), 0.0, 1e-12);
  PF_CHECK_NEAR(set_distance(DistanceMetric::Energy, x, x.to(torch::kDouble)), 0.0, 1e-12);
  PF_CHECK(set_distance(DistanceMetric::MMD, x, y) > 0.1);
  PF_CHECK_THROWS_AS(set_distance(DistanceMetric::W1, x, torch::randn({4, 3})), std::invalid_argument);
}

TEST_CASE("flow_validator: the held-out score falls as the flow learns") {
  torch::manual_seed(96);
  auto data = shifted_pair(300, 3.0);
  auto model = make_model(small_flow(2), "cpu");
  FlowHoldout held_out;
  held_out.source = torch::randn({400, 2});
  held_out.target = held_out.source + torch::tensor({3.0f, 0.0f});
  ValidationConfig vc;
  vc.metric = method_value<DistanceMetric>("W2");
  vc.solver = solver(SolverKind::RK4, 10);
  vc.max_cells = 150;
  auto validate = flow_validator(*model, {held_out}, vc);
  const double untrained = validate(0);
  PF_CHECK(untrained == flow_validator(*model, {held_out}, vc)(0));  // the same subset each time
  TrainCallbacks cb;
  cb.validate = validate;
  cb.validate_every = 50;
  auto res = train(*model, data, quick_train(200), cb);
  PF_CHECK(res.validation_scores.size() == 4);
  PF_CHECK_MSG(res.validation_scores.back() < 0.3 * untrained,
               "W2 " << untrained << " untrained, " << res.validation_scores.back() << " after 200 steps");
  PF_CHECK_NEAR(validate(0), res.best_score, 1e-9);  // the returned weights are the best ones
  // Sets that do not fit the model are refused when the validator is made.
  FlowHoldout wrong = held_out;
  wrong.target = torch::randn({10, 3});
  PF_CHECK_THROWS_AS(flow_validator(*model, {wrong}, vc), std::invalid_argument);
  PF_CHECK_THROWS_AS(flow_validator(*model, {}, vc), std::invalid_argument);
}

TEST_CASE("population_validator: an unseen population's score falls as MFM learns") {
  torch::manual_seed(97);
  auto data = mean_shift_populations({{-1.5f, 0.f}, {0.f, 1.5f}, {1.5f, 0.f}, {0.f, -1.5f}}, 100);
  auto model = make_population_model(population_flow(), small_population(EncoderKind::Mean, 2, 16, 64, 4), "cpu");
  PopulationHoldout unseen;
  unseen.source = torch::randn({200, 2}) + torch::tensor({1.0f, 1.0f});
  unseen.target = unseen.source + torch::tensor({2.0f, 2.0f});
  ValidationConfig vc;
  vc.metric = DistanceMetric::MMD;
  vc.solver = solver(SolverKind::RK4, 10);
  auto validate = population_validator(*model, {unseen}, vc);
  const double untrained = validate(0);
  TrainCallbacks cb;
  cb.validate = validate;
  cb.validate_every = 100;
  TrainConfig tc = quick_train(300);
  auto res = train_population_model(*model, data, tc, cb);
  PF_CHECK(res.validation_steps.size() == 3);
  PF_CHECK_MSG(res.best_score < 0.3 * untrained, "MMD " << untrained << " untrained, best " << res.best_score);
  // A model with labels needs each set's label codes.
  PopulationConfig cgfm;
  cgfm.use_encoder = false;
  cgfm.label_levels = {4};
  auto labelled = make_population_model(population_flow(), cgfm, "cpu");
  PF_CHECK_THROWS_AS(population_validator(*labelled, {unseen}, vc), std::invalid_argument);
  unseen.labels = torch::tensor({-1}, torch::kLong);  // unseen value: the mean label embedding
  PF_CHECK(std::isfinite(population_validator(*labelled, {unseen}, vc)(0)));
}

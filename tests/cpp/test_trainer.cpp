// Training flow models (trainer.h) and predicting with them (transport.h).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "cpu_block_cache.h"
#include "fixtures.h"
#include "model.h"
#include "trainer.h"
#include "transport.h"

using namespace popflow;
using namespace fixtures;

namespace {

torch::Tensor column_means(const torch::Tensor& x) { return x.mean(0); }

}  // namespace

TEST_CASE("train: ICFM learns a translation") {
  torch::manual_seed(30);
  FlowConfig cfg = small_flow(2);
  cfg.path.kind = PathKind::ICFM;
  cfg.path.sigma = 0.1;
  auto data = shifted_pair(600, 3.0);
  auto model = make_model(cfg, "cpu");
  PF_CHECK(validate_training_data(*model, data).empty());
  auto res = train(*model, data, quick_train(300));
  PF_CHECK(res.status == "completed");
  PF_CHECK(res.steps_done == 300 && res.loss.size() == 300);
  const double first = std::accumulate(res.loss.begin(), res.loss.begin() + 10, 0.0) / 10;
  const double last = std::accumulate(res.loss.end() - 10, res.loss.end(), 0.0) / 10;
  PF_CHECK_MSG(last < 0.5 * first, "loss " << first << " -> " << last);
  auto src = data.x.slice(0, 0, 600), tgt = data.x.slice(0, 600, 1200);
  auto pred = transport(*model, src, {0.0, 1.0}, torch::Tensor(), SolverConfig())[1];
  PF_CHECK(pred.dtype() == torch::kDouble && pred.size(0) == 600);
  auto gap = column_means(pred) - column_means(tgt).to(torch::kDouble);
  PF_CHECK_MSG(gap.norm().item<double>() < 0.3, "predicted mean misses the target mean by " << gap);
  // Fixed-step and adaptive sampling agree, and cheaply: a field that is
  // smooth in t needs few steps (a time embedding with fast waves, up to
  // 1000 pi rad per unit time, once made RK4 need ~400 steps here and dopri5
  // ~1100 evaluations).
  OdeStats st;
  auto pred_again = transport(*model, src, {0.0, 1.0}, torch::Tensor(), SolverConfig(), 1, &st)[1];
  PF_CHECK(torch::equal(pred_again, pred));
  PF_CHECK_MSG(st.evaluations < 300, "dopri5 needed " << st.evaluations << " evaluations");
  auto pred_rk4 = transport(*model, src, {0.0, 1.0}, torch::Tensor(), solver(SolverKind::RK4, 20))[1];
  PF_CHECK_NEAR(max_abs(pred_rk4 - pred), 0.0, 5e-3);
}

TEST_CASE("train: same seed gives bit-identical results") {
  auto data = [] {
    torch::manual_seed(31);
    return shifted_pair(200, 2.0);
  }();
  auto run = [&](uint64_t seed, CouplingKind coupling, PathKind path) {
    FlowConfig cfg = small_flow(2);
    cfg.coupling.kind = coupling;
    cfg.path.kind = path;
    torch::manual_seed(seed);
    auto model = make_model(cfg, "cpu");
    TrainConfig tc = quick_train(25);
    tc.batch_size = 32;
    tc.seed = seed;
    auto res = train(*model, data, tc);
    return std::make_pair(res.loss, model);
  };
  for (auto [coupling, path] : std::vector<std::pair<CouplingKind, PathKind>>{
           {CouplingKind::Independent, PathKind::ICFM},
           {CouplingKind::ExactOT, PathKind::SBCFM},
           {CouplingKind::Sinkhorn, PathKind::SBCFM}}) {
    auto a = run(9, coupling, path), b = run(9, coupling, path), c = run(10, coupling, path);
    PF_CHECK(a.first.size() == 25);
    PF_CHECK(a.first == b.first);
    PF_CHECK(same_parameters(*a.second->net, *b.second->net));
    PF_CHECK(a.first != c.first);
    PF_CHECK(!same_parameters(*a.second->net, *c.second->net));
  }
}

TEST_CASE("cpu_block_cache: large CPU blocks are reused within a scope, capped, and freed when it ends") {
  const auto stats = [] { return cpu_block_cache_stats(); };
  const int64_t mb = 1 << 20;
  const auto before = stats();
  {
    const CpuBlockCacheScope scope(3 * mb / 2);  // room for one 1 MiB block
    void* first = nullptr;
    {
      auto a = torch::empty({mb / 4}, torch::kFloat);  // 1 MiB
      first = a.data_ptr();
      auto small = torch::empty({16}, torch::kFloat);  // LibTorch's own allocator
    }
    PF_CHECK(stats().cached_bytes == mb);
    auto b = torch::empty({mb / 4 - 100}, torch::kFloat);  // the same size class
    PF_CHECK(b.data_ptr() == first && stats().hits == before.hits + 1 && stats().cached_bytes == 0);
    b.fill_(2.0f);
    PF_CHECK(b.sum().item<double>() == 2.0 * static_cast<double>(b.numel()));
    {
      auto c = torch::empty({mb / 4}, torch::kFloat), d = torch::empty({mb / 4}, torch::kFloat);
    }
    PF_CHECK(stats().cached_bytes == mb);  // one of the two: the cap
    auto kept = torch::empty({mb / 4}, torch::kFloat);
    const CpuBlockCacheScope nested;  // nested scopes share the cache
    kept = torch::Tensor();
    PF_CHECK(stats().cached_bytes == mb);  // full: the freed block went back to the system
    // A block the system cannot give is LibTorch's allocation error, in its words (the R glue reads them).
    bool refused = false;
    try {
      torch::empty({int64_t{1} << 48}, torch::kFloat);  // 1 PiB
    } catch (const c10::Error& e) {
      refused = std::string(e.what()).find("can't allocate memory") != std::string::npos;
    }
    PF_CHECK(refused);
  }
  PF_CHECK(stats().cached_bytes == 0);  // the last scope frees what it kept
  // Outside any scope, blocks go to LibTorch's allocator: nothing is counted or kept.
  const auto outside = stats();
  { auto e = torch::empty({mb / 4}, torch::kFloat); }
  PF_CHECK(stats().hits == outside.hits && stats().misses == outside.misses && stats().cached_bytes == 0);
  // A fit reuses its step's large blocks (1024 rows a step: inputs and activations of 64 KiB or more).
  torch::manual_seed(8);
  const auto data = shifted_pair(1500, 1.0);
  auto model = make_model(small_flow(2), "cpu");
  TrainConfig tc = quick_train(20);
  tc.batch_size = 1024;
  const auto at_start = stats();
  train(*model, data, tc);
  PF_CHECK(stats().hits > at_start.hits + 10 && stats().cached_bytes == 0);
}

TEST_CASE("train: progress callback stops training") {
  torch::manual_seed(32);
  auto data = shifted_pair(200, 2.0);
  auto model = make_model(small_flow(2), "cpu");
  std::vector<int64_t> calls;
  TrainCallbacks cb;
  cb.every = 5;
  cb.progress = [&](int64_t step, double loss) {
    calls.push_back(step);
    PF_CHECK(std::isfinite(loss));
    return step < 15;
  };
  auto res = train(*model, data, quick_train(100), cb);
  PF_CHECK(res.status == "interrupted");
  PF_CHECK(res.steps_done == 15 && res.loss.size() == 15);
  PF_CHECK((calls == std::vector<int64_t>{5, 10, 15}));
  auto pred = transport(*model, data.x.slice(0, 0, 50), {0.0, 1.0}, torch::Tensor(), SolverConfig());
  PF_CHECK(torch::isfinite(pred[1]).all().item<bool>());
  // A callback that always agrees is called at every `every` steps and at the last one.
  calls.clear();
  cb.every = 4;
  cb.progress = [&](int64_t step, double) { calls.push_back(step); return true; };
  res = train(*model, data, quick_train(10), cb);
  PF_CHECK(res.status == "completed");
  PF_CHECK((calls == std::vector<int64_t>{4, 8, 10}));
}

TEST_CASE("train: time limit and invalid inputs") {
  torch::manual_seed(33);
  auto data = shifted_pair(100, 1.0);
  auto model = make_model(small_flow(2), "cpu");
  TrainConfig tc = quick_train(1000000);
  tc.time_limit_s = 0.2;
  auto res = train(*model, data, tc);
  PF_CHECK(res.status == "time_limit");
  PF_CHECK(res.steps_done > 0 && res.steps_done < 1000000);
  // validate_training_data names the problem; train refuses such data.
  TrainingData bad = data;
  bad.x = data.x.slice(1, 0, 1);
  PF_CHECK(validate_training_data(*model, bad).find("features") != std::string::npos);
  PF_CHECK_THROWS_AS(train(*model, bad, quick_train(2)), std::invalid_argument);
  bad = data;
  bad.x = data.x.clone();
  bad.x[3][1] = std::nanf("");
  PF_CHECK(!validate_training_data(*model, bad).empty());
  PF_CHECK_THROWS_AS(train(*model, bad, quick_train(2)), std::invalid_argument);
  bad = data;
  bad.time_index[0] = 2;
  PF_CHECK(validate_training_data(*model, bad).find("range") != std::string::npos);
  bad = data;
  std::fill(bad.time_index.begin(), bad.time_index.end(), 0);  // nothing at t = 1
  PF_CHECK_THROWS_AS(train(*model, bad, quick_train(2)), std::invalid_argument);
  tc = quick_train(2);
  tc.lr = 0;
  PF_CHECK_THROWS_AS(train(*model, data, tc), std::invalid_argument);
  PF_CHECK_THROWS_AS(transport(*model, torch::randn({3, 5}), {0.0, 1.0}, torch::Tensor(), SolverConfig()),
                  std::invalid_argument);
}

TEST_CASE("train: three snapshots, predict from t=0 to t=2") {
  torch::manual_seed(34);
  const int64_t n = 300;
  auto x = torch::cat({torch::randn({n, 2}) * 0.5, torch::randn({n, 2}) * 0.5 + torch::tensor({2.0f, 1.0f}),
                       torch::randn({n, 2}) * 0.5 + torch::tensor({4.0f, 0.0f})});
  TrainingData data;
  data.x = x;
  for (int64_t k = 0; k < 3; ++k) data.time_index.resize((k + 1) * n, k);
  auto model = make_model(small_flow(2, {0.0, 1.0, 2.0}), "cpu");
  PF_CHECK_NEAR(model->model_time(1.0), 0.5, 1e-15);
  auto res = train(*model, data, quick_train(300));
  PF_CHECK(res.status == "completed");
  auto out = transport(*model, x.slice(0, 0, n), {0.0, 1.0, 2.0}, torch::Tensor(), SolverConfig());
  PF_CHECK(out.size() == 3);
  PF_CHECK(torch::equal(out[0], x.slice(0, 0, n).to(torch::kDouble)));
  auto mid = out[1].mean(0), end = out[2].mean(0);
  PF_CHECK_MSG((mid - torch::tensor({2.0, 1.0}, kD)).norm().item<double>() < 0.4, "t=1 mean " << mid);
  PF_CHECK_MSG((end - torch::tensor({4.0, 0.0}, kD)).norm().item<double>() < 0.4, "t=2 mean " << end);
  // Backwards from t=2 to t=0 lands near the t=0 population.
  auto back = transport(*model, x.slice(0, 2 * n, 3 * n), {2.0, 0.0}, torch::Tensor(), SolverConfig());
  PF_CHECK_MSG(back[1].mean(0).norm().item<double>() < 0.4, "back mean " << back[1].mean(0));
}

TEST_CASE("train: every path and coupling runs, with groups and conditioning") {
  torch::manual_seed(35);
  const int64_t n = 120;
  // Two groups moving in opposite directions, told apart by a one-hot condition.
  auto a0 = torch::randn({n, 2}), b0 = torch::randn({n, 2});
  TrainingData data;
  data.x = torch::cat({a0, b0, a0 + torch::tensor({2.0f, 0.0f}), b0 - torch::tensor({2.0f, 0.0f})});
  data.time_index.assign(2 * n, 0);
  data.time_index.resize(4 * n, 1);
  for (int64_t g : {0, 1, 0, 1}) data.group.insert(data.group.end(), n, g);
  data.group_cond = torch::eye(2);
  for (auto path : {PathKind::ICFM, PathKind::SBCFM, PathKind::TargetFM})
    for (auto coupling : {CouplingKind::Independent, CouplingKind::ExactOT, CouplingKind::Sinkhorn})
      for (auto mode : {OTMode::Resample, OTMode::Permutation}) {
        if (coupling != CouplingKind::ExactOT && mode == OTMode::Permutation) continue;
        FlowConfig cfg = small_flow(2);
        cfg.network.cond_dim = 2;
        cfg.network.width = 32;
        cfg.path.kind = path;
        cfg.coupling.kind = coupling;
        cfg.coupling.mode = mode;
        auto model = make_model(cfg, "cpu");
        TrainConfig tc = quick_train(4);
        tc.batch_size = 32;
        tc.groups_per_step = 2;
        tc.ema_decay = 0.9;
        tc.clip_norm = 1.0;
        auto res = train(*model, data, tc);
        PF_CHECK(res.status == "completed" && res.steps_done == 4);
        PF_CHECK(std::all_of(res.loss.begin(), res.loss.end(), [](double l) { return std::isfinite(l); }));
      }
  // A longer run learns the group-specific direction.
  FlowConfig cfg = small_flow(2);
  cfg.network.cond_dim = 2;
  auto model = make_model(cfg, "cpu");
  TrainConfig tc = quick_train(300);
  tc.groups_per_step = 2;
  train(*model, data, tc);
  auto cond_a = torch::tensor({1.0f, 0.0f}).expand({n, 2}), cond_b = torch::tensor({0.0f, 1.0f}).expand({n, 2});
  auto pa = transport(*model, a0, {0.0, 1.0}, cond_a, SolverConfig())[1].mean(0);
  auto pb = transport(*model, b0, {0.0, 1.0}, cond_b, SolverConfig())[1].mean(0);
  PF_CHECK_MSG(pa[0].item<double>() - a0.mean(0)[0].item<double>() > 1.5, "group a moved " << pa);
  PF_CHECK_MSG(pb[0].item<double>() - b0.mean(0)[0].item<double>() < -1.5, "group b moved " << pb);
  PF_CHECK_THROWS_AS(transport(*model, a0, {0.0, 1.0}, torch::Tensor(), SolverConfig()), std::invalid_argument);
}

TEST_CASE("train: a diverging fit returns the last step whose weights gave a finite loss") {
  torch::manual_seed(33);
  auto data = shifted_pair(200, 2.0);
  data.x = data.x * 1000;
  auto model = make_model(small_flow(2), "cpu");
  TrainConfig tc = quick_train(200);
  tc.lr = 10;
  auto res = train(*model, data, tc);
  PF_CHECK(res.status == "nonfinite");
  PF_CHECK(res.steps_done < 200 && res.loss.size() == static_cast<size_t>(res.steps_done));
  // Every recorded loss is finite, and so are the returned model's velocities on the training cells.
  for (double l : res.loss) PF_CHECK(std::isfinite(l));
  auto pred = transport(*model, data.x, {0.0, 1.0}, torch::Tensor(), solver(SolverKind::Euler, 1))[1];
  PF_CHECK_MSG(torch::isfinite(pred).all().item<bool>(), "steps_done " << res.steps_done);
}

TEST_CASE("train: checks read back every few steps (as on GPUs) match checks at every step") {
  // sync_every > 1 keeps the loss and the finiteness checks on the device;
  // the fit must come out as the step-by-step fit does, diverging or not.
  auto fit = [](double scale, double lr, int64_t sync_every) {
    torch::manual_seed(34);
    auto data = shifted_pair(200, 2.0);
    data.x = data.x * scale;
    auto model = make_model(small_flow(2), "cpu");
    TrainConfig tc = quick_train(60);
    tc.lr = lr;
    tc.clip_norm = 5;
    tc.sync_every = sync_every;
    auto res = train(*model, data, tc);
    auto pred = transport(*model, data.x.slice(0, 0, 50), {0.0, 1.0}, torch::Tensor(), solver(SolverKind::Euler, 2))[1];
    return std::make_pair(res, pred);
  };
  for (auto [scale, lr] : {std::make_pair(1.0, 1e-2), std::make_pair(1000.0, 10.0)}) {
    auto [each, pred_each] = fit(scale, lr, 1);
    auto [deferred, pred_deferred] = fit(scale, lr, 7);
    PF_CHECK_MSG(each.status == (scale == 1.0 ? "completed" : "nonfinite"), each.status);
    PF_CHECK_MSG(each.status == deferred.status, each.status << " vs " << deferred.status);
    PF_CHECK_MSG(each.steps_done == deferred.steps_done, each.steps_done << " vs " << deferred.steps_done);
    PF_CHECK(deferred.loss.size() == static_cast<size_t>(deferred.steps_done));
    for (size_t i = 0; i < std::min(each.loss.size(), deferred.loss.size()); ++i)
      PF_CHECK_NEAR(deferred.loss[i], each.loss[i], 1e-3 * std::abs(each.loss[i]) + 1e-6);
    PF_CHECK_MSG(torch::isfinite(pred_deferred).all().item<bool>(), "scale " << scale);
    PF_CHECK_NEAR(max_abs(pred_deferred - pred_each), 0.0, 1e-3 * scale);
  }
}

// Resuming training (trainer.h, model_file.h): resumed runs equal uninterrupted ones, checkpoints,
// damaged training-state blocks, CUDA agreement.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "fixtures.h"
#include "model.h"
#include "model_file.h"
#include "population_model.h"
#include "trainer.h"
#include "transport.h"

using namespace popflow;
using namespace fixtures;

TEST_CASE("resume: N steps, save, load and resume to 2N equals 2N steps at once (flow)") {
  auto data = [] {
    torch::manual_seed(61);
    return shifted_pair(150, 2.0);
  }();
  for (double ema : {0.0, 0.9}) {
    FlowConfig cfg = small_flow(2);
    cfg.coupling.kind = CouplingKind::ExactOT;  // draws from the std generator too
    auto fresh = [&] {
      torch::manual_seed(62);
      return make_model(cfg, "cpu");
    };
    TrainConfig tc = quick_train(30);
    tc.batch_size = 32;
    tc.ema_decay = ema;
    auto full = fresh();
    auto res_full = train(*full, data, tc);
    auto half = fresh();
    tc.steps = 15;
    auto res_half = train(*half, data, tc);
    PF_CHECK(half->train_state.step == 15 && half->train_state.loss == res_half.loss);
    PF_CHECK(half->train_state.ema.defined() == (ema > 0));
    auto resumed = load_model(save_model(*half, "m"));
    PF_CHECK(resumed->train_state.step == 15);
    tc.steps = 30;
    tc.resume = true;
    auto res = train(*resumed, data, tc);
    PF_CHECK(res.steps_done == 30 && res.loss.size() == 30);
    PF_CHECK_MSG(res.loss == res_full.loss, "ema " << ema << ": resumed losses differ");
    PF_CHECK(same_parameters(*resumed->net, *full->net));
    PF_CHECK(save_model(*resumed) == save_model(*full));
    // Nothing left to do, or nothing to resume from, is refused.
    PF_CHECK_THROWS_AS(train(*resumed, data, tc), std::invalid_argument);
    PF_CHECK_THROWS_AS(train(*fresh(), data, tc), std::invalid_argument);
  }
}

TEST_CASE("resume: population model (MFM) resumes to the uninterrupted result") {
  torch::manual_seed(63);
  auto data = mean_shift_populations({{-1.f, 0.f}, {0.f, 1.f}, {1.f, 0.f}}, 60);
  PopulationConfig mc;
  mc.encoder.layers = 1;
  mc.encoder.width = 8;
  mc.k = 5;
  mc.cells_per_population = 16;
  mc.populations_per_step = 2;
  auto fresh = [&] {
    torch::manual_seed(64);
    return make_population_model(population_flow(), mc, "cpu");
  };
  TrainConfig tc = quick_train(20);
  auto full = fresh();
  auto res_full = train_population_model(*full, data, tc);
  auto half = fresh();
  tc.steps = 10;
  train_population_model(*half, data, tc);
  auto resumed = load_population_model(save_population_model(*half));
  tc.steps = 20;
  tc.resume = true;
  auto res = train_population_model(*resumed, data, tc);
  PF_CHECK(res.loss == res_full.loss);
  PF_CHECK(same_parameters(*resumed->net, *full->net));
}

TEST_CASE("resume: checkpoints hold the averaged weights and do not disturb training") {
  auto data = [] {
    torch::manual_seed(65);
    return shifted_pair(100, 2.0);
  }();
  auto fresh = [] {
    torch::manual_seed(66);
    return make_model(small_flow(2), "cpu");
  };
  TrainConfig tc = quick_train(12);
  tc.batch_size = 32;
  tc.ema_decay = 0.8;
  auto plain = fresh();
  auto res_plain = train(*plain, data, tc);
  auto model = fresh();
  std::vector<int64_t> at;
  std::string last;
  TrainCallbacks cb;
  cb.checkpoint_every = 5;
  cb.checkpoint = [&](int64_t step, const TrainState& state) {
    at.push_back(step);
    PF_CHECK(state.step == step && static_cast<int64_t>(state.loss.size()) == step);
    model->train_state = state;
    last = save_model(*model);
  };
  auto res = train(*model, data, tc, cb);
  PF_CHECK((at == std::vector<int64_t>{5, 10}));
  PF_CHECK(res.loss == res_plain.loss);
  PF_CHECK(same_parameters(*model->net, *plain->net));
  // The step-10 checkpoint resumes to the same end.
  auto back = load_model(last);
  PF_CHECK(back->train_state.step == 10 && back->train_state.raw.defined());
  tc.resume = true;
  auto res_back = train(*back, data, tc);
  PF_CHECK(res_back.loss == res_plain.loss);
  PF_CHECK(same_parameters(*back->net, *plain->net));
  // Atomic writes: the file appears whole, and a folder that does not exist is a clear error.
  const std::string path = "popflow_test_checkpoint.bin";
  write_file_atomic(path, last);
  std::ifstream in(path, std::ios::binary);
  std::string read((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  PF_CHECK(read == last);
  std::remove(path.c_str());
  PF_CHECK_THROWS_AS(write_file_atomic("/no/such/folder/x.popflow", last), std::runtime_error);
}

TEST_CASE("resume: damaged training-state blocks (forged checksums) throw, never crash (fuzz)") {
  torch::manual_seed(67);
  auto data = shifted_pair(60, 1.0);
  FlowConfig cfg = small_flow(2);
  cfg.network.width = 8;
  auto model = make_model(cfg, "cpu");
  TrainConfig tc = quick_train(3);
  tc.batch_size = 16;
  tc.ema_decay = 0.5;
  train(*model, data, tc);
  const std::string bytes = save_model(*model);
  const std::string state = train_state_to_bytes(model->train_state);
  const size_t state_at = bytes.size() - 8 - state.size();
  PF_CHECK(bytes.compare(state_at, state.size(), state) == 0);
  std::mt19937_64 rng(67);
  auto uniform = [&](size_t lo, size_t hi) { return std::uniform_int_distribution<size_t>(lo, hi)(rng); };
  int loaded = 0, threw = 0;
  const int n = 2000;
  for (int k = 0; k < n; ++k) {
    std::string b = bytes;
    // Header fields and sizes sit in the first 64 bytes of the block: aim half the edits there.
    const size_t at = state_at + (k % 2 ? uniform(0, std::min<size_t>(63, state.size() - 1)) : uniform(0, state.size() - 1));
    if (k % 7 == 0) {
      b.erase(at, uniform(1, 16));  // the block length then disagrees with the file
    } else {
      for (int e = 0, edits = static_cast<int>(uniform(1, 3)); e < edits; ++e)
        b[std::min(b.size() - 9, at + uniform(0, 8))] ^= static_cast<char>(uniform(1, 255));
    }
    fix_checksum(b);
    try {
      auto m = load_model(b);
      ++loaded;  // a changed number inside a moment or the losses is still a well-formed file
    } catch (const std::exception&) {
      ++threw;
    }
  }
  std::printf("  training-state fuzz: %d forged-checksum mutations: %d loaded, %d threw\n", n, loaded, threw);
  PF_CHECK(loaded + threw == n);
  PF_CHECK(threw > 0);
  // Sizes that do not fit the network are refused by name.
  TrainState s = model->train_state;
  s.m = s.m.slice(0, 1);
  PF_CHECK(thrown_message([&] { train_state_from_bytes(train_state_to_bytes(s), parameter_count(*model->net)); })
               .find("'m'") != std::string::npos);
}

TEST_CASE("resume: on CUDA, same-seed runs, resumed runs and CPU/GPU predictions agree within 1e-4") {
  if (!cuda_available()) return;  // CPU-only build: nothing to compare
  auto data = [] {
    torch::manual_seed(68);
    return shifted_pair(300, 2.0);
  }();
  auto fit = [&](int64_t steps, std::shared_ptr<FlowModel> from = nullptr) {
    TrainConfig tc = quick_train(steps);
    tc.device = "cuda";
    std::shared_ptr<FlowModel> model = from;
    if (!model) {
      torch::manual_seed(69);
      model = make_model(small_flow(2), "cpu");
      model->net->to(torch::kCUDA);
      model->device = torch::kCUDA;
    } else {
      tc.resume = true;
    }
    auto res = train(*model, data, tc);
    return std::make_pair(res.loss, model);
  };
  auto src = data.x.slice(0, 0, 300);
  auto predict = [&](const FlowModel& m) {
    return transport(m, src, {0.0, 1.0}, torch::Tensor(), solver(SolverKind::RK4, 10))[1];
  };
  auto a = fit(40), b = fit(40);
  auto half = fit(20);
  auto resumed = fit(40, load_model(save_model(*half.second), "cuda"));
  double loss_gap = 0;
  for (size_t i = 0; i < a.first.size(); ++i) loss_gap = std::max(loss_gap, std::abs(a.first[i] - resumed.first[i]));
  const double same_seed = max_abs(predict(*a.second) - predict(*b.second));
  const double resume_gap = max_abs(predict(*a.second) - predict(*resumed.second));
  const double cpu_gpu = max_abs(predict(*a.second) - predict(*load_model(save_model(*a.second), "cpu")));
  std::printf("  cuda: same seed max |dpred| %.3g, resumed vs straight max |dpred| %.3g (max |dloss| %.3g), "
              "same weights CPU vs GPU max |dpred| %.3g\n", same_seed, resume_gap, loss_gap, cpu_gpu);
  PF_CHECK(same_seed < 1e-4 && resume_gap < 1e-4 && cpu_gpu < 1e-4);
}

TEST_CASE("resume: alternating-schedule fits checkpoint loadable averaged weights, no training state") {
  torch::manual_seed(70);
  auto data = mean_shift_populations({{-1.f, 0.f}, {1.f, 0.f}}, 40);
  PopulationConfig mc;
  mc.encoder.layers = 1;
  mc.encoder.width = 8;
  mc.k = 5;
  mc.alternating = true;
  mc.cells_per_population = 16;
  mc.populations_per_step = 2;
  auto model = make_population_model(population_flow(), mc, "cpu");
  TrainConfig tc = quick_train(4);
  tc.ema_decay = 0.5;
  std::vector<std::string> saved;
  TrainCallbacks cb;
  cb.checkpoint_every = 1;
  cb.checkpoint = [&](int64_t, const TrainState& state) {
    PF_CHECK(state.step == 0);
    model->train_state = state;
    saved.push_back(save_population_model(*model));
  };
  auto res = train_population_model(*model, data, tc, cb);
  PF_CHECK(res.steps_done == 4 && saved.size() == 4);
  for (const std::string& bytes : saved) PF_CHECK(load_population_model(bytes)->train_state.step == 0);
  // The last checkpoint holds both optimisers' averages: the weights the fit ends with.
  PF_CHECK(same_parameters(*load_population_model(saved.back())->net, *model->net));
  PF_CHECK(model->train_state.step == 0);
  tc.steps = 8;
  tc.resume = true;
  const std::string msg = thrown_message([&] { train_population_model(*model, data, tc); });
  PF_CHECK_MSG(msg.find("alternating") != std::string::npos, msg);
}

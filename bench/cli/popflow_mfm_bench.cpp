// popflow_mfm_bench: Meta Flow Matching training throughput from the command
// line (no R), for CPU and GPU machines alike.
//
//   popflow_mfm_bench [--device cuda] [--populations-per-step 10] [--cells 700]
//                     [--populations 12] [--steps 50] [--threads 1] [--json]
//                     [--encoder gcn|mean|kme] [--k 50] [--width 512] [--depth 2]
//                     [--tf32 0|1] [--sync-every N] [--report-every 25] [--op-counts]
//                     [--step-graph 0|1] [--propagation sparse|scatter]
//
// Data: synthetic 2-d populations of exactly --cells source and target cells
// (rings of different radius and centre; the target is the source rotated and
// shifted), so each step embeds and regresses every cell of the populations it
// draws. Model: the letters configuration of Meta Flow Matching (DESIGN.md):
// GCN 2-64-64-64 on a k = 50 nearest-neighbour graph of each population's
// source cells, a width-512 residual decoder (2 blocks of two linear layers,
// SELU) on [x, 128-d time embedding, 256 Fourier features of x, embedding],
// Adam, joint training, I-CFM path with sigma 0.1. A warm-up fit of
// --warmup steps runs first; the timed fit's seconds include building each
// population's kNN graph once, and the steady rate (from the first progress
// report, after --report-every steps, to the last) does not. Reports come
// every --report-every steps, as R's progress bar would ask: a report reads
// the loss back, which drains a GPU's queue.
// --op-counts: the ATen operator calls per steady step (nested calls
// included, both threads), by name, from a RecordFunction observer: each is
// at least one kernel launch on a GPU, and aten::_local_scalar_dense (item())
// is a host synchronisation. Counted on any device, so a CPU build shows what
// a GPU step launches.
// --step-graph 1: steps from fixed buffers, on a GPU one CUDA graph replayed
// per step (TrainConfig::step_graph; needs --sync-every > 1, the default on a
// GPU); the JSON's "step_graph" says whether it was captured, or why not.
// --propagation scatter: its padded graph batch propagates by a gather and a
// scatter-add instead of the sparse product (PopulationTraining).
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <vector>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>

#include "config_text.h"
#include "population_model.h"

namespace {

struct Options {
  std::string device = "cpu", encoder = "gcn";
  int64_t populations = 12, per_step = 10, cells = 700, steps = 50, warmup = 3;
  int64_t k = 50, gcn_width = 64, gcn_layers = 3, width = 512, depth = 2;
  int64_t sync_every = 0, report_every = 25;
  int threads = 1;
  bool tf32 = false, json = false, op_counts = false, step_graph = false, scatter = false;
};

// Operator calls by name while `counting` (between the first and last progress reports).
std::atomic<bool> counting{false};
std::mutex op_mutex;
std::map<std::string, int64_t> op_calls;

std::unique_ptr<at::ObserverContext> count_op(const at::RecordFunction& fn) {
  if (counting.load(std::memory_order_relaxed)) {
    std::lock_guard<std::mutex> lock(op_mutex);
    ++op_calls[fn.name()];
  }
  return nullptr;
}

void print_op_counts(int64_t steps) {
  std::vector<std::pair<int64_t, std::string>> by_count;
  int64_t total = 0;
  for (const auto& [name, n] : op_calls) {
    by_count.emplace_back(n, name);
    total += n;
  }
  std::sort(by_count.rbegin(), by_count.rend());
  const auto per_step = [steps](int64_t n) { return static_cast<double>(n) / static_cast<double>(steps); };
  std::printf("operator calls per step (%lld steady steps): %.1f; host reads (aten::_local_scalar_dense): %.1f\n",
              static_cast<long long>(steps), per_step(total),
              op_calls.count("aten::_local_scalar_dense") ? per_step(op_calls["aten::_local_scalar_dense"]) : 0.0);
  for (size_t i = 0; i < by_count.size() && i < 40; ++i)
    std::printf("  %8.1f  %s\n", per_step(by_count[i].first), by_count[i].second.c_str());
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--device") o.device = next();
    else if (a == "--populations") o.populations = std::stoll(next());
    else if (a == "--populations-per-step") o.per_step = std::stoll(next());
    else if (a == "--cells") o.cells = std::stoll(next());
    else if (a == "--steps") o.steps = std::stoll(next());
    else if (a == "--warmup") o.warmup = std::stoll(next());
    else if (a == "--k") o.k = std::stoll(next());
    else if (a == "--encoder") o.encoder = next();
    else if (a == "--width") o.width = std::stoll(next());
    else if (a == "--depth") o.depth = std::stoll(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--tf32") o.tf32 = std::stoi(next()) != 0;
    else if (a == "--sync-every") o.sync_every = std::stoll(next());
    else if (a == "--report-every") o.report_every = std::stoll(next());
    else if (a == "--json") o.json = true;
    else if (a == "--op-counts") o.op_counts = true;
    else if (a == "--step-graph") o.step_graph = std::stoi(next()) != 0;
    else if (a == "--propagation") {
      const std::string how = next();
      if (how != "sparse" && how != "scatter") throw std::invalid_argument("--propagation: sparse or scatter, not " + how);
      o.scatter = how == "scatter";
    }
    else throw std::invalid_argument("unknown option " + a + " (see the comment at the top of the source)");
  }
  if (o.populations < o.per_step) o.populations = o.per_step;
  return o;
}

// `s` inside a JSON string (a capture failure's message may hold quotes or backslashes).
std::string quoted(std::string s) {
  for (char& c : s)
    if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 32) c = '\'';
  return s;
}

popflow::PopulationSet synthetic(const Options& o) {
  torch::manual_seed(1);
  std::vector<torch::Tensor> xs;
  popflow::PopulationSet data;
  std::vector<torch::Tensor> sources, targets;
  for (int64_t p = 0; p < o.populations; ++p) {
    auto angle = torch::rand({o.cells}) * 2 * M_PI;
    auto radius = 0.5 * static_cast<double>(p % 3 + 1) + 0.1 * torch::randn({o.cells});
    auto src = torch::stack({radius * torch::cos(angle), radius * torch::sin(angle)}, 1) + 2 * torch::randn({1, 2});
    const double th = M_PI * static_cast<double>(p) / static_cast<double>(o.populations);
    auto rot = torch::tensor({{std::cos(th), std::sin(th)}, {-std::sin(th), std::cos(th)}}, torch::kFloat);
    sources.push_back(src);
    targets.push_back(src.matmul(rot) + 1);
  }
  data.x = torch::cat({torch::cat(sources), torch::cat(targets)});
  for (int side = 0; side < 2; ++side)
    for (int64_t p = 0; p < o.populations; ++p)
      for (int64_t i = 0; i < o.cells; ++i) {
        data.side.push_back(side);
        data.population.push_back(p);
      }
  return data;
}

// Seconds from the end of step 1 to the end of the last step: the steady-state
// rate, without the one-off graph building (the PyTorch peer's warm-up builds its cache too).
struct SteadyClock {
  std::chrono::steady_clock::time_point first, last;
  int64_t first_step = 0, last_step = 0, steps = 0;
  bool op_counts = false;
};

popflow::TrainResult fit(const Options& o, const popflow::PopulationSet& data, int64_t steps, SteadyClock* clock) {
  popflow::FlowConfig flow;
  flow.path.sigma = 0.1;
  flow.network.dim = 2;
  flow.network.width = o.width;
  flow.network.depth = o.depth;
  flow.network.residual = true;
  flow.network.time_dim = 128;
  flow.network.fourier_features = 256;
  flow.network.fourier_scale = 0.01;
  flow.times = {0.0, 1.0};
  popflow::PopulationConfig population;
  population.k = o.k;
  population.max_cells = o.cells;
  population.encoder.kind = popflow::method_value<popflow::EncoderKind>(o.encoder);
  population.encoder.layers = o.gcn_layers;
  population.encoder.width = o.gcn_width;
  population.cells_per_population = o.cells;
  population.populations_per_step = o.per_step;
  auto model = popflow::make_population_model(flow, population, o.device);
  popflow::TrainConfig train;
  train.steps = steps;
  train.lr = 1e-4;
  train.threads = o.threads;
  train.device = o.device;
  train.tf32 = o.tf32;
  train.sync_every = o.sync_every;
  train.step_graph = o.step_graph;
  popflow::TrainCallbacks callbacks;
  callbacks.every = o.report_every;
  callbacks.progress = [clock](int64_t step, double) {
    if (clock) {
      const auto now = std::chrono::steady_clock::now();
      if (clock->first_step == 0) clock->first = now, clock->first_step = step;
      clock->last = now;
      clock->last_step = step;
      counting = clock->op_counts && step < clock->steps;  // from the first report to the last
    }
    return true;
  };
  popflow::PopulationTraining how;
  how.scatter_propagation = o.scatter;
  return popflow::train_population_model(*model, data, train, callbacks, how);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    const auto data = synthetic(o);
    if (o.warmup > 0) fit(o, data, o.warmup, nullptr);
    SteadyClock clock;
    clock.steps = o.steps;
    clock.op_counts = o.op_counts;
    at::CallbackHandle observer = 0;
    if (o.op_counts)
      observer = at::addGlobalCallback(at::RecordFunctionCallback(count_op).scopes({at::RecordScope::FUNCTION}));
    const auto res = fit(o, data, o.steps, &clock);
    if (o.op_counts) at::removeCallback(observer);
    const double sps = static_cast<double>(res.steps_done) / res.seconds;
    const double steady = static_cast<double>(clock.last_step - clock.first_step) /
                          std::chrono::duration<double>(clock.last - clock.first).count();
    if (o.json) {
      std::printf("{\"impl\": \"popflow\", \"device\": \"%s\", \"tf32\": %d, \"sync_every\": %lld, \"populations_per_step\": %lld, \"cells\": %lld, "
                  "\"steps\": %lld, \"seconds\": %.4f, \"steps_per_s\": %.3f, \"steady_steps_per_s\": %.3f, "
                  "\"final_loss\": %.5f, \"step_graph\": \"%s\", \"propagation\": \"%s\"}\n",
                  o.device.c_str(), o.tf32 ? 1 : 0, static_cast<long long>(o.sync_every), static_cast<long long>(o.per_step),
                  static_cast<long long>(o.cells), static_cast<long long>(res.steps_done), res.seconds, sps, steady,
                  res.loss.empty() ? NAN : res.loss.back(), quoted(res.step_graph).c_str(),
                  o.scatter ? "scatter" : "sparse");
    } else {
      std::printf("popflow MFM on %s: %lld populations x %lld cells a step, %lld steps in %.2f s = %.2f steps/s "
                  "(%.2f steps/s after step 1)\n",
                  o.device.c_str(), static_cast<long long>(o.per_step), static_cast<long long>(o.cells),
                  static_cast<long long>(res.steps_done), res.seconds, sps, steady);
    }
    if (o.op_counts) print_op_counts(clock.last_step - clock.first_step);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "popflow_mfm_bench: " << e.what() << "\n";
    return 1;
  }
}

// popflow_step_limits: what bounds one I-CFM training step on this CPU.
//
//   popflow_step_limits --width 256 --batch 1024 [--depth 3 --dim 10 --steps 300 --threads 1]
//
// Times, in one process and one thread:
//   - each training step (popflow::train on two synthetic 10-d snapshots,
//     I-CFM, an MLP of `depth` hidden layers of `width`, SELU, input [x, t]):
//     their median, and the mean over the whole fit;
//   - between steps (every 20, 3 times each), the step's matrix products alone,
//     so that both are sampled over the same minutes of a shared machine: the
//     forward product of each layer and
//     the two backward products (weight gradient, input gradient; none for
//     the first layer's input), at the step's exact shapes, twice: as plain
//     products of contiguous operands into fresh tensors (the machine's
//     throughput at those shapes), and as the step calls them (the forward
//     adds the bias and multiplies by the transposed weight, the weight
//     gradient by the transposed output gradient, into kept buffers), so that
//     a gap between step and products cannot hide in the layouts;
//   - the machine's matrix-product throughput on a large square product
//     (1024 x 1024 x 1024), its practical peak for one thread.
// Also the SELU activations' forward and backward passes at the hidden
// shapes (in place, with popflow's CPU kernels, the backward from the
// output, as the step runs them; also with each slower kernel this CPU runs,
// LibTorch's included, side by side), and the optimiser's whole-buffer work (the
// gradient's norm, the copies that let a step be undone, Adam), so that the
// step splits into products, activations, optimiser and the rest (per-operation overhead,
// sampling, the loss, and the products and activations running slower inside
// the step than alone, their operands no longer in cache).
// All times are the process's CPU time (one thread), not wall time: other
// processes on the machine then matter little. Prints one JSON line: step ms
// (median; step_mean_ms the mean), products ms (median), their ratio ("step /
// products" near 1: the products bound the step; "step / own products" against
// the products as the step calls them), the split (against the plain products;
// its parts are timed alone with their operands in cache, so "other" can come
// out below 0 where the products and activations run faster alone than in the step),
// and GFLOP/s of the products at the step's shapes and at the large square.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "config.h"
#include "median_time.h"
#include "model.h"
#include "optimizer.h"
#include "scratch.h"
#include "selu_cpu.h"
#include "threads.h"
#include "trainer.h"

namespace {

// CPU time of this process (one thread works): robust to other processes
// sharing the cores, unlike wall time, so that step and products compare fairly.
double now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

struct Product {
  int64_t m, k, n;  // [m, k] x [k, n]
};

// Median of `reps` CPU-time timings of `f` (seconds), after one warm-up call.
template <class F>
double median_time(F&& f, int reps) {
  return bench::median_time(now, f, reps);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t width = 64, batch = 256, depth = 3, dim = 10, steps = 300;
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> long long {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--width") width = value();
    else if (a == "--batch") batch = value();
    else if (a == "--depth") depth = value();
    else if (a == "--dim") dim = value();
    else if (a == "--steps") steps = value();
    else if (a == "--threads") threads = static_cast<int>(value());
    else {
      std::fprintf(stderr, "usage: popflow_step_limits [--width W] [--batch B] [--depth D] [--dim d] [--steps S] [--threads T]\n");
      return 2;
    }
  }
  // Also OpenBLAS's own threads: the products timed alone below run outside
  // the training loop's scope, and OpenBLAS's default pool would otherwise
  // spin a second thread (counted in process CPU time) on a busy machine.
  popflow::ThreadScope thread_scope(threads);
  torch::manual_seed(1);

  // The network: an MLP of `depth` hidden layers of `width`, input [x, t].
  popflow::FlowConfig cfg;
  cfg.network.dim = dim;
  cfg.network.width = width;
  cfg.network.depth = depth;
  cfg.times = {0.0, 1.0};

  // The step's products at its shapes: layer sizes in -> out.
  const int64_t t_features = cfg.network.time_dim > 0 ? cfg.network.time_dim : 1;
  std::vector<int64_t> sizes{dim + t_features};
  for (int64_t l = 0; l < depth; ++l) sizes.push_back(width);
  sizes.push_back(dim);
  std::vector<Product> products;
  for (size_t l = 0; l + 1 < sizes.size(); ++l) {
    const int64_t in = sizes[l], out = sizes[l + 1];
    products.push_back({batch, in, out});              // forward
    products.push_back({out, batch, in});              // weight gradient d^T h
    if (l > 0) products.push_back({batch, out, in});   // input gradient d W
  }
  double flop = 0;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> operands;
  for (const auto& p : products) {
    operands.emplace_back(torch::randn({p.m, p.k}), torch::randn({p.k, p.n}));
    flop += 2.0 * p.m * p.k * p.n;
  }
  const auto plain_products = [&] {
    for (const auto& ab : operands) torch::mm(ab.first, ab.second);
  };
  // The same products as the step calls them (network.cpp, mse_with_gradient).
  struct Layer {
    torch::Tensor weight, bias, in, out, grad_out, weight_grad, in_grad;
  };
  std::vector<Layer> layers;
  for (size_t l = 0; l + 1 < sizes.size(); ++l) {
    const int64_t in = sizes[l], out = sizes[l + 1];
    layers.push_back({torch::randn({out, in}), torch::randn({out}), torch::randn({batch, in}),
                      torch::empty({batch, out}), torch::randn({batch, out}), torch::empty({out, in}),
                      l > 0 ? torch::empty({batch, in}) : torch::Tensor()});
  }
  const auto own_products = [&] {
    for (auto& L : layers) {
      at::addmm_out(L.out, L.bias, L.in, L.weight.t());
      at::mm_out(L.weight_grad, L.grad_out.t(), L.in);
      if (L.in_grad.defined()) at::mm_out(L.in_grad, L.grad_out, L.weight);
    }
  };
  // The full step, through the training loop.
  popflow::TrainConfig tc;
  tc.steps = steps;
  tc.batch_size = batch;
  tc.threads = threads;
  const int64_t n = 4 * batch;
  popflow::TrainingData data;
  data.x = torch::cat({torch::randn({n, dim}), torch::randn({n, dim}) * 0.5 + 3});
  data.time_index.assign(n, 0);
  data.time_index.insert(data.time_index.end(), n, 1);
  auto model = popflow::make_model(cfg, "cpu");
  popflow::train(*model, data, [&] { auto w = tc; w.steps = 10; return w; }());  // warm-up
  model = popflow::make_model(cfg, "cpu");
  // Each step is timed on its own (the progress callback runs after every
  // step), and every `interleave` steps both sets of products are timed a few
  // times: step and products are sampled over the same minutes, so that the
  // machine's drift (other tenants, frequency) cannot tilt their ratio. The
  // step after such a block is not counted: the products left their operands
  // in the caches, where the loop leaves its own.
  const int64_t interleave = 20;
  std::vector<double> step_times, plain_times, own_times;
  bool count_next = false;
  double last = 0, interludes_s = 0;
  const auto time_once = [](const auto& f) {
    const double s = now();
    f();
    return now() - s;
  };
  popflow::TrainCallbacks callbacks;
  callbacks.every = 1;
  callbacks.progress = [&](int64_t step, double) {
    const double t = now();
    if (count_next) step_times.push_back(t - last);
    count_next = true;
    if (step % interleave == 0) {
      // Each set after a call of its own that brings its operands into the
      // caches: the products at their best, as a loop of them alone runs.
      const auto time_set = [&](const auto& f, std::vector<double>& times) {
        f();
        for (int r = 0; r < 3; ++r) times.push_back(time_once(f));
      };
      time_set(plain_products, plain_times);
      time_set(own_products, own_times);
      count_next = false;
      interludes_s += now() - t;
    }
    last = now();
    return true;
  };
  const double train_start = now();
  const auto res = popflow::train(*model, data, tc, callbacks);
  const double train_s = now() - train_start;
  const double step_s = bench::median(step_times);
  const double products_s = bench::median(plain_times), own_products_s = bench::median(own_times);
  // The mean step over the whole fit, the products' interludes taken off
  // (setup, first steps and hiccups included).
  const double step_mean_s = (train_s - interludes_s) / static_cast<double>(res.steps_done);

  const int reps = 50;
  // The activations' forward and backward passes at the hidden layers' shapes,
  // as the step runs them: SELU in place, its backward from its output, in
  // place of the gradient (the copies that refill the buffers are timed apart
  // and taken off).
  std::vector<torch::Tensor> pre, act;
  for (int64_t l = 0; l < depth; ++l) {
    pre.push_back(torch::randn({batch, width}));
    act.push_back(torch::empty({batch, width}));
  }
  const auto grad0 = torch::randn({batch, width});
  auto grad = torch::empty({batch, width});
  const auto refill = [&] {
    for (size_t l = 0; l < pre.size(); ++l) act[l].copy_(pre[l]);
  };
  const double refill_s = median_time([&] {
    refill();
    for (size_t l = 0; l < pre.size(); ++l) grad.copy_(grad0);
  }, reps);
  const auto activations_with = [&](popflow::VectorKernel kernel) {
    return median_time([&] {
      refill();
      for (auto& h : act) {
        popflow::selu_in_place(h, kernel);
        grad.copy_(grad0);
        popflow::selu_backward_in_place(grad, h, kernel);
      }
    }, reps) - refill_s;
  };
  // Each kernel this CPU runs, side by side ("avx2" on an AVX-512 CPU: the
  // kernel it replaces); the step runs the fastest, whose time is the split's.
  double activations_s = 0;
  std::string by_kernel;
  for (const auto& [name, kernel] : {std::pair{"libtorch", popflow::VectorKernel::Portable},
                                     std::pair{"avx2", popflow::VectorKernel::Avx2},
                                     std::pair{"avx512", popflow::VectorKernel::Avx512}}) {
    if (kernel > popflow::fastest_vector_kernel()) continue;
    const double seconds = activations_with(kernel);
    if (kernel == popflow::fastest_vector_kernel()) activations_s = seconds;
    char entry[64];
    std::snprintf(entry, sizeof entry, "%s\"%s\": %.4f", by_kernel.empty() ? "" : ", ", name, 1e3 * seconds);
    by_kernel += entry;
  }
  // The optimiser's whole-buffer work, as the loop runs it: the gradient's
  // norm (the finiteness check and clipping), the copies that let a step be
  // undone, Adam's update.
  popflow::FlatAdam opt(*model->net, popflow::adam_settings(tc));
  opt.gradient().normal_();
  const popflow::ScratchScope scratch;
  const double optimizer_s = median_time([&] {
    (void)opt.clip_grad_norm(tc.clip_norm);
    opt.remember_and_step();
  }, reps);
  auto a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  const double square_s = median_time([&] { torch::mm(a, b); }, 10);

  std::printf(
      "{\"width\": %lld, \"batch\": %lld, \"depth\": %lld, \"dim\": %lld, \"threads\": %d, \"steps\": %lld, "
      "\"step_ms\": %.4f, \"step_mean_ms\": %.4f, \"steps_per_s\": %.1f, \"products_ms\": %.4f, \"step_over_products\": %.3f, "
      "\"own_products_ms\": %.4f, \"step_over_own_products\": %.3f, "
      "\"activations_ms\": %.4f, \"activations_ms_by_kernel\": {%s}, \"optimizer_ms\": %.4f, \"other_ms\": %.4f, "
      "\"products_gflops\": %.2f, \"step_gflops\": %.2f, \"square_gflops\": %.2f}\n",
      static_cast<long long>(width), static_cast<long long>(batch), static_cast<long long>(depth),
      static_cast<long long>(dim), threads, static_cast<long long>(res.steps_done), 1e3 * step_s, 1e3 * step_mean_s, 1.0 / step_mean_s,
      1e3 * products_s, step_s / products_s, 1e3 * own_products_s, step_s / own_products_s,
      1e3 * activations_s, by_kernel.c_str(), 1e3 * optimizer_s,
      1e3 * (step_s - products_s - activations_s - optimizer_s), flop / products_s / 1e9, flop / step_s / 1e9,
      2.0 * 1024 * 1024 * 1024 / square_s / 1e9);
  return 0;
}

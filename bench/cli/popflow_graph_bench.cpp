// popflow_graph_bench: how long one population's kNN graph takes to build on this CPU.
//
//   popflow_graph_bench [--cells 500 --dim 50 --k 50 --reps 50 --seed 1]
//
// Times build_graph() (what MFM training builds for each population it meets,
// on the prefetch thread, and a store fit meets most of its populations for
// the first time) and its parts: knn_indices() as build_graph() calls it
// (pairwise distances, then each row's k smallest, smallest_k_per_row()),
// the distances alone (torch::cdist), and the symmetrisation and
// normalisation that follow (the graph's time less the kNN's). One
// thread, Gaussian cells; medians of `reps` wall-clock timings after one
// warm-up. Prints one JSON line.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "encoders.h"
#include "median_time.h"

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median of `reps` wall-clock timings of `f`, in ms.
template <class F>
double median_ms(F&& f, int reps) {
  return 1e3 * bench::median_time(now, f, reps);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t cells = 500, dim = 50, k = 50, reps = 50, seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "usage: popflow_graph_bench [--cells N] [--dim D] [--k K] [--reps R] [--seed S]\n");
      return 2;
    }
    const long long v = std::atoll(argv[++i]);
    if (a == "--cells") cells = v;
    else if (a == "--dim") dim = v;
    else if (a == "--k") k = v;
    else if (a == "--reps") reps = v;
    else if (a == "--seed") seed = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  at::set_num_threads(1);
  torch::manual_seed(static_cast<uint64_t>(seed));
  const auto x = torch::randn({cells, dim});
  const int r = static_cast<int>(reps);
  const double graph_ms = median_ms([&] { popflow::build_graph(x, k, 0, 1); }, r);
  const double knn_ms = median_ms([&] { popflow::knn_indices(x, k, 1024, /*nearest_first=*/false); }, r);
  const double distances_ms = median_ms([&] { torch::cdist(x, x); }, r);
  const auto g = popflow::build_graph(x, k, 0, 1);
  std::printf("{\"cells\": %lld, \"dim\": %lld, \"k\": %lld, \"edges\": %lld, \"build_graph_ms\": %.3f, "
              "\"knn_ms\": %.3f, \"distances_ms\": %.3f, \"symmetrise_ms\": %.3f}\n",
              static_cast<long long>(cells), static_cast<long long>(dim), static_cast<long long>(k),
              static_cast<long long>(g.src.size(0)), graph_ms, knn_ms, distances_ms, graph_ms - knn_ms);
  return 0;
}

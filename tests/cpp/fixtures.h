// Data, settings and comparisons shared by the engine's test files.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "config.h"
#include "population_model.h"
#include "trainer.h"

namespace fixtures {

using check::thrown_message;

inline const auto kD = torch::TensorOptions().dtype(torch::kDouble);

inline double max_abs(const torch::Tensor& a) { return a.abs().max().item<double>(); }

inline popflow::SolverConfig solver(popflow::SolverKind kind, int64_t steps = 20, double tol = 1e-5) {
  popflow::SolverConfig s;
  s.kind = kind;
  s.steps = steps;
  s.atol = tol;
  s.rtol = tol;
  return s;
}

inline popflow::FlowConfig small_flow(int64_t dim, std::vector<double> times = {0.0, 1.0}) {
  popflow::FlowConfig c;
  c.network.dim = dim;
  c.network.width = 64;
  c.network.depth = 3;
  c.times = std::move(times);
  return c;
}

// Minimum over permutations of the mean assignment cost (n == m).
inline double brute_force_assignment(const std::vector<double>& c, int n) {
  std::vector<int> p(n);
  std::iota(p.begin(), p.end(), 0);
  double best = std::numeric_limits<double>::infinity();
  do {
    double s = 0;
    for (int i = 0; i < n; ++i) s += c[static_cast<size_t>(i) * n + p[i]];
    best = std::min(best, s);
  } while (std::next_permutation(p.begin(), p.end()));
  return best / n;
}

// FNV-1a, 64 bit, as the model format uses: lets tests forge valid checksums.
inline uint64_t fnv1a(const char* data, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ULL;
  }
  return h;
}

inline void fix_checksum(std::string& bytes) {
  if (bytes.size() < 8) return;
  uint64_t h = fnv1a(bytes.data(), bytes.size() - 8);
  std::memcpy(&bytes[bytes.size() - 8], &h, 8);
}

inline bool same_parameters(torch::nn::Module& a, torch::nn::Module& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  if (pa.size() != pb.size()) return false;
  for (const auto& item : pa) {
    const torch::Tensor* other = pb.find(item.key());
    if (!other || !torch::equal(item.value().cpu(), other->cpu())) return false;
  }
  auto ba = a.named_buffers(), bb = b.named_buffers();
  if (ba.size() != bb.size()) return false;
  for (const auto& item : ba) {
    const torch::Tensor* other = bb.find(item.key());
    if (!other || !torch::equal(item.value().cpu(), other->cpu())) return false;
  }
  return true;
}

// Source N(0, I) in 2-d and target = source + (3, 0).
inline popflow::TrainingData shifted_pair(int64_t n, double shift) {
  auto src = torch::randn({n, 2});
  auto tgt = src + torch::tensor({shift, 0.0}).to(torch::kFloat);
  popflow::TrainingData d;
  d.x = torch::cat({src, tgt});
  d.time_index.assign(n, 0);
  d.time_index.resize(2 * n, 1);
  return d;
}

// Three groups (one-hot conditions) per snapshot, 40 cells each, at `times` snapshots.
inline popflow::TrainingData grouped_snapshots(int64_t times) {
  torch::manual_seed(12);
  const int64_t n = 40;
  popflow::TrainingData data;
  data.x = torch::rand({3 * times * n, 2}) * 3;
  for (int64_t k = 0; k < times; ++k)
    for (int64_t g = 0; g < 3; ++g) {
      data.time_index.insert(data.time_index.end(), n, k);
      data.group.insert(data.group.end(), n, g);
    }
  data.group_cond = torch::eye(3);
  return data;
}

// A small 2-d flow for grouped_snapshots(): times 0, 1, 3 (two intervals of different lengths) or 0, 1.
inline popflow::FlowConfig grouped_flow(popflow::PathKind path, popflow::CouplingKind coupling, bool three_times) {
  popflow::FlowConfig fc = small_flow(2, three_times ? std::vector<double>{0, 1, 3} : std::vector<double>{0, 1});
  fc.network.cond_dim = 3;
  fc.network.width = 16;
  fc.path.kind = path;
  fc.coupling.kind = coupling;
  return fc;
}

inline popflow::TrainConfig quick_train(int64_t steps) {
  popflow::TrainConfig t;
  t.steps = steps;
  t.batch_size = 128;
  t.lr = 3e-3;
  t.seed = 5;
  t.threads = 1;
  return t;
}

// Populations p with source N(mu_p, I) and target = source + 2 mu_p: the
// displacement depends on the population's mean, which no unconditional
// field can know from a single cell.
inline popflow::PopulationSet mean_shift_populations(const std::vector<std::vector<float>>& means, int64_t n) {
  popflow::PopulationSet d;
  std::vector<torch::Tensor> xs;
  for (size_t p = 0; p < means.size(); ++p) {
    auto mu = torch::tensor(means[p]);
    auto src = torch::randn({n, 2}) + mu;
    xs.push_back(src);
    xs.push_back(src + 2 * mu);
    d.side.insert(d.side.end(), n, 0);
    d.side.insert(d.side.end(), n, 1);
    d.population.insert(d.population.end(), 2 * n, static_cast<int64_t>(p));
  }
  d.x = torch::cat(xs);
  return d;
}

// A small population model: an encoder of `layers` x `width`, sampling `cells`
// cells of each of `populations` populations a step.
inline popflow::PopulationConfig small_population(popflow::EncoderKind kind, int64_t layers, int64_t width,
                                                  int64_t cells, int64_t populations) {
  popflow::PopulationConfig c;
  c.encoder.kind = kind;
  c.encoder.layers = layers;
  c.encoder.width = width;
  c.cells_per_population = cells;
  c.populations_per_step = populations;
  return c;
}

inline popflow::FlowConfig population_flow() {
  popflow::FlowConfig c;
  c.network.dim = 2;
  c.network.width = 64;
  c.network.depth = 3;
  c.path.sigma = 0.05;
  return c;
}

}  // namespace fixtures

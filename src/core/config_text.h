// The "key=value" text form of every engine configuration: what model files
// store, what the R glue builds from an R named list, and how a fitted model
// reports its settings. One line per key; lists are comma-separated. Readers
// reject a missing key and an unknown (e.g. misspelt) key with a
// std::runtime_error naming the key and the block. No torch, no R.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"

namespace popflow {

// Method names <-> enum values, for PathKind ("icfm", "sbcfm", "targetfm",
// "vp_cosine", "vp_linear"), CouplingKind ("independent", "exact", "sinkhorn",
// "paired"), OTMode ("resample", "permutation"), OTSolver ("exact", "auction"),
// Activation ("selu", "silu"),
// SolverKind ("euler", "heun", "midpoint", "rk4", "dopri5"), EncoderKind
// ("gcn", "mean", "kme"), DivergenceKind ("auto", "exact", "hutchinson") and
// DistanceMetric ("W1", "W2", "MMD", "energy"): the one table of each.
// method_value throws std::invalid_argument listing the names.
template <typename E>
const char* method_name(E value);
template <typename E>
E method_value(const std::string& name);

// Writes key=value lines, doubles printed to round-trip exactly: the writer
// of every configuration block.
class TextWriter {
 public:
  TextWriter() { os_.precision(17); }
  template <typename T>
  TextWriter& put(const char* key, const T& value) {
    os_ << key << '=' << value << '\n';
    return *this;
  }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};

// A parsed configuration block with checked access. Each accessor marks its
// key as read, so that reject_unknown_keys() can name a key no reader knows.
class ConfigText {
 public:
  // A line without '=' or a key given twice is an error.
  ConfigText(const std::string& text, std::string what);
  bool has(const std::string& key) const;
  const std::string& value(const std::string& key) const;  // throws when missing
  double number(const std::string& key) const;
  // A number within [lo, hi], truncated to a whole number.
  int64_t count(const std::string& key, double lo, double hi) const;
  bool flag(const std::string& key) const;      // 0 or 1
  uint64_t seed(const std::string& key) const;  // a whole number in [0, 2^64)
  // Comma-separated numbers (an empty value is an empty list).
  std::vector<double> numbers(const std::string& key) const;
  template <typename E>
  E method(const std::string& key) const {
    try {
      return method_value<E>(value(key));
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(what_ + ": " + e.what());
    }
  }
  // Throws naming the first key that no accessor asked for; call after reading.
  void reject_unknown_keys() const;
  // An error that names this block and `key`.
  std::runtime_error error(const std::string& key, const std::string& problem) const;

 private:
  double parse_number(const std::string& text, const std::string& key) const;

  std::map<std::string, std::string> values_;
  mutable std::set<std::string> read_;
  std::string what_;
};

// Flow model settings: path, sigma, sigma_min, coupling, ot_mode,
// sinkhorn_reg, sinkhorn_iters, dim, cond_dim, width, depth, residual,
// activation, time_dim, fourier_features, fourier_scale, times.
std::string flow_config_to_text(const FlowConfig& config);
FlowConfig flow_config_from_text(const std::string& text);

// Population model settings: encoder (or "none"), layers, encoder_width,
// bandwidth, k, max_cells, graph_seed, label_levels, label_dim, covariates,
// schedule, encoder_lr, cells_per_population, populations_per_step. Model
// files written before a key existed lack it: schedule reads as "joint",
// encoder_lr and the two sampling sizes as 0 (not recorded).
std::string population_config_to_text(const PopulationConfig& config);
PopulationConfig population_config_from_text(const std::string& text);

// Training settings: steps, batch_size, groups_per_step, lr, weight_decay,
// clip_norm, ema_decay, seed, threads, device, time_limit. `resume` is a
// per-call request, not a setting, and has no key (it reads as false).
std::string train_config_to_text(const TrainConfig& config);
TrainConfig train_config_from_text(const std::string& text);

// ODE solver settings: solver, steps, atol, rtol, max_steps, chunk_size.
std::string solver_config_to_text(const SolverConfig& config);
SolverConfig solver_config_from_text(const std::string& text);

// Log-density settings: divergence, probes, seed.
std::string density_config_to_text(const DensityConfig& config);
DensityConfig density_config_from_text(const std::string& text);

}  // namespace popflow

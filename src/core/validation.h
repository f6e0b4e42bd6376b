// Scoring held-out data, for training with validation (TrainCallbacks::validate)
// and for benchmarks: transport held-out source cells with the model's current
// weights and measure the distance of the prediction to the observed target
// cells by metrics.h's exact functions. Lower is better.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "config.h"
#include "model.h"
#include "population_model.h"

namespace popflow {

// The distance between cell sets x [n, d] and y [m, d] (any float dtype, any
// device): exact W1 or W2 (Euclidean ground distance, uniform weights), squared
// RBF MMD over default_mmd_gammas(), or the energy distance.
double set_distance(DistanceMetric metric, const torch::Tensor& x, const torch::Tensor& y);

// A random subset of at most max_cells rows of x (all when max_cells is 0),
// drawn without replacement from rng, as a float CPU tensor.
torch::Tensor subsample_cells(const torch::Tensor& x, int64_t max_cells, std::mt19937_64& rng);

struct ValidationConfig {
  DistanceMetric metric = DistanceMetric::W1;  // by name: method_value<DistanceMetric>("W2") (config_text.h)
  SolverConfig solver;
  // Each set's source and target cells are cut to a random subset of at most
  // max_cells (0 = all), drawn once with `seed`, so that every validation
  // scores the same cells.
  int64_t max_cells = 0;
  uint64_t seed = 1;
  // Threads for transporting: the fit's own (transport sets the thread count).
  int threads = 1;
};

// A held-out set of a flow model: cells at time t0 and the cells observed at t1.
struct FlowHoldout {
  torch::Tensor source;  // [n, d]
  torch::Tensor target;  // [m, d]
  torch::Tensor cond;    // [cond_dim]: the group's conditioning row; undefined without conditioning
  // Snapshot times (user units); NaN = the model's first and last.
  double t0 = std::numeric_limits<double>::quiet_NaN();
  double t1 = std::numeric_limits<double>::quiet_NaN();
};

// A held-out population of a population model.
struct PopulationHoldout {
  torch::Tensor source;      // [n, d], also what the population is embedded from
  torch::Tensor target;      // [m, d]
  torch::Tensor labels;      // [n_labels] long codes (-1: unseen value), or undefined without labels
  torch::Tensor covariates;  // [n_covariates], or undefined without covariates
};

using Validator = std::function<double(int64_t step)>;

// Validators: each call transports every set's (subsampled) source cells with
// the model's current weights and returns the mean distance over the sets.
// They hold the model by reference: it must outlive them. Population sets are
// embedded from all their own source cells, as prediction does. Throws
// std::invalid_argument for no sets or sets that do not fit the model.
Validator flow_validator(const FlowModel& model, const std::vector<FlowHoldout>& sets, const ValidationConfig& config);
Validator population_validator(PopulationModel& model, const std::vector<PopulationHoldout>& sets,
                               const ValidationConfig& config);

}  // namespace popflow

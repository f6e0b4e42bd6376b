// Training loop (Algorithm 1): each step draws, for every interval between
// consecutive snapshots, a few groups and a minibatch of source and target
// cells within each, couples them, samples times and regresses the velocity.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "config.h"
#include "model.h"
#include "optimizer.h"

namespace popflow {

struct TrainingData {
  torch::Tensor x;                  // [N, d] all cells (any float dtype, CPU)
  std::vector<int64_t> time_index;  // per cell: index into FlowConfig::times
  std::vector<int64_t> group;       // per cell: group id in [0, n_groups); empty = one group
  torch::Tensor group_cond;         // [n_groups, cond_dim] conditioning per group, or undefined
};

struct TrainCallbacks {
  // Called after every `every` completed steps and after the last one;
  // returning false stops training (the model keeps the last completed step).
  std::function<bool(int64_t step, double loss)> progress;
  int64_t every = 10;
  // Called after every `checkpoint_every` completed steps (0 = never) while
  // the model's parameters hold the weights to save (the average, if any);
  // `state` is what the model file needs for resuming.
  std::function<void(int64_t step, const TrainState& state)> checkpoint;
  int64_t checkpoint_every = 0;
};

struct TrainResult {
  std::vector<double> loss;  // one entry per completed step
  int64_t steps_done = 0;
  std::string status;        // completed, interrupted, time_limit, nonfinite
  double seconds = 0;
};

// n row indices from pool ([n] long): without replacement when the pool has
// at least n rows, with replacement otherwise.
torch::Tensor draw_rows(const std::vector<int64_t>& pool, int64_t n, std::mt19937_64& rng);

// Checks the data against the model and returns a readable reason, or "" if usable.
std::string validate_training_data(const FlowModel& model, const TrainingData& data);

// Every step's randomness is a function of (seed, step): both generators are
// reseeded at the start of each step, so a run resumed after step s draws
// exactly what the uninterrupted run draws from step s + 1 on.
void seed_step(uint64_t seed, int64_t step, std::mt19937_64& rng);

// With config.resume, restores the optimiser and the loss
// history into `result` and returns the first step to run (else 1). Throws
// std::invalid_argument when there is no state or it already reaches config.steps.
int64_t resume_training(const TrainState& state, const TrainConfig& config, FlatAdam& opt, TrainResult& result);

// After the last step: the state to keep with the model, and the averaged
// weights (if any) left in the parameters.
TrainState finish_training(FlatAdam& opt, const TrainResult& result);

// One optimisation step, shared by the training loops: refuses a non-finite
// loss or gradient before it reaches the weights, records the loss, and
// applies the time limit and the progress and checkpoint callbacks. Returns false when
// training must stop; result.status says why.
bool optimisation_step(FlatAdam& opt, const torch::Tensor& loss, int64_t step, const TrainConfig& config,
                       const TrainCallbacks& callbacks, std::chrono::steady_clock::time_point start,
                       TrainResult& result);

TrainResult train(FlowModel& model, const TrainingData& data, const TrainConfig& config,
                  const TrainCallbacks& callbacks = {});

}  // namespace popflow

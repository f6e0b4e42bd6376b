// Training (Algorithm 1): one loop, run_training, shared by every kind of
// model. A model kind supplies a TrainingObjective (how a step's loss is
// built, and which optimiser takes the step); the loop owns seeding, resuming,
// non-finite checks, checkpoints, the time limit, progress and the wind-down.
// train() is the flow model's objective: each step draws, for every interval
// between consecutive snapshots, a few groups and a minibatch of source and
// target cells within each, couples them, samples times and regresses the velocity.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "config.h"
#include "model.h"
#include "optimizer.h"

namespace popflow {

// Data-parallel training (distributed.h connects processes over c10d): every
// process runs the same fit on draws of its own; run_training() makes their
// weights rank 0's before the first step and averages, before every step, the
// stepping optimiser's flat gradient together with the loss and the
// processes' stop requests, so that every process takes (or refuses, or stops
// at) the same step and the replicas stay identical. Errors (a peer that died
// or timed out) are exceptions on every surviving process.
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  // Every process must pass the same `value` for `what` (for example the
  // number of parameters); std::invalid_argument names the first that differs.
  virtual void agree(const std::string& what, const std::string& value) = 0;
  // `t` (contiguous) becomes rank 0's on every process, in place.
  virtual void broadcast(torch::Tensor& t) = 0;
  // `t` (contiguous) becomes its mean over the processes, in place.
  virtual void average(torch::Tensor& t) = 0;
};

struct TrainCallbacks {
  // Called after every `every` completed steps and after the last one (with
  // TrainConfig::sync_every > 1: at each of the host's reads instead);
  // returning false stops training (the model keeps the last completed step).
  std::function<bool(int64_t step, double loss)> progress;
  int64_t every = 10;
  // Called after every `checkpoint_every` completed steps (0 = never) while
  // the model's parameters hold the weights to save (the average, if any);
  // `state` is what the model file needs for resuming (empty, step 0, when
  // the fit cannot be resumed).
  std::function<void(int64_t step, const TrainState& state)> checkpoint;
  int64_t checkpoint_every = 0;
  // Validation (validation.h builds scorers of held-out data): when set,
  // called after every `validate_every` completed steps (0: none in between)
  // and after the last completed step, while the parameters hold the weights
  // to save (the average, if any), the network is in evaluation mode and no
  // gradients are recorded. Lower scores are better; a non-finite score is
  // never an improvement. With keep_best the fit returns the weights of the
  // best-scoring step (TrainResult::best_step); patience > 0 stops the fit
  // (status "early_stop") after that many validations in a row without
  // improvement. The model file keeps no validation history: a resumed fit
  // starts a new validation record.
  std::function<double(int64_t step)> validate;
  int64_t validate_every = 0;
  bool keep_best = true;
  int64_t patience = 0;
  // Data-parallel training (see GradientSync), or null for one process. Give
  // checkpoint and progress callbacks to rank 0 only: the others train the
  // same replica. Objectives with more than one optimiser are refused.
  GradientSync* sync = nullptr;
};

struct TrainResult {
  std::vector<double> loss;  // one entry per completed step
  int64_t steps_done = 0;
  std::string status;        // completed, interrupted, time_limit, nonfinite, early_stop
  double seconds = 0;
  // With callbacks.validate: the steps scored and their scores, in order, and
  // the best step and score (0 and NaN while no score was finite).
  std::vector<int64_t> validation_steps;
  std::vector<double> validation_scores;
  int64_t best_step = 0;
  double best_score = std::numeric_limits<double>::quiet_NaN();
  // With config.step_graph: "captured" (steps replayed a CUDA graph; "captured
  // N times" when the staged buffers grew), "staged" (the fixed-buffer steps,
  // run eagerly: on CPU) or "eager: <why not>".
  std::string step_graph;
};

// What one kind of model (or loss) contributes to run_training. New training
// objectives (metric-path losses, growth rates) implement this rather than
// copy the loop; hooks with a default need no code when not used.
class TrainingObjective {
 public:
  virtual ~TrainingObjective() = default;

  // One-off set-up before the first step (data to the device, graphs,
  // optimisers); runs under the fit's thread settings and counts towards its
  // time. Throws std::invalid_argument for unusable data or settings.
  virtual void prepare(const TrainConfig& config) = 0;

  // The module being trained: in training mode while the loop runs, in
  // evaluation mode once it returns.
  virtual torch::nn::Module& network() = 0;

  // The optimisers, valid after prepare(). The first is primary: its state is
  // what a model file keeps for resuming. Every optimiser's moving average is
  // what checkpoints save and what the parameters hold after the last step.
  virtual std::vector<FlatAdam*> optimisers() = 0;

  // The optimiser that takes step `step` (default: the primary one).
  virtual FlatAdam& optimiser(int64_t step);

  // The loss of step `step` (1-based), with its graph for backward(). The loop
  // has just reseeded `rng` and torch's global generator from (seed, step):
  // a step draws from these two only, always in the same order, so a seeded
  // run is reproducible and a resumed run continues exactly as the
  // uninterrupted run would.
  virtual torch::Tensor loss(int64_t step, std::mt19937_64& rng) = 0;

  // The loss of step `step` (as loss()) with `optimiser`'s gradient filled
  // in. Default: loss(), then autograd's backward() into a zeroed gradient.
  // An objective that computes its gradient by hand overrides this (the flow
  // objective, for a small network whose step autograd's overhead dominates).
  virtual torch::Tensor loss_and_gradient(int64_t step, std::mt19937_64& rng, FlatAdam& optimiser);

  // Called before each loss: it is draw `draw` of its step, of the draws
  // `first_draw` .. `first_draw + draws - 1` this process makes every step
  // (each seeded by draw_seed(seed, step, draw)); a plain fit makes draw 0
  // alone. An objective that reads ahead (the population model's prefetcher)
  // learns the next draw from it. Default: nothing.
  virtual void next_draw(int64_t draw, int64_t first_draw, int64_t draws);

  // Called after backward() fills the stepping optimiser's gradient and before
  // its norm is checked and clipped: where gradients would be combined across
  // processes (distributed training). Default: nothing.
  virtual void gradients_ready(int64_t step, FlatAdam& optimiser);

  // Steps from fixed buffers (TrainConfig::step_graph). why_not_staged():
  // "" when this objective can take them (default: why it cannot). stage():
  // draws step `step` from the generators loss() would use, in the same
  // order, into buffers that keep their storage; false when they had to be
  // reallocated (a captured step must then be captured again).
  // staged_loss_and_gradient(): the staged step's loss with `optimiser`'s
  // gradient, by device work on those buffers alone (no host reads, no
  // host-side draws): a replayed capture repeats exactly this.
  virtual std::string why_not_staged() const;
  virtual bool stage(int64_t step, std::mt19937_64& rng);
  virtual torch::Tensor staged_loss_and_gradient(FlatAdam& optimiser);

  // Why this fit cannot be resumed from a saved state, or "" when it can
  // (default). Such a fit refuses config.resume, and its checkpoints and
  // final state carry no training state.
  virtual std::string why_not_resumable() const;
};

// The training loop. Checks config.steps (>= 1) and config.lr (> 0), applies
// config.threads, calls objective.prepare(), then runs steps 1 .. config.steps,
// or with config.resume continues from the step after `state`'s (restoring the
// primary optimiser and the loss history; std::invalid_argument when there is
// no state or it already reaches config.steps). Each step reseeds, takes the
// objective's loss, refuses a non-finite loss or gradient before it reaches
// the weights (status "nonfinite"; with sync_every > 1 the check runs on the
// device and the host reads it every sync_every steps, to the same end), lets the objective's optimiser step,
// records the loss, then calls the checkpoint callback, validates (status
// "early_stop" when patience runs out), applies the time limit (status
// "time_limit", measured from the call) and calls the progress callback
// (status "interrupted" when it returns false). On return `state` holds what
// the model file needs for resuming, the parameters hold the averaged weights
// (if any), or the best-scoring ones with validation and keep_best, and the
// network is in evaluation mode. When those are not the last step's, `state`
// carries the last step's weights as `raw` (and as `ema` without an average:
// the model file keeps the two together), so a resumed fit continues from the
// last step, as the uninterrupted fit would.
// With config.accumulate > 1 or callbacks.sync, a step's loss and gradient
// are the mean over several draws: accumulate per process, draw r of process
// `rank` from (seed, step, rank * accumulate + r) (draw 0 of rank 0 is the
// single draw of a plain fit), so W processes with accumulate a give the
// model one process with accumulate W * a gives, to float rounding.
TrainResult run_training(TrainingObjective& objective, const TrainConfig& config, const TrainCallbacks& callbacks,
                         TrainState& state);

// The optimiser settings a TrainConfig asks for (an objective's optimisers use them).
AdamSettings adam_settings(const TrainConfig& config);

// n row indices from pool ([n] long): without replacement when the pool has
// at least n rows, with replacement otherwise.
torch::Tensor draw_rows(const std::vector<int64_t>& pool, int64_t n, std::mt19937_64& rng);

// Paired coupling: sources[j] and targets[j] are the same cell. Draws n
// positions j once, as draw_rows draws from a pool of that size, and returns
// the rows at those positions on both sides ([n] long each).
struct PairedRows {
  torch::Tensor source, target;
};
PairedRows draw_paired_rows(const std::vector<int64_t>& sources, const std::vector<int64_t>& targets, int64_t n,
                            std::mt19937_64& rng);

// Paired coupling needs as many source as target cells in every block (a group
// or a population, named by `what`); std::invalid_argument names the first that has not.
void check_paired_counts(const std::vector<std::vector<int64_t>>& sources,
                         const std::vector<std::vector<int64_t>>& targets, const std::string& what);

struct TrainingData {
  torch::Tensor x;                  // [N, d] all cells (any float dtype, CPU)
  std::vector<int64_t> time_index;  // per cell: index into FlowConfig::times
  std::vector<int64_t> group;       // per cell: group id in [0, n_groups); empty = one group
  torch::Tensor group_cond;         // [n_groups, cond_dim] conditioning per group, or undefined
};

// Checks the data against the model and returns a readable reason, or "" if usable.
std::string validate_training_data(const FlowModel& model, const TrainingData& data);

// Fits a flow model: config.batch_size cells per (interval, group) block and
// config.groups_per_step groups per interval and step. Paired coupling pairs a
// group's k-th source cell with its k-th target cell (in data.x order): it needs
// two snapshot times, a path other than target FM and, in every group, as many
// source as target cells (std::invalid_argument otherwise).
TrainResult train(FlowModel& model, const TrainingData& data, const TrainConfig& config,
                  const TrainCallbacks& callbacks = {});

}  // namespace popflow

#include "trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <unordered_set>

#include "coupling.h"
#include "cpu_block_cache.h"
#include "device.h"
#include "metric_path.h"
#include "optimizer.h"
#include "paths.h"
#include "scratch.h"
#include "step_graph.h"
#include "step_seed.h"
#include "threads.h"

namespace popflow {
namespace {

// Every step's randomness is a function of (seed, step, draw) (step_seed.h):
// both generators are reseeded at the start of each draw, so a run resumed
// after step s draws exactly what the uninterrupted run draws from step s + 1 on.
void seed_step(uint64_t seed, int64_t step, std::mt19937_64& rng, int64_t draw = 0) {
  const uint64_t z = draw_seed(seed, step, draw);
  rng.seed(z);
  torch::manual_seed(z);
}

// The loss (detached, the mean over the draws) of a step drawn `draws` times
// in this process, with the mean gradient in `opt`; with `sync`, both are then
// averaged over the processes, which also learn whether any of them is out
// of time or was asked to stop (flags sent along, so all decide alike).
struct CombinedStep {
  torch::Tensor loss;
  bool out_of_time = false, stop = false;
};

CombinedStep combined_step(TrainingObjective& objective, FlatAdam& opt, uint64_t seed, int64_t step, int64_t draws,
                           GradientSync* sync, std::mt19937_64& rng, bool out_of_time, bool stop) {
  torch::Tensor grad = opt.gradient(), total, sum;
  const int64_t first = sync ? sync->rank() * draws : 0;
  for (int64_t r = 0; r < draws; ++r) {
    seed_step(seed, step, rng, first + r);
    objective.next_draw(first + r, first, draws);
    const torch::Tensor loss = objective.loss_and_gradient(step, rng, opt);  // zeroes the gradient first
    total = r == 0 ? loss : total + loss;
    if (draws > 1) sum = r == 0 ? grad.clone() : sum.add_(grad);
  }
  CombinedStep out;
  out.loss = total;
  if (draws > 1) {
    grad.copy_(sum.div_(static_cast<double>(draws)));
    out.loss = total / static_cast<double>(draws);
  }
  if (!sync) return out;
  const int64_t n = grad.numel();
  // One exchange: the gradient, the loss and the two flags.
  torch::Tensor buffer = torch::cat({grad, out.loss.reshape({1}).to(grad.dtype()),
                                     torch::tensor({out_of_time ? 1.0 : 0.0, stop ? 1.0 : 0.0}, grad.options())});
  sync->average(buffer);
  grad.copy_(buffer.narrow(0, 0, n));
  const auto tail = buffer.narrow(0, n, 3).to(torch::kCPU, torch::kDouble);
  out.loss = tail[0].clone();
  out.out_of_time = tail[1].item<double>() > 0;
  out.stop = tail[2].item<double>() > 0;
  return out;
}

// Data-parallel set-up: one optimiser, the same parameter count on every
// process, and every replica starting from rank 0's weights.
void start_replicas(GradientSync& sync, torch::nn::Module& network, const std::vector<FlatAdam*>& optimisers) {
  if (optimisers.size() != 1)
    throw std::invalid_argument("data-parallel training supports fits with one optimiser; this one has " +
                                std::to_string(optimisers.size()) +
                                " (ICNN, metric flow matching, the alternating schedule): fit it in one process");
  sync.agree("parameter count", std::to_string(optimisers.front()->parameter_count()));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> params;
  for (const auto& p : network.parameters()) params.push_back(p.detach().reshape({-1}));
  torch::Tensor flat = torch::cat(params);
  sync.broadcast(flat);
  int64_t offset = 0;
  for (auto& p : network.parameters()) {
    p.detach().copy_(flat.narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
}

// With config.resume, restores the primary optimiser and the loss history
// into `result` and returns the first step to run (else 1).
int64_t resume_from(const TrainState& state, const TrainConfig& config, const std::string& why_not,
                    FlatAdam& primary, TrainResult& result) {
  if (!config.resume) return 1;
  if (!why_not.empty()) throw std::invalid_argument(why_not);
  if (state.step == 0)
    throw std::invalid_argument("the model to resume holds no training state (it was saved without one, "
                                "or by an older popflow); fit it again");
  if (state.step >= config.steps)
    throw std::invalid_argument("the model to resume has already completed " + std::to_string(state.step) +
                                " steps; ask for more than that many steps in total");
  primary.restore(state);
  result.loss = state.loss;
  result.steps_done = state.step;
  return state.step + 1;
}

// What a model file needs to resume after `step` completed steps.
TrainState resumable_state(const FlatAdam& primary, int64_t step, const std::vector<double>& loss) {
  TrainState state = primary.state();
  state.step = step;
  state.loss = loss;
  return state;
}

// Runs `save` while the parameters of every optimiser from the i-th on hold the weights to save.
void with_weights_to_save(const std::vector<FlatAdam*>& optimisers, size_t i, const std::function<void()>& save) {
  if (i == optimisers.size()) return save();
  optimisers[i]->with_weights_to_save([&] { with_weights_to_save(optimisers, i + 1, save); });
}

// Validation during one run_training call: the scores, the best weights so far, the patience left.
class Validation {
 public:
  Validation(const TrainCallbacks& callbacks, torch::nn::Module& network, const std::vector<FlatAdam*>& optimisers)
      : callbacks_(callbacks), network_(network), optimisers_(optimisers) {}

  bool active() const { return static_cast<bool>(callbacks_.validate); }
  bool due(int64_t step) const {
    return active() && callbacks_.validate_every > 0 && step % callbacks_.validate_every == 0;
  }
  int64_t last_step() const { return last_step_; }

  // Scores the weights to save after `step` into `result`; false once patience has run out.
  bool run(int64_t step, TrainResult& result) {
    double score = 0;
    bool improved = false;
    with_weights_to_save(optimisers_, 0, [&] {
      torch::NoGradGuard no_grad;
      network_.eval();
      score = callbacks_.validate(step);
      network_.train();
      improved = std::isfinite(score) && (result.best_step == 0 || score < result.best_score);
      if (improved && callbacks_.keep_best) {
        best_.clear();
        for (const auto& p : network_.parameters()) best_.push_back(p.detach().clone());
      }
    });
    last_step_ = step;
    result.validation_steps.push_back(step);
    result.validation_scores.push_back(score);
    if (improved) {
      result.best_step = step;
      result.best_score = score;
      since_best_ = 0;
    } else {
      ++since_best_;
    }
    return callbacks_.patience <= 0 || since_best_ < callbacks_.patience;
  }

  // Whether the fit returns an earlier step's weights than the last one's.
  bool keeps_earlier(const TrainResult& result) const {
    return callbacks_.keep_best && !best_.empty() && result.best_step != result.steps_done;
  }

  // Whether the fit returns the best-scoring weights rather than the last ones.
  bool keeps_best() const { return callbacks_.keep_best && !best_.empty(); }

  void restore_best() {
    torch::NoGradGuard no_grad;
    const auto params = network_.parameters();
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(best_[i]);
  }

 private:
  const TrainCallbacks& callbacks_;
  torch::nn::Module& network_;
  const std::vector<FlatAdam*>& optimisers_;
  std::vector<torch::Tensor> best_;  // the best step's weights to save (with keep_best)
  int64_t last_step_ = 0, since_best_ = 0;
};

bool on_gpu(const FlatAdam& opt) { return opt.device().is_cuda(); }

// The losses and finiteness of the steps since the host last looked, kept on
// the device: reading them each step would stall a GPU's queue every step.
class DeferredChecks {
 public:
  // This step's keep flag (0-dim, the loss's type): 1 while this and every
  // earlier step had a finite loss and gradient norm; the step is recorded.
  torch::Tensor keep(const torch::Tensor& loss, const torch::Tensor& norm) {
    const torch::Tensor flag = update(loss, norm);
    losses_.push_back(loss);
    kept_after_.push_back(kept_.clone());
    return flag;
  }
  int64_t size() const { return static_cast<int64_t>(losses_.size()); }

  // keep() in two halves for a captured step (step_graph.h): update() computes
  // the flag in place, as a replay reads and writes the same tensors; record()
  // then keeps copies of the step's loss and flag, after each replay.
  torch::Tensor update(const torch::Tensor& loss, const torch::Tensor& norm) {
    const auto ok = torch::isfinite(loss) & torch::isfinite(norm);
    if (kept_.defined()) kept_.logical_and_(ok);
    else kept_ = ok.clone();
    return kept_.to(loss.scalar_type());
  }
  void record(const torch::Tensor& loss) {
    losses_.push_back(loss.clone());
    kept_after_.push_back(kept_.clone());
  }

  // Reads the pending steps (the last is `step`) into `result` up to the
  // first non-finite one, whose number it returns (0: none).
  int64_t read(int64_t step, TrainResult& result) {
    const auto losses = torch::stack(losses_).to(torch::kCPU, torch::kDouble);
    const auto kept = torch::stack(kept_after_).to(torch::kCPU);
    const int64_t first = step - size() + 1;
    losses_.clear();
    kept_after_.clear();
    const double* loss = losses.data_ptr<double>();
    const bool* ok = kept.data_ptr<bool>();
    for (int64_t i = 0; i < losses.size(0); ++i) {
      if (!ok[i]) return first + i;
      result.loss.push_back(loss[i]);
      result.steps_done = first + i;
    }
    return 0;
  }

 private:
  torch::Tensor kept_;
  std::vector<torch::Tensor> losses_, kept_after_;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

FlatAdam& TrainingObjective::optimiser(int64_t) { return *optimisers().front(); }

torch::Tensor TrainingObjective::loss_and_gradient(int64_t step, std::mt19937_64& rng, FlatAdam& optimiser) {
  const torch::Tensor value = loss(step, rng);
  optimiser.zero_grad();
  value.backward();
  return value.detach();
}

void TrainingObjective::gradients_ready(int64_t, FlatAdam&) {}

void TrainingObjective::next_draw(int64_t, int64_t, int64_t) {}

std::string TrainingObjective::why_not_resumable() const { return ""; }

std::string TrainingObjective::why_not_staged() const { return "this model's steps cannot be staged"; }

bool TrainingObjective::stage(int64_t, std::mt19937_64&) {
  throw std::logic_error("TrainingObjective::stage: " + why_not_staged());
}

torch::Tensor TrainingObjective::staged_loss_and_gradient(FlatAdam&) {
  throw std::logic_error("TrainingObjective::staged_loss_and_gradient: " + why_not_staged());
}

AdamSettings adam_settings(const TrainConfig& config) {
  AdamSettings adam;
  adam.lr = config.lr;
  adam.weight_decay = config.weight_decay;
  adam.ema_decay = config.ema_decay;
  return adam;
}

TrainResult run_training(TrainingObjective& objective, const TrainConfig& config, const TrainCallbacks& callbacks,
                         TrainState& state) {
  if (config.steps < 1) throw std::invalid_argument("steps must be >= 1");
  if (!(config.lr > 0)) throw std::invalid_argument("lr must be > 0");
  ThreadScope thread_scope(config.threads);
  const ScratchScope scratch;  // the step's CPU buffers (scratch.h) live as long as the fit
  const CpuBlockCacheScope block_cache;  // and the blocks of its large CPU tensors (cpu_block_cache.h)
  const auto start = std::chrono::steady_clock::now();
  objective.prepare(config);
  const std::vector<FlatAdam*> optimisers = objective.optimisers();
  FlatAdam& primary = *optimisers.front();
  const std::string why_not_resumable = objective.why_not_resumable();
  torch::nn::Module& network = objective.network();

  TrainResult result;
  result.status = "completed";
  const int64_t first_step = resume_from(state, config, why_not_resumable, primary, result);
  Validation validation(callbacks, network, optimisers);
  network.train();
  Tf32Scope tf32(config.tf32);
  GradientSync* const sync = callbacks.sync;
  if (sync) start_replicas(*sync, network, optimisers);
  const int64_t draws = std::max<int64_t>(config.accumulate, 1);
  const bool combined = sync || draws > 1;  // a step's gradient is a mean over draws or processes
  bool stop_asked = false, out_of_time = false;  // data-parallel: this process's request, the agreed flag
  // Processes decide together, at each step's exchange, so the host reads every step.
  const int64_t sync_every = sync ? 1 : config.sync_every > 0 ? config.sync_every : on_gpu(primary) ? 25 : 1;
  DeferredChecks deferred;  // with sync_every > 1: the steps whose loss the host has not read yet
  // Fixed-buffer steps, captured on a GPU (config.step_graph).
  std::string why_not_staged = !config.step_graph ? "not asked" : objective.why_not_staged();
  if (why_not_staged.empty())
    why_not_staged = combined ? "data-parallel or accumulated steps"
                     : sync_every == 1 ? "the host reads every step (sync_every = 1)"
                     : optimisers.size() != 1 ? "more than one optimiser" : "";
  const bool staged = why_not_staged.empty();
  if (config.step_graph) result.step_graph = staged ? "staged" : "eager: " + why_not_staged;
  StepGraph step_graph;
  torch::Tensor staged_loss;  // the staged step's loss: a captured tensor, overwritten by each replay
  if (staged) primary.count_on_device();
  std::mt19937_64 rng;
  FlatAdam* last_opt = nullptr;  // the optimiser of the last step, which a non-finite loss undoes
  // The weights of the step before `step` gave a non-finite loss or gradient:
  // they can already give non-finite velocities, so the fit returns the step
  // before that one (the best validated weights, when validation keeps them,
  // are usable anyway).
  const auto checkpoint_due = [&](int64_t step) {
    return callbacks.checkpoint && callbacks.checkpoint_every > 0 && step % callbacks.checkpoint_every == 0;
  };
  const auto own_time_out = [&] { return config.time_limit_s > 0 && seconds_since(start) > config.time_limit_s; };
  const auto over_time = [&] { return sync ? out_of_time : own_time_out(); };
  const auto diverged = [&](int64_t step, FlatAdam* previous_opt) {
    result.status = "nonfinite";
    if (previous_opt && !validation.keeps_best()) {
      previous_opt->rollback();
      result.loss.pop_back();
      result.steps_done = step - 2;
    }
  };
  for (int64_t step = first_step; step <= config.steps; ++step) {
    torch::Tensor loss;
    FlatAdam& opt = objective.optimiser(step);
    if (staged) {
      seed_step(config.seed, step, rng);
      objective.next_draw(0, 0, 1);
      if (!objective.stage(step, rng)) step_graph.reset();
      step_graph.run(opt.device(), [&] {
        staged_loss = objective.staged_loss_and_gradient(opt);
        const torch::Tensor norm = opt.grad_norm();
        const torch::Tensor keep = deferred.update(staged_loss, norm);
        opt.clip_grad_norm(norm, config.clip_norm);
        opt.remember(keep);
        opt.update(keep);
      });
      opt.count_step();
      deferred.record(staged_loss);
    } else if (combined) {
      const CombinedStep c =
          combined_step(objective, opt, config.seed, step, draws, sync, rng, sync && own_time_out(), stop_asked);
      if (c.stop) {
        result.status = "interrupted";
        break;
      }
      out_of_time = c.out_of_time;
      loss = c.loss;
    } else {
      seed_step(config.seed, step, rng);
      objective.next_draw(0, 0, 1);
      loss = objective.loss_and_gradient(step, rng, opt);
    }
    double loss_value = 0;
    if (sync_every == 1) {
      loss_value = loss.item<double>();
      if (!std::isfinite(loss_value)) {
        diverged(step, last_opt);
        break;
      }
      objective.gradients_ready(step, opt);
      // The norm is needed anyway to refuse a non-finite update before it reaches the weights.
      if (!std::isfinite(opt.clip_grad_norm(config.clip_norm))) {
        diverged(step, last_opt);
        break;
      }
      opt.remember_and_step();
      last_opt = &opt;
      result.loss.push_back(loss_value);
      result.steps_done = step;
    } else {
      // The same checks on the device: a non-finite step, and every step
      // after it, leaves the weights as they were; the host finds out at the
      // next sync and undoes the step before it, as above.
      if (!staged) {
        objective.gradients_ready(step, opt);
        const torch::Tensor norm = opt.grad_norm();
        const torch::Tensor keep = deferred.keep(loss, norm);
        opt.clip_grad_norm(norm, config.clip_norm);
        opt.remember(keep);
        opt.step(keep);
      }
      const bool due = deferred.size() >= sync_every || step == config.steps || checkpoint_due(step) ||
                       validation.due(step) || over_time();
      if (!due) continue;
      const int64_t bad = deferred.read(step, result);  // records the good steps' losses
      if (bad > 0) {
        diverged(bad, bad > first_step ? &objective.optimiser(bad - 1) : nullptr);
        break;
      }
      loss_value = result.loss.back();
    }
    if (checkpoint_due(step)) {
      const TrainState saved = why_not_resumable.empty() ? resumable_state(primary, step, result.loss) : TrainState();
      with_weights_to_save(optimisers, 0, [&] { callbacks.checkpoint(step, saved); });
    }
    if (validation.due(step) && !validation.run(step, result)) {
      result.status = "early_stop";
      break;
    }
    if (over_time() && step < config.steps) {
      result.status = "time_limit";
      break;
    }
    // With deferred checks, progress (and the host's chance to stop) comes at each sync instead.
    const bool report = step % std::max<int64_t>(callbacks.every, 1) == 0 || step == config.steps || sync_every > 1;
    if (callbacks.progress && report && !callbacks.progress(step, loss_value)) {
      // Data-parallel processes stop together, at the next step's exchange.
      if (sync) {
        stop_asked = true;
        continue;
      }
      result.status = "interrupted";
      break;
    }
  }
  if (validation.active() && result.steps_done >= first_step && validation.last_step() != result.steps_done)
    validation.run(result.steps_done, result);
  const bool keep_state = why_not_resumable.empty() && result.steps_done > 0;
  state = keep_state ? resumable_state(primary, result.steps_done, result.loss) : TrainState();
  const bool keep_earlier = validation.keeps_earlier(result);
  // Resuming continues from the last step's weights, not the best ones returned.
  if (keep_earlier && keep_state && !state.raw.defined()) state.raw = state.ema = primary.weights();
  for (FlatAdam* opt : optimisers) opt->use_average();
  if (keep_earlier) validation.restore_best();
  if (step_graph.captures() > 0)
    result.step_graph =
        step_graph.captures() == 1 ? "captured" : "captured " + std::to_string(step_graph.captures()) + " times";
  else if (staged && !step_graph.failure().empty())
    result.step_graph = "staged, not captured: " + step_graph.failure();
  network.eval();
  result.seconds = seconds_since(start);
  return result;
}

namespace {

// n positions in [0, m): without replacement (Floyd's algorithm) when m >= n, with replacement otherwise.
std::vector<int64_t> draw_positions(int64_t m, int64_t n, std::mt19937_64& rng) {
  std::vector<int64_t> out(n);
  if (n > m) {
    std::uniform_int_distribution<int64_t> u(0, m - 1);
    for (int64_t k = 0; k < n; ++k) out[k] = u(rng);
    return out;
  }
  // Floyd's algorithm asks only "was r picked?" (and marks it). Pools up to
  // 2^26 cells answer from a bitmap kept per thread (one load, where a hash
  // set allocated a node per pick: about a tenth of a width-64 step); its bits
  // are cleared after use. Both give the same positions.
  constexpr int64_t kBitmapCells = int64_t{1} << 26;  // 8 MB of bits at most
  const auto floyd = [&](auto&& test_and_set) {
    int64_t k = 0;
    for (int64_t j = m - n; j < m; ++j) {
      const int64_t r = std::uniform_int_distribution<int64_t>(0, j)(rng);
      out[k++] = test_and_set(r) ? (test_and_set(j), j) : r;
    }
  };
  if (m <= kBitmapCells) {
    thread_local std::vector<uint64_t> picked;
    if (static_cast<int64_t>(picked.size()) * 64 < m) picked.resize(static_cast<size_t>((m + 63) / 64), 0);
    floyd([&](int64_t i) {
      uint64_t& word = picked[static_cast<size_t>(i >> 6)];
      const uint64_t bit = uint64_t{1} << (i & 63);
      const bool was = word & bit;
      word |= bit;
      return was;
    });
    for (int64_t pick : out) picked[static_cast<size_t>(pick >> 6)] &= ~(uint64_t{1} << (pick & 63));
  } else {
    std::unordered_set<int64_t> chosen;
    floyd([&](int64_t i) { return !chosen.insert(i).second; });
  }
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

torch::Tensor rows_at(const std::vector<int64_t>& pool, const std::vector<int64_t>& positions) {
  auto out = torch::empty({static_cast<int64_t>(positions.size())}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (size_t k = 0; k < positions.size(); ++k) p[k] = pool[positions[k]];
  return out;
}

}  // namespace

torch::Tensor draw_rows(const std::vector<int64_t>& pool, int64_t n, std::mt19937_64& rng) {
  return rows_at(pool, draw_positions(static_cast<int64_t>(pool.size()), n, rng));
}

PairedRows draw_paired_rows(const std::vector<int64_t>& sources, const std::vector<int64_t>& targets, int64_t n,
                            std::mt19937_64& rng) {
  if (sources.size() != targets.size()) throw std::invalid_argument("paired rows: the two sides differ in size");
  const std::vector<int64_t> positions = draw_positions(static_cast<int64_t>(sources.size()), n, rng);
  return {rows_at(sources, positions), rows_at(targets, positions)};
}

void check_paired_counts(const std::vector<std::vector<int64_t>>& sources,
                         const std::vector<std::vector<int64_t>>& targets, const std::string& what) {
  for (size_t b = 0; b < sources.size() && b < targets.size(); ++b)
    if (sources[b].size() != targets[b].size())
      throw std::invalid_argument("paired coupling: " + what + " " + std::to_string(b) + " has " +
                                  std::to_string(sources[b].size()) + " source and " +
                                  std::to_string(targets[b].size()) + " target cells; paired cells come in equal " +
                                  "numbers, the k-th source cell of a " + what + " paired with its k-th target cell");
}

std::string validate_training_data(const FlowModel& model, const TrainingData& data) {
  const auto& cfg = model.config;
  if (!data.x.defined() || data.x.dim() != 2) return "cells must be a 2-d matrix";
  if (data.x.size(1) != cfg.network.dim)
    return "cells have " + std::to_string(data.x.size(1)) + " features, the model expects " +
           std::to_string(cfg.network.dim);
  const int64_t n = data.x.size(0);
  if (static_cast<int64_t>(data.time_index.size()) != n) return "one time index per cell is required";
  if (!data.group.empty() && static_cast<int64_t>(data.group.size()) != n) return "one group per cell is required";
  if (!torch::isfinite(data.x).all().item<bool>()) return "cells contain NA, NaN or infinite values";
  const int64_t n_times = static_cast<int64_t>(cfg.times.size());
  for (int64_t ti : data.time_index)
    if (ti < 0 || ti >= n_times) return "time index out of range";
  for (int64_t g : data.group)
    if (g < 0) return "negative group id";
  if (cfg.network.cond_dim > 0 && !data.group_cond.defined()) return "the model needs group conditioning";
  return "";
}

namespace {

// The flow model's objective: per step and interval, a few groups with cells
// on both sides, a coupled minibatch from each, one regression loss over all.
class FlowObjective : public TrainingObjective {
 public:
  FlowObjective(FlowModel& model, const TrainingData& data) : model_(model), data_(data) {}

  void prepare(const TrainConfig& config) override {
    if (config.batch_size < 1 || config.groups_per_step < 1)
      throw std::invalid_argument("batch_size and groups_per_step must be >= 1");
    batch_size_ = config.batch_size;
    groups_per_step_ = config.groups_per_step;
    fopt_ = torch::TensorOptions().dtype(torch::kFloat).device(model_.device);
    x_all_ = data_.x.to(fopt_);
    const int64_t n_groups =
        data_.group.empty() ? 1 : *std::max_element(data_.group.begin(), data_.group.end()) + 1;
    cond_all_ = data_.group_cond.defined() ? data_.group_cond.to(fopt_) : torch::Tensor();
    const auto& times = model_.config.times;
    // Cells of each (time, group) block, as row indices into the data.
    blocks_.assign(times.size(), std::vector<std::vector<int64_t>>(n_groups));
    for (size_t i = 0; i < data_.time_index.size(); ++i)
      blocks_[data_.time_index[i]][data_.group.empty() ? 0 : data_.group[i]].push_back(static_cast<int64_t>(i));

    // TargetFM and the VP paths start from Gaussian noise, so they need only target cells.
    target_fm_ = gaussian_source(model_.config.path.kind);
    const std::string source = source_problem(model_.config.source, model_.config.path.kind, model_.config.network.dim);
    if (!source.empty()) throw std::invalid_argument(source);
    source_ = SourceSampler(model_.config.source, model_.config.network.dim, fopt_);
    paired_ = model_.config.coupling.kind == CouplingKind::Paired;
    if (paired_) check_paired_blocks();
    // Intervals and, per interval, groups with cells on both sides.
    usable_.assign(times.size() - 1, {});
    size_t n_usable = 0;
    for (size_t k = 0; k + 1 < times.size(); ++k) {
      for (int64_t g = 0; g < n_groups; ++g)
        if ((target_fm_ || !blocks_[k][g].empty()) && !blocks_[k + 1][g].empty()) usable_[k].push_back(g);
      n_usable += usable_[k].size();
    }
    if (n_usable == 0)
      throw std::invalid_argument("no group has cells at two consecutive time points; nothing to learn");
    reg_default_ = std::max(2 * model_.config.path.sigma * model_.config.path.sigma, 1e-3);
    unbalanced_ = model_.config.coupling.kind == CouplingKind::Unbalanced;
    if (unbalanced_) prepare_masses();
    opt_ = std::make_unique<FlatAdam>(*model_.net, adam_settings(config));
  }

  torch::nn::Module& network() override { return *model_.net; }

  std::vector<FlatAdam*> optimisers() override { return {opt_.get()}; }

  torch::Tensor loss(int64_t, std::mt19937_64& rng) override {
    const Regression r = regression(rng);
    auto loss = torch::mse_loss(model_.net->forward(r.xt, r.t, r.cond), r.ut);
    if (unbalanced_)
      loss = loss + model_.config.coupling.growth_weight * torch::mse_loss(model_.net->growth(r.xt, r.t, r.cond), r.rate);
    return loss;
  }

  // The velocity's regression has its gradient by hand (the network's
  // mse_with_gradient): the same values as autograd's, at about half the
  // per-step overhead on CPU for small networks. Unbalanced flows add the
  // growth term and go through autograd.
  torch::Tensor loss_and_gradient(int64_t step, std::mt19937_64& rng, FlatAdam& optimiser) override {
    if (unbalanced_) return TrainingObjective::loss_and_gradient(step, rng, optimiser);
    const Regression r = regression(rng);
    return model_.net->mse_with_gradient(r.xt, r.t, r.cond, r.ut);
  }

  // Staged steps: draws that need no host work between them, i.e. independent
  // or paired cells (OT, Sinkhorn and unbalanced couplings are solved on the host).
  std::string why_not_staged() const override {
    return repairs(model_.config.coupling.kind) ? "the coupling is solved on the host for every minibatch" : "";
  }

  // The rows the eager step draws, in its order (so both train the same
  // model), in one buffer: every draw's target rows, then every draw's source
  // rows (zeros from a noise source), then each draw's group.
  bool stage(int64_t, std::mt19937_64& rng) override {
    const int64_t n = batch_size_;
    std::vector<std::pair<torch::Tensor, torch::Tensor>> rows;  // (source, target) per draw
    staged_blocks_.clear();
    each_block(rng, [&](size_t k, int64_t g) {
      rows.push_back(draw_block_rows(k, g, rng));
      staged_blocks_.emplace_back(k, g);
    });
    const auto d = static_cast<int64_t>(rows.size());
    auto host = staging_tensor({2 * d * n + d}, torch::kLong, model_.device);
    int64_t* const target = host.data_ptr<int64_t>();
    int64_t* const source = target + d * n;
    for (int64_t i = 0; i < d; ++i) {
      std::copy_n(rows[i].second.data_ptr<int64_t>(), n, target + i * n);
      if (rows[i].first.defined()) std::copy_n(rows[i].first.data_ptr<int64_t>(), n, source + i * n);
      else std::fill_n(source + i * n, n, 0);
      source[d * n + i] = staged_blocks_[i].second;
    }
    return stage_into(staged_rows_, host, fopt_.dtype(torch::kLong));
  }

  // The eager step's device work on the staged rows: each draw's source
  // draws, times and path noise in the eager order, one row gather per side.
  torch::Tensor staged_loss_and_gradient(FlatAdam&) override {
    const int64_t n = batch_size_, d = static_cast<int64_t>(staged_blocks_.size());
    const auto x1_all = x_all_.index_select(0, staged_rows_.narrow(0, 0, d * n));
    const auto x0_all = target_fm_ ? torch::Tensor() : x_all_.index_select(0, staged_rows_.narrow(0, d * n, d * n));
    RegressionParts parts;
    for (int64_t i = 0; i < d; ++i) {
      const size_t k = staged_blocks_[i].first;
      const auto x1 = x1_all.narrow(0, i * n, n);
      const auto x0 = target_fm_ ? source_.draw(n) : x0_all.narrow(0, i * n, n);
      add_draw({x0, x1, torch::rand({n}, fopt_), model_.model_time(model_.config.times[k]),
                model_.model_time(model_.config.times[k + 1]), -1, k, torch::Tensor()},
               parts);
    }
    torch::Tensor cond;
    if (cond_all_.defined())
      cond = cond_all_.index_select(0, staged_rows_.narrow(0, 2 * d * n, d))
                 .unsqueeze(1)
                 .expand({d, n, cond_all_.size(1)})
                 .reshape({d * n, cond_all_.size(1)});
    const Regression r = parts.joined();
    return model_.net->mse_with_gradient(r.xt, r.t, cond, r.ut);
  }

 protected:
  // One step's regression problem: points x_t at times t (conditioning rows),
  // the path's velocity there, and for unbalanced flows the growth rate.
  struct Regression {
    torch::Tensor xt, t, cond, ut, rate;
  };

  // One coupled minibatch of an interval and group: end points, the times s
  // in [0, 1] drawn for them, and the interval's model times.
  struct Draw {
    torch::Tensor x0, x1, s;
    double t0, t1;
    int64_t group;
    size_t interval;
    torch::Tensor log_growth;  // [n] unbalanced flows: each pair's source cell's log growth over the interval
  };

  // A step's regression, draw by draw.
  struct RegressionParts {
    std::vector<torch::Tensor> xts, ts, uts, conds, rates;
    Regression joined() const {
      return {join(xts), join(ts), conds.empty() ? torch::Tensor() : join(conds), join(uts),
              rates.empty() ? torch::Tensor() : join(rates)};
    }
  };

  // One draw's part of the regression (its conditioning rows too when its group is given, >= 0).
  void add_draw(const Draw& draw, RegressionParts& parts) const {
    auto ps = sample_path(model_.config.path, draw.x0, draw.x1, draw.s, !source_.gaussian());
    parts.xts.push_back(ps.xt);
    // Unit-interval time and velocity to model time; on the interval [0, 1]
    // that is the identity (exactly), and small networks feel each operation.
    const double span = draw.t1 - draw.t0;
    parts.ts.push_back(draw.t0 == 0 && span == 1 ? draw.s : draw.t0 + draw.s * span);
    parts.uts.push_back(span == 1 ? ps.ut : ps.ut / span);
    if (cond_all_.defined() && draw.group >= 0)
      parts.conds.push_back(cond_all_[draw.group].unsqueeze(0).expand({draw.s.size(0), -1}));
    // The growth rate along the pair's path: its source cell's log growth
    // spread evenly over the interval (model time).
    if (unbalanced_) parts.rates.push_back(draw.log_growth / (draw.t1 - draw.t0));
  }

  Regression regression(std::mt19937_64& rng) {
    RegressionParts parts;
    draw_pairs(rng, [&](const Draw& draw) { add_draw(draw, parts); });
    return parts.joined();
  }

  // torch::cat, without its copy for the usual single block.
  static torch::Tensor join(const std::vector<torch::Tensor>& parts) {
    return parts.size() == 1 ? parts.front() : torch::cat(parts);
  }

  // Per interval, a few groups with cells on both sides, in the order drawn.
  template <typename F>
  void each_block(std::mt19937_64& rng, F&& each) {
    for (size_t k = 0; k + 1 < model_.config.times.size(); ++k) {
      if (usable_[k].empty()) continue;
      std::vector<int64_t> groups = usable_[k];
      std::shuffle(groups.begin(), groups.end(), rng);
      groups.resize(std::min<size_t>(groups.size(), groups_per_step_));
      for (int64_t g : groups) each(k, g);
    }
  }

  // A draw's rows of interval k and group g: (source, target), the target's
  // drawn first; no source rows from a noise source; paired rows in pairs.
  std::pair<torch::Tensor, torch::Tensor> draw_block_rows(size_t k, int64_t g, std::mt19937_64& rng) const {
    const int64_t n = batch_size_;
    if (paired_) {
      PairedRows rows = draw_paired_rows(blocks_[k][g], blocks_[k + 1][g], n, rng);
      return {rows.source, rows.target};
    }
    auto target = draw_rows(blocks_[k + 1][g], n, rng);
    return {target_fm_ ? torch::Tensor() : draw_rows(blocks_[k][g], n, rng), target};
  }

  // Per interval, a few groups with cells on both sides, a coupled minibatch
  // from each, handed to `each` in the order drawn (so that what `each` draws
  // from torch's generator follows the same sequence on every run).
  void draw_pairs(std::mt19937_64& rng, const std::function<void(const Draw&)>& each) {
    const auto& times = model_.config.times;
    const auto dev = model_.device;
    const int64_t n = batch_size_;
    each_block(rng, [&](size_t k, int64_t g) {
      const double t0 = model_.model_time(times[k]), t1 = model_.model_time(times[k + 1]);
      const auto rows = draw_block_rows(k, g, rng);
      // Through page-locked memory: an ordinary copy to a GPU waits for its queue.
      const auto x1 = x_all_.index_select(0, to_device_async(rows.second, dev));
      const auto x0 =
          rows.first.defined() ? x_all_.index_select(0, to_device_async(rows.first, dev)) : source_.draw(n);
      if (unbalanced_) {
        auto up = couple_unbalanced(model_.config.coupling, x0, x1, block_mass_[k + 1][g] / block_mass_[k][g], rng);
        each({up.x0, up.x1, torch::rand({n}, fopt_), t0, t1, g, k, up.log_growth});
        return;
      }
      auto pair = couple(model_.config.coupling, x0, x1, reg_default_, rng);
      each({pair.x0, pair.x1, torch::rand({n}, fopt_), t0, t1, g, k, torch::Tensor()});
    });
  }

 private:
  // Unbalanced flows: the mass of each (time, group) block, its snapshot's
  // mass spread evenly over the snapshot's cells.
  void prepare_masses() {
    const auto& masses = model_.config.masses;
    const size_t n_times = model_.config.times.size();
    if (masses.size() != n_times)
      throw std::invalid_argument("unbalanced flow: one mass per snapshot time is needed (" +
                                  std::to_string(masses.size()) + " for " + std::to_string(n_times) + " times)");
    if (target_fm_ || paired_)
      throw std::invalid_argument("unbalanced flow: the coupling needs cells on both sides (no noise source, no "
                                  "paired rows)");
    block_mass_.assign(n_times, {});
    for (size_t k = 0; k < n_times; ++k) {
      if (!(masses[k] > 0) || !std::isfinite(masses[k]))
        throw std::invalid_argument("unbalanced flow: snapshot masses must be finite and > 0");
      int64_t cells = 0;
      for (const auto& b : blocks_[k]) cells += static_cast<int64_t>(b.size());
      for (const auto& b : blocks_[k])
        block_mass_[k].push_back(cells > 0 ? masses[k] * static_cast<double>(b.size()) / cells : 0.0);
    }
  }

  // Paired cells: one interval, no noise source, equal counts per group.
  void check_paired_blocks() const {
    const size_t n_times = model_.config.times.size();
    if (n_times != 2)
      throw std::invalid_argument("paired coupling needs exactly two snapshot times (source, target), not " +
                                  std::to_string(n_times));
    if (target_fm_)
      throw std::invalid_argument("paired coupling: the target FM and VP paths start from noise, which has no "
                                  "partner; use the icfm or sbcfm path");
    check_paired_counts(blocks_[0], blocks_[1], "group");
  }

 protected:
  FlowModel& model_;
  const TrainingData& data_;
  int64_t batch_size_ = 0, groups_per_step_ = 0;
  torch::TensorOptions fopt_;
  torch::Tensor x_all_, cond_all_;
  std::vector<std::vector<std::vector<int64_t>>> blocks_;
  std::vector<std::vector<int64_t>> usable_;
  bool target_fm_ = false, paired_ = false, unbalanced_ = false;
  std::vector<std::vector<double>> block_mass_;  // [time][group], unbalanced flows only
  SourceSampler source_;
  double reg_default_ = 0;
  std::unique_ptr<FlatAdam> opt_;
  // Staged steps: each draw's (interval, group), and the rows on the device (see stage()).
  std::vector<std::pair<size_t, int64_t>> staged_blocks_;
  torch::Tensor staged_rows_;
};

// Metric flow matching: the same draws as the flow objective, in two stages
// of the one loop. Steps 1 .. interpolant_steps train the interpolant phi
// (its own optimiser) to minimise the metric kinetic energy of OT-coupled
// pairs' paths; the remaining steps regress the velocity on d x_t / dt at
// x_t + sigma eps, phi frozen. Only the velocity field is saved: prediction
// needs nothing else.
class MetricFlowObjective : public FlowObjective {
 public:
  using FlowObjective::FlowObjective;

  void prepare(const TrainConfig& config) override {
    const MetricConfig& metric = model_.config.metric;
    if (model_.config.path.kind != PathKind::ICFM)
      throw std::invalid_argument("metric flow matching needs the icfm path (noise sigma around the interpolant)");
    if (model_.config.coupling.kind == CouplingKind::Paired)
      throw std::invalid_argument("metric flow matching does not support paired coupling");
    if (metric.interpolant_steps >= config.steps)
      throw std::invalid_argument("interpolant_steps (" + std::to_string(metric.interpolant_steps) +
                                  ") must be fewer than the fit's steps (" + std::to_string(config.steps) +
                                  "), which count both stages");
    FlowObjective::prepare(config);
    // Reference cells of each interval's metric: the cells of its two
    // snapshots (all groups), or a fixed subsample of them.
    auto gen = at::detail::createCPUGenerator(config.seed);
    const auto& time_index = data_.time_index;
    reference_.clear();
    scales_.clear();
    for (size_t k = 0; k + 1 < model_.config.times.size(); ++k) {
      std::vector<int64_t> rows;
      for (size_t i = 0; i < time_index.size(); ++i)
        if (time_index[i] == static_cast<int64_t>(k) || time_index[i] == static_cast<int64_t>(k + 1))
          rows.push_back(static_cast<int64_t>(i));
      auto idx = torch::tensor(rows, torch::kLong);
      const int64_t m = idx.size(0);
      if (metric.cells > 0 && metric.cells < m)
        idx = idx.index_select(0, torch::randperm(m, gen, torch::TensorOptions().dtype(torch::kLong))
                                      .narrow(0, 0, metric.cells));
      reference_.push_back(x_all_.index_select(0, idx.to(model_.device)));
      scales_.push_back(land_scale(reference_.back(), metric));
    }
    phi_ = make_interpolant(model_.config.network);
    phi_->to(model_.device);
    phi_->train();
    phi_opt_ = std::make_unique<FlatAdam>(*phi_, adam_settings(config));
  }

  std::vector<FlatAdam*> optimisers() override { return {opt_.get(), phi_opt_.get()}; }

  FlatAdam& optimiser(int64_t step) override {
    return step <= model_.config.metric.interpolant_steps ? *phi_opt_ : *opt_;
  }

  torch::Tensor loss(int64_t step, std::mt19937_64& rng) override {
    if (trains_phi(step)) return interpolant_energy(rng);
    const Regression r = velocity_regression(rng);
    return torch::mse_loss(model_.net->forward(r.xt, r.t, r.cond), r.ut);
  }

  // The velocity stage's gradient by hand, as the flow objective's.
  torch::Tensor loss_and_gradient(int64_t step, std::mt19937_64& rng, FlatAdam& optimiser) override {
    if (trains_phi(step)) return TrainingObjective::loss_and_gradient(step, rng, optimiser);
    const Regression r = velocity_regression(rng);
    return model_.net->mse_with_gradient(r.xt, r.t, r.cond, r.ut);
  }

  std::string why_not_staged() const override {
    return "metric flow matching trains its interpolant, then regresses on its autograd derivative";
  }

  std::string why_not_resumable() const override {
    return "a metric flow matching fit cannot be resumed: its interpolant network is not kept in the model "
           "file; fit again with the total number of steps";
  }

 private:
  bool trains_phi(int64_t step) const { return step <= model_.config.metric.interpolant_steps; }

  // Stage 1: the mean metric kinetic energy of the drawn pairs' interpolants.
  torch::Tensor interpolant_energy(std::mt19937_64& rng) {
    std::vector<torch::Tensor> energies;
    draw_pairs(rng, [&](const Draw& draw) {
      InterpolantSample path = sample_interpolant(phi_, draw.x0, draw.x1, draw.s, true);
      energies.push_back(metric_energy(path, reference_[draw.interval], scales_[draw.interval]));
    });
    return torch::stack(energies).mean();
  }

  // Stage 2: the velocity regresses on d x_t / dt at x_t + sigma eps, phi frozen.
  Regression velocity_regression(std::mt19937_64& rng) {
    std::vector<torch::Tensor> xts, dxts, ts, conds;
    draw_pairs(rng, [&](const Draw& draw) {
      InterpolantSample path = sample_interpolant(phi_, draw.x0, draw.x1, draw.s, false);
      xts.push_back(path.xt + model_.config.path.sigma * torch::randn_like(draw.x1));
      dxts.push_back(path.dxt / (draw.t1 - draw.t0));  // unit-interval velocity to model-time velocity
      ts.push_back(draw.t0 + draw.s * (draw.t1 - draw.t0));
      if (cond_all_.defined()) conds.push_back(cond_all_[draw.group].unsqueeze(0).expand({draw.s.size(0), -1}));
    });
    return {join(xts), join(ts), conds.empty() ? torch::Tensor() : join(conds), join(dxts), torch::Tensor()};
  }

  std::vector<torch::Tensor> reference_;  // per interval
  std::vector<LandScale> scales_;         // per interval
  VectorField phi_{nullptr};
  std::unique_ptr<FlatAdam> phi_opt_;
};

}  // namespace

TrainResult train(FlowModel& model, const TrainingData& data, const TrainConfig& config,
                  const TrainCallbacks& callbacks) {
  std::string problem = validate_training_data(model, data);
  if (!problem.empty()) throw std::invalid_argument(problem);
  if (model.config.metric.enabled) {
    MetricFlowObjective objective(model, data);
    return run_training(objective, config, callbacks, model.train_state);
  }
  FlowObjective objective(model, data);
  return run_training(objective, config, callbacks, model.train_state);
}

}  // namespace popflow

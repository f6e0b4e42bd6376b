#include "trainer.h"

#include <chrono>
#include <cmath>
#include <random>
#include <stdexcept>
#include <unordered_set>

#include "coupling.h"
#include "optimizer.h"
#include "paths.h"
#include "threads.h"

namespace popflow {
namespace {

// Cells of each (time, group) block, as row indices into the data.
using Blocks = std::vector<std::vector<std::vector<int64_t>>>;

Blocks make_blocks(const TrainingData& data, size_t n_times, int64_t n_groups) {
  Blocks blocks(n_times, std::vector<std::vector<int64_t>>(n_groups));
  for (size_t i = 0; i < data.time_index.size(); ++i) {
    int64_t g = data.group.empty() ? 0 : data.group[i];
    blocks[data.time_index[i]][g].push_back(static_cast<int64_t>(i));
  }
  return blocks;
}

struct Batch {
  torch::Tensor xt, t, ut, cond;
};

}  // namespace

// Floyd's algorithm when drawing without replacement.
torch::Tensor draw_rows(const std::vector<int64_t>& pool, int64_t n, std::mt19937_64& rng) {
  auto out = torch::empty({n}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  const int64_t m = static_cast<int64_t>(pool.size());
  if (n > m) {
    std::uniform_int_distribution<int64_t> u(0, m - 1);
    for (int64_t k = 0; k < n; ++k) p[k] = pool[u(rng)];
    return out;
  }
  std::unordered_set<int64_t> chosen;
  int64_t k = 0;
  for (int64_t j = m - n; j < m; ++j) {
    int64_t r = std::uniform_int_distribution<int64_t>(0, j)(rng);
    int64_t pick = chosen.count(r) ? j : r;
    chosen.insert(pick);
    p[k++] = pool[pick];
  }
  std::shuffle(p, p + n, rng);
  return out;
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

void seed_step(uint64_t seed, int64_t step, std::mt19937_64& rng) {
  // splitmix64 of (seed, step): nearby seeds and steps give unrelated streams.
  uint64_t z = seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(step);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  rng.seed(z);
  torch::manual_seed(z);
}

int64_t resume_training(const TrainState& state, const TrainConfig& config, FlatAdam& opt, TrainResult& result) {
  if (!config.resume) return 1;
  if (state.step == 0)
    throw std::invalid_argument("the model to resume holds no training state (it was saved without one, "
                                "or by an older popflow); fit it again");
  if (state.step >= config.steps)
    throw std::invalid_argument("the model to resume has already completed " + std::to_string(state.step) +
                                " steps; ask for more than that many steps in total");
  opt.restore(state);
  result.loss = state.loss;
  result.steps_done = state.step;
  return state.step + 1;
}

TrainState finish_training(FlatAdam& opt, const TrainResult& result) {
  TrainState state;
  if (result.steps_done > 0) {
    state = opt.state();
    state.step = result.steps_done;
    state.loss = result.loss;
  }
  opt.use_average();
  return state;
}

bool optimisation_step(FlatAdam& opt, const torch::Tensor& loss, int64_t step, const TrainConfig& config,
                       const TrainCallbacks& callbacks, std::chrono::steady_clock::time_point start,
                       TrainResult& result) {
  const double loss_value = loss.item<double>();
  if (!std::isfinite(loss_value)) {
    result.status = "nonfinite";  // parameters still hold the last finite step
    return false;
  }
  opt.zero_grad();
  loss.backward();
  // The norm is needed anyway to refuse a non-finite update before it reaches the weights.
  if (!std::isfinite(opt.clip_grad_norm(config.clip_norm))) {
    result.status = "nonfinite";
    return false;
  }
  opt.step();
  result.loss.push_back(loss_value);
  result.steps_done = step;
  if (callbacks.checkpoint && callbacks.checkpoint_every > 0 && step % callbacks.checkpoint_every == 0) {
    TrainState state = opt.state();
    state.step = step;
    state.loss = result.loss;
    opt.with_weights_to_save([&] { callbacks.checkpoint(step, state); });
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (config.time_limit_s > 0 && elapsed > config.time_limit_s && step < config.steps) {
    result.status = "time_limit";
    return false;
  }
  const bool report = step % std::max<int64_t>(callbacks.every, 1) == 0 || step == config.steps;
  if (callbacks.progress && report && !callbacks.progress(step, loss_value)) {
    result.status = "interrupted";
    return false;
  }
  return true;
}

TrainResult train(FlowModel& model, const TrainingData& data, const TrainConfig& config,
                  const TrainCallbacks& callbacks) {
  std::string problem = validate_training_data(model, data);
  if (!problem.empty()) throw std::invalid_argument(problem);
  if (config.steps < 1 || config.batch_size < 1 || config.groups_per_step < 1)
    throw std::invalid_argument("steps, batch_size and groups_per_step must be >= 1");
  if (!(config.lr > 0)) throw std::invalid_argument("lr must be > 0");

  std::mt19937_64 rng;
  ThreadScope thread_scope(config.threads);
  const auto start = std::chrono::steady_clock::now();
  const auto dev = model.device;
  const auto fopt = torch::TensorOptions().dtype(torch::kFloat).device(dev);
  auto x_all = data.x.to(fopt);
  const int64_t n_groups = data.group.empty() ? 1 : *std::max_element(data.group.begin(), data.group.end()) + 1;
  auto cond_all = data.group_cond.defined() ? data.group_cond.to(fopt) : torch::Tensor();
  const auto& times = model.config.times;
  Blocks blocks = make_blocks(data, times.size(), n_groups);

  // TargetFM starts from Gaussian noise, so it needs only target cells.
  const bool target_fm = model.config.path.kind == PathKind::TargetFM;
  // Intervals and, per interval, groups with cells on both sides.
  std::vector<std::vector<int64_t>> usable(times.size() - 1);
  size_t n_usable = 0;
  for (size_t k = 0; k + 1 < times.size(); ++k) {
    for (int64_t g = 0; g < n_groups; ++g)
      if ((target_fm || !blocks[k][g].empty()) && !blocks[k + 1][g].empty()) usable[k].push_back(g);
    n_usable += usable[k].size();
  }
  if (n_usable == 0)
    throw std::invalid_argument("no group has cells at two consecutive time points; nothing to learn");

  const double reg_default = std::max(2 * model.config.path.sigma * model.config.path.sigma, 1e-3);
  const int64_t d = model.config.network.dim;

  AdamSettings adam;
  adam.lr = config.lr;
  adam.weight_decay = config.weight_decay;
  adam.ema_decay = config.ema_decay;
  FlatAdam opt(*model.net, adam);

  TrainResult result;
  result.status = "completed";
  const int64_t first_step = resume_training(model.train_state, config, opt, result);
  model.net->train();
  for (int64_t step = first_step; step <= config.steps; ++step) {
    seed_step(config.seed, step, rng);
    std::vector<torch::Tensor> xts, ts, uts, conds;
    for (size_t k = 0; k + 1 < times.size(); ++k) {
      if (usable[k].empty()) continue;
      const double t0 = model.model_time(times[k]), t1 = model.model_time(times[k + 1]);
      std::vector<int64_t> groups = usable[k];
      std::shuffle(groups.begin(), groups.end(), rng);
      groups.resize(std::min<size_t>(groups.size(), config.groups_per_step));
      for (int64_t g : groups) {
        auto x1 = x_all.index_select(0, draw_rows(blocks[k + 1][g], config.batch_size, rng).to(dev));
        auto x0 = target_fm ? torch::randn({config.batch_size, d}, fopt)
                            : x_all.index_select(0, draw_rows(blocks[k][g], config.batch_size, rng).to(dev));
        auto pair = couple(model.config.coupling, x0, x1, reg_default, rng);
        auto s = torch::rand({config.batch_size}, fopt);
        auto ps = sample_path(model.config.path, pair.x0, pair.x1, s);
        xts.push_back(ps.xt);
        ts.push_back(t0 + s * (t1 - t0));
        uts.push_back(ps.ut / (t1 - t0));  // unit-interval velocity to model-time velocity
        if (cond_all.defined()) conds.push_back(cond_all[g].unsqueeze(0).expand({config.batch_size, -1}));
      }
    }
    Batch b{torch::cat(xts), torch::cat(ts), torch::cat(uts), conds.empty() ? torch::Tensor() : torch::cat(conds)};
    auto loss = torch::mse_loss(model.net->forward(b.xt, b.t, b.cond), b.ut);
    if (!optimisation_step(opt, loss, step, config, callbacks, start, result)) break;
  }
  model.train_state = finish_training(opt, result);
  model.net->eval();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace popflow

// Adam over one flat parameter buffer. The module's parameters become views
// into the buffer, so an update, gradient clipping and the moving average of
// weights are a handful of whole-buffer operations per step instead of a
// handful per tensor (per-op overhead dominates small networks on CPU).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace popflow {

// What resuming a fit needs beyond the saved weights: the completed steps and
// their losses, Adam's moments and, with a moving average, the average and
// the raw weights (the saved weights are then the average). Flat float32 CPU
// tensors over the module's parameters, in module.parameters() order.
struct TrainState {
  int64_t step = 0;  // completed steps; 0 = no state (a fresh model)
  std::vector<double> loss;  // one per completed step
  torch::Tensor m, v;
  torch::Tensor ema, raw;  // undefined without a moving average
};

struct AdamSettings {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // L2 added to the gradient, as torch::optim::Adam
  double ema_decay = 0.0;     // 0 = no moving average of weights
};

class FlatAdam {
 public:
  FlatAdam(torch::nn::Module& module, const AdamSettings& settings);
  // Gives each parameter its own storage again (call before saving the module).
  ~FlatAdam();
  FlatAdam(const FlatAdam&) = delete;
  FlatAdam& operator=(const FlatAdam&) = delete;

  void zero_grad() { grad_.zero_(); }
  // The flat gradient buffer itself (the parameters' .grad are views into it),
  // for combining gradients across processes.
  torch::Tensor gradient() const { return grad_; }
  // Euclidean norm of the whole gradient; scales it to max_norm when larger (max_norm > 0).
  double clip_grad_norm(double max_norm);
  void step();
  // The same without reading anything back to the host (for GPUs, whose
  // queue a read would drain): the gradient's norm as a 0-dim tensor; clipping
  // by it; and a step and a remember() that take effect only where `keep` (a
  // 0-dim float tensor, 1 or 0) is 1, so a step found non-finite on the device
  // changes nothing. rollback() then returns to the last remember() kept.
  torch::Tensor grad_norm() const { return grad_.norm(); }
  void clip_grad_norm(const torch::Tensor& norm, double max_norm);
  void step(const torch::Tensor& keep);
  void remember(const torch::Tensor& keep);
  // For a step captured as a CUDA graph (step_graph.h), whose replays repeat
  // kernels but no host code: count_on_device() keeps the step count in a
  // device tensor too, which update(keep), step(keep)'s device work, then
  // advances and reads (bias corrections, remember(keep)'s count); the host
  // count follows with count_step() after each replay.
  void count_on_device();
  void update(const torch::Tensor& keep);
  void count_step() { ++t_; }
  // Copies the moving average into the parameters (no-op without one).
  void use_average();
  // A flat CPU copy of the current (raw, not averaged) weights.
  torch::Tensor weights() const { return data_.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true); }
  int64_t parameter_count() const { return data_.numel(); }
  torch::Device device() const { return data_.device(); }
  // remember() copies the weights, moments and average before a step;
  // rollback() returns to them, undoing a step whose weights proved unusable.
  void remember();
  void rollback();
  // remember() then step(): on float32 CPU buffers in one pass (adam_cpu.h),
  // elsewhere as the two calls. The eager loop's step.
  void remember_and_step();

  // Adam's moments, step count and average (copies); `step` and `loss` are left to the caller.
  TrainState state() const;
  // Continues from a saved state: the parameters must hold the saved weights.
  // A state without an average starts one from the raw weights when this
  // optimiser keeps one. Throws std::invalid_argument on a size mismatch.
  void restore(const TrainState& state);
  // Runs `save` while the parameters hold the weights a saved model should
  // have (the average, if any) in storage of their own, then returns to training.
  void with_weights_to_save(const std::function<void()>& save);

 private:
  void bind_views();
  void release();
  void allocate_saved();
  std::vector<torch::Tensor> params_;
  torch::Tensor data_, grad_, m_, v_, ema_;
  torch::Tensor saved_data_, saved_m_, saved_v_, saved_ema_;  // remember()'s copies
  AdamSettings s_;
  torch::Tensor saved_t_kept_;  // remember(keep)'s step count, on the device
  torch::Tensor t_device_;      // count_on_device(): the step count (double, 0-dim)
  int64_t t_ = 0, saved_t_ = -1;  // saved_t_: -1 none, -2 in saved_t_kept_
};

}  // namespace popflow

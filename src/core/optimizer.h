// Adam over one flat parameter buffer. The module's parameters become views
// into the buffer, so an update, gradient clipping and the moving average of
// weights are a handful of whole-buffer operations per step instead of a
// handful per tensor (per-op overhead dominates small networks on CPU).
#pragma once
#include <torch/torch.h>

#include <vector>

namespace popflow {

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
  // Euclidean norm of the whole gradient; scales it to max_norm when larger (max_norm > 0).
  double clip_grad_norm(double max_norm);
  void step();
  // Copies the moving average into the parameters (no-op without one).
  void use_average();

 private:
  void release();
  std::vector<torch::Tensor> params_;
  torch::Tensor data_, grad_, m_, v_, ema_;
  AdamSettings s_;
  int64_t t_ = 0;
};

}  // namespace popflow

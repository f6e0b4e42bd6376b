// The velocity field v(x, t | c): an MLP or residual MLP over
// [x, time embedding, random Fourier features of x, conditioning].
#pragma once
#include <torch/torch.h>

#include "config.h"

namespace popflow {

// Sinusoidal embedding of t (shape [n] or [n, 1]) into `dim` features.
torch::Tensor time_embedding(const torch::Tensor& t, int64_t dim);

class VectorFieldImpl : public torch::nn::Module {
 public:
  explicit VectorFieldImpl(const NetworkConfig& config);
  // x: [n, dim], t: [n] (model time in [0, 1]), cond: [n, cond_dim] or undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t,
                        const torch::Tensor& cond = torch::Tensor());
  // The growth rate g(x, t | c) ([n]: d log mass / dt in model time) of an
  // unbalanced flow (config.growth): a small MLP of its own beside the
  // velocity, so that the velocity's weights do not trade off against it.
  torch::Tensor growth(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& cond = torch::Tensor());
  bool has_growth() const { return config_.growth; }
  // The mean squared error of forward(x, t, cond) against `target` ([n, dim]),
  // with its gradient written into the parameters' .grad (overwritten, not
  // accumulated) by a hand-written backward pass: the same matrix products
  // autograd runs, without building its graph, whose per-operation cost
  // dominates a small network's training step on CPU. Runs without recording
  // a graph; the returned loss has none. Fields with a growth MLP throw
  // (its parameters would get no gradient): use autograd for them. With
  // `cond_grad`, also the loss's gradient with respect to `cond` ([n,
  // cond_dim]), for conditioning that is itself trained (a population's
  // embedding): the caller passes it on with autograd.
  torch::Tensor mse_with_gradient(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& cond,
                                  const torch::Tensor& target, torch::Tensor* cond_grad = nullptr);
  const NetworkConfig& config() const { return config_; }
  int64_t input_size() const;

 private:
  torch::Tensor activate(torch::Tensor h) const;  // without autograd, in place
  torch::Tensor inputs(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& cond) const;
  NetworkConfig config_;
  torch::Tensor fourier_matrix_;  // buffer [dim, fourier_features / 2], fixed at construction
  torch::nn::Linear input_{nullptr}, output_{nullptr};
  torch::nn::ModuleList hidden_;  // MLP: depth-1 layers; residual: 2 layers per block
  torch::nn::Sequential growth_{nullptr};  // growth-rate MLP (config.growth only)
};
TORCH_MODULE(VectorField);

}  // namespace popflow

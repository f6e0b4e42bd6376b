#include "network.h"

#include <cmath>
#include <stdexcept>

namespace popflow {

torch::Tensor time_embedding(const torch::Tensor& t, int64_t dim) {
  auto tt = t.reshape({-1, 1});
  if (dim <= 0) return tt;
  const int64_t half = dim / 2;
  // Angular frequencies 1 to 20 on a log scale: t lives in [0, 1]. Faster
  // waves would make the learnt field oscillate in t, and ODE solvers would
  // then need many more steps for the same accuracy.
  auto freqs = torch::exp(torch::linspace(0.0, std::log(20.0), half, t.options()));
  auto angles = tt * freqs.unsqueeze(0);
  return torch::cat({torch::sin(angles), torch::cos(angles)}, 1);
}

VectorFieldImpl::VectorFieldImpl(const NetworkConfig& config) : config_(config) {
  if (config.dim < 1) throw std::invalid_argument("network: dim must be >= 1");
  if (config.width < 1 || config.depth < 1) throw std::invalid_argument("network: width and depth must be >= 1");
  if (config.time_dim % 2 != 0 || config.fourier_features % 2 != 0)
    throw std::invalid_argument("network: time_dim and fourier_features must be even");
  if (config.fourier_features > 0) {
    fourier_matrix_ = register_buffer(
        "fourier_matrix", torch::randn({config.dim, config.fourier_features / 2}) * config.fourier_scale);
  }
  input_ = register_module("input", torch::nn::Linear(input_size(), config.width));
  const int64_t n_hidden = config.residual ? 2 * config.depth : config.depth - 1;
  for (int64_t i = 0; i < n_hidden; ++i)
    hidden_->push_back(torch::nn::Linear(config.width, config.width));
  register_module("hidden", hidden_);
  output_ = register_module("output", torch::nn::Linear(config.width, config.dim));
  if (config.growth) {
    // Registered last: the parameters of models without growth keep their order.
    torch::nn::Sequential g(torch::nn::Linear(input_size(), config.width));
    if (config.activation == Activation::SELU) g->push_back(torch::nn::SELU()); else g->push_back(torch::nn::SiLU());
    g->push_back(torch::nn::Linear(config.width, config.width));
    if (config.activation == Activation::SELU) g->push_back(torch::nn::SELU()); else g->push_back(torch::nn::SiLU());
    g->push_back(torch::nn::Linear(config.width, 1));
    growth_ = register_module("growth", g);
  }
}

int64_t VectorFieldImpl::input_size() const {
  const int64_t t_features = config_.time_dim > 0 ? config_.time_dim : 1;
  return config_.dim + t_features + config_.fourier_features + config_.cond_dim;
}

torch::Tensor VectorFieldImpl::activate(const torch::Tensor& h) const {
  return config_.activation == Activation::SELU ? torch::selu(h) : torch::silu(h);
}

torch::Tensor VectorFieldImpl::activate_backward(const torch::Tensor& grad, const torch::Tensor& pre) const {
  if (config_.activation == Activation::SiLU) return at::silu_backward(grad, pre);
  // SELU is ELU with alpha 1.6733 scaled by 1.0507: torch's own SELU backward.
  return at::elu_backward(grad, 1.6732632423543772848170429916717, 1.0507009873554804934193349852946, 1.0,
                          /*is_result=*/false, pre);
}

torch::Tensor VectorFieldImpl::inputs(const torch::Tensor& x, const torch::Tensor& t,
                                      const torch::Tensor& cond) const {
  std::vector<torch::Tensor> parts{x, time_embedding(t.to(x.dtype()), config_.time_dim)};
  if (config_.fourier_features > 0) {
    auto proj = torch::matmul(x, fourier_matrix_) * (2.0 * M_PI);
    parts.push_back(torch::sin(proj));
    parts.push_back(torch::cos(proj));
  }
  if (config_.cond_dim > 0) {
    if (!cond.defined() || cond.size(1) != config_.cond_dim)
      throw std::invalid_argument("network: conditioning input of width " + std::to_string(config_.cond_dim) +
                                  " expected");
    parts.push_back(cond.to(x.dtype()));
  }
  return torch::cat(parts, 1);
}

torch::Tensor VectorFieldImpl::growth(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& cond) {
  if (!config_.growth) throw std::invalid_argument("network: this flow has no growth rate (it is not unbalanced)");
  return growth_->forward(inputs(x, t, cond)).squeeze(1);
}

torch::Tensor VectorFieldImpl::forward(const torch::Tensor& x, const torch::Tensor& t,
                                       const torch::Tensor& cond) {
  auto h = activate(input_->forward(inputs(x, t, cond)));
  if (config_.residual) {
    for (size_t i = 0; i + 1 < hidden_->size(); i += 2) {
      auto r = activate(hidden_[i]->as<torch::nn::Linear>()->forward(h));
      h = h + hidden_[i + 1]->as<torch::nn::Linear>()->forward(r);
      h = activate(h);
    }
  } else {
    for (auto& layer : *hidden_) h = activate(layer->as<torch::nn::Linear>()->forward(h));
  }
  return output_->forward(h);
}

namespace {

// One linear layer's forward product, kept for its backward pass.
struct LinearStep {
  torch::nn::LinearImpl* layer;
  torch::Tensor in;   // the layer's input
  torch::Tensor pre;  // the activation's input after it (undefined when none follows directly)
};

// Writes the layer's weight and bias gradients for output gradient `d` and
// returns the gradient of its input (undefined when not needed).
torch::Tensor linear_backward(const LinearStep& s, const torch::Tensor& d, bool need_input_grad) {
  auto& w = s.layer->weight;
  auto& b = s.layer->bias;
  if (!w.grad().defined()) w.mutable_grad() = torch::zeros_like(w);
  if (!b.grad().defined()) b.mutable_grad() = torch::zeros_like(b);
  at::mm_out(w.mutable_grad(), d.t(), s.in);
  at::sum_out(b.mutable_grad(), d, 0);
  return need_input_grad ? d.mm(w) : torch::Tensor();
}

torch::Tensor linear_forward(torch::nn::LinearImpl* layer, const torch::Tensor& in) {
  return torch::addmm(layer->bias, in, layer->weight.t());
}

}  // namespace

torch::Tensor VectorFieldImpl::mse_with_gradient(const torch::Tensor& x, const torch::Tensor& t,
                                                 const torch::Tensor& cond, const torch::Tensor& target,
                                                 torch::Tensor* cond_grad) {
  if (config_.growth)
    throw std::logic_error("network: mse_with_gradient() has no growth term; use autograd for unbalanced flows");
  torch::NoGradGuard no_grad;
  // Forward, keeping each layer's input and each activation's input.
  std::vector<LinearStep> steps;
  auto in = inputs(x, t, cond);
  auto pre = linear_forward(input_.get(), in);
  steps.push_back({input_.get(), in, pre});
  auto h = activate(pre);
  std::vector<torch::Tensor> block_in;  // residual: each block's input h
  if (config_.residual) {
    for (size_t i = 0; i + 1 < hidden_->size(); i += 2) {
      auto* l1 = hidden_[i]->as<torch::nn::Linear>();
      auto* l2 = hidden_[i + 1]->as<torch::nn::Linear>();
      block_in.push_back(h);
      auto a = linear_forward(l1, h);
      steps.push_back({l1, h, a});
      auto r = activate(a);
      auto u = h + linear_forward(l2, r);
      steps.push_back({l2, r, u});
      h = activate(u);
    }
  } else {
    for (auto& module : *hidden_) {
      auto* layer = module->as<torch::nn::Linear>();
      auto z = linear_forward(layer, h);
      steps.push_back({layer, h, z});
      h = activate(z);
    }
  }
  auto out = linear_forward(output_.get(), h);
  auto loss = torch::mse_loss(out, target);
  // Backward: mean squared error, then the layers in reverse.
  auto d = (out - target).mul_(2.0 / static_cast<double>(out.numel()));
  d = linear_backward({output_.get(), h, torch::Tensor()}, d, true);
  if (config_.residual) {
    for (size_t b = block_in.size(); b-- > 0;) {
      const LinearStep& s1 = steps[1 + 2 * b];
      const LinearStep& s2 = steps[2 + 2 * b];
      auto du = activate_backward(d, s2.pre);
      auto dr = linear_backward(s2, du, true);
      auto da = activate_backward(dr, s1.pre);
      d = du + linear_backward(s1, da, true);  // the skip connection and the block's branch
    }
  } else {
    for (size_t i = steps.size(); i-- > 1;) d = linear_backward(steps[i], activate_backward(d, steps[i].pre), true);
  }
  d = activate_backward(d, steps[0].pre);
  linear_backward(steps[0], d, false);
  if (cond_grad) {
    // The conditioning is the last cond_dim columns of the input layer's input.
    const int64_t c = config_.cond_dim;
    *cond_grad = c > 0 ? d.mm(input_->weight.narrow(1, input_size() - c, c)) : torch::Tensor();
  }
  return loss;
}

}  // namespace popflow

#include "network.h"

#include <cmath>
#include <stdexcept>

#include "scratch.h"
#include "selu_cpu.h"

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

torch::Tensor VectorFieldImpl::activate(torch::Tensor h) const {
  if (config_.activation != Activation::SELU) return torch::silu(h);
  // Without autograd (prediction, ODE solves) `h`, a fresh layer output, is activated in place.
  return torch::GradMode::is_enabled() ? torch::selu(h) : selu_in_place(h);
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
  torch::Tensor in;    // the layer's input
  torch::Tensor pre;   // SiLU: its activation's input (the backward needs it)
  torch::Tensor post;  // its activation's output (SELU's backward needs only this)
};

// Writes the layer's weight and bias gradients for output gradient `d`.
void weight_gradients(const LinearStep& s, const torch::Tensor& d) {
  auto& w = s.layer->weight;
  auto& b = s.layer->bias;
  if (!w.grad().defined()) w.mutable_grad() = torch::zeros_like(w);
  if (!b.grad().defined()) b.mutable_grad() = torch::zeros_like(b);
  at::mm_out(w.mutable_grad(), d.t(), s.in);
  at::sum_out(b.mutable_grad(), d, 0);
}

// The gradient of the layer's input for output gradient `d`, into scratch `slot`.
torch::Tensor input_gradient(const LinearStep& s, const torch::Tensor& d, size_t slot) {
  const auto& w = s.layer->weight;
  auto din = scratch_buffer("network", slot, {d.size(0), w.size(1)}, d.options());
  return at::mm_out(din, d, w);
}

}  // namespace

torch::Tensor VectorFieldImpl::mse_with_gradient(const torch::Tensor& x, const torch::Tensor& t,
                                                 const torch::Tensor& cond, const torch::Tensor& target,
                                                 torch::Tensor* cond_grad) {
  if (config_.growth)
    throw std::logic_error("network: mse_with_gradient() has no growth term; use autograd for unbalanced flows");
  torch::NoGradGuard no_grad;
  const bool selu = config_.activation == Activation::SELU;
  // Scratch slots, in turn: each layer's output (SELU: activated in place;
  // SiLU: its activation's output in the next slot), then two gradient buffers.
  size_t slot = 0;
  const auto forward_layer = [&](torch::nn::LinearImpl* layer, const torch::Tensor& in, const torch::Tensor& skip) {
    auto z = scratch_buffer("network", slot++, {in.size(0), layer->weight.size(0)}, in.options());
    at::addmm_out(z, layer->bias, in, layer->weight.t());
    if (skip.defined()) z.add_(skip);
    if (selu) return LinearStep{layer, in, torch::Tensor(), selu_in_place(z)};
    auto h = scratch_buffer("network", slot++, z.sizes(), z.options());
    return LinearStep{layer, in, z, at::silu_out(h, z)};
  };
  // Forward, keeping each layer's input and its activation's output (and input, for SiLU).
  std::vector<LinearStep> steps;
  steps.push_back(forward_layer(input_.get(), inputs(x, t, cond), torch::Tensor()));
  if (config_.residual) {
    for (size_t i = 0; i + 1 < hidden_->size(); i += 2) {
      const torch::Tensor h = steps.back().post;  // the block's input, added back after its second layer
      steps.push_back(forward_layer(hidden_[i]->as<torch::nn::Linear>(), h, torch::Tensor()));
      steps.push_back(forward_layer(hidden_[i + 1]->as<torch::nn::Linear>(), steps.back().post, h));
    }
  } else {
    for (auto& module : *hidden_)
      steps.push_back(forward_layer(module->as<torch::nn::Linear>(), steps.back().post, torch::Tensor()));
  }
  const LinearStep last{output_.get(), steps.back().post, torch::Tensor(), torch::Tensor()};
  auto out = torch::addmm(output_->bias, last.in, output_->weight.t());
  auto loss = torch::mse_loss(out, target);
  // grad * activation'(its input), in place. SELU's derivative comes from its
  // output alone (scale where that is > 0, output + scale * alpha elsewhere):
  // no exponential.
  const auto activation_backward = [&](torch::Tensor& grad, const LinearStep& s) {
    if (selu)
      selu_backward_in_place(grad, s.post);
    else
      at::silu_backward_out(grad, grad, s.pre);
  };
  // Backward: the mean squared error, then the layers in reverse. The input
  // gradients live in the two scratch slots after the forward's: `d` starts in
  // the first; a plain MLP alternates them, a residual block keeps `d` in its
  // slot (adding its branch in place) and uses the other for the branch.
  const size_t grad_slots[2] = {slot, slot + 1};
  auto d = (out - target).mul_(2.0 / static_cast<double>(out.numel()));
  weight_gradients(last, d);
  d = input_gradient(last, d, grad_slots[0]);
  if (config_.residual) {
    for (size_t b = (steps.size() - 1) / 2; b-- > 0;) {
      const LinearStep& s1 = steps[1 + 2 * b];
      const LinearStep& s2 = steps[2 + 2 * b];
      activation_backward(d, s2);  // du
      weight_gradients(s2, d);
      auto dr = input_gradient(s2, d, grad_slots[1]);
      activation_backward(dr, s1);  // da
      weight_gradients(s1, dr);
      d.addmm_(dr, s1.layer->weight);  // the skip connection and the block's branch: du + da W1
    }
  } else {
    size_t in_slot = 0;  // which of grad_slots holds d
    for (size_t i = steps.size(); i-- > 1;) {
      activation_backward(d, steps[i]);
      weight_gradients(steps[i], d);
      in_slot = 1 - in_slot;
      d = input_gradient(steps[i], d, grad_slots[in_slot]);
    }
  }
  activation_backward(d, steps[0]);
  weight_gradients(steps[0], d);
  if (cond_grad) {
    // The conditioning is the last cond_dim columns of the input layer's input.
    const int64_t c = config_.cond_dim;
    *cond_grad = c > 0 ? d.mm(input_->weight.narrow(1, input_size() - c, c)) : torch::Tensor();
  }
  return loss;
}

}  // namespace popflow

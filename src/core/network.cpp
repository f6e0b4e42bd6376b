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

}  // namespace popflow

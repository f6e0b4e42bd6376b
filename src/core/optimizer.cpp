#include "optimizer.h"

#include <cmath>

namespace popflow {

FlatAdam::FlatAdam(torch::nn::Module& module, const AdamSettings& settings) : s_(settings) {
  params_ = module.parameters();
  int64_t total = 0;
  for (const auto& p : params_) total += p.numel();
  auto opts = params_.empty() ? torch::TensorOptions() : params_[0].options();
  data_ = torch::empty({total}, opts);
  grad_ = torch::zeros({total}, opts);
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& p : params_) {
    const int64_t n = p.numel();
    auto view = data_.narrow(0, offset, n).view(p.sizes());
    view.copy_(p.detach());
    p.set_data(view);
    // A defined .grad is accumulated into in place, so backward() fills grad_.
    p.mutable_grad() = grad_.narrow(0, offset, n).view(p.sizes());
    offset += n;
  }
  m_ = torch::zeros_like(data_);
  v_ = torch::zeros_like(data_);
  if (s_.ema_decay > 0) ema_ = data_.clone();
}

FlatAdam::~FlatAdam() { release(); }

void FlatAdam::release() {
  torch::NoGradGuard no_grad;
  for (auto& p : params_) {
    p.set_data(p.detach().clone());
    p.mutable_grad() = torch::Tensor();
  }
  params_.clear();
}

double FlatAdam::clip_grad_norm(double max_norm) {
  const double norm = grad_.norm().item<double>();
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) grad_.mul_(max_norm / (norm + 1e-6));
  return norm;
}

void FlatAdam::step() {
  torch::NoGradGuard no_grad;
  ++t_;
  if (s_.weight_decay > 0) grad_.add_(data_, s_.weight_decay);
  m_.mul_(s_.beta1).add_(grad_, 1 - s_.beta1);
  v_.mul_(s_.beta2).addcmul_(grad_, grad_, 1 - s_.beta2);
  const double bias1 = 1 - std::pow(s_.beta1, static_cast<double>(t_));
  const double bias2 = 1 - std::pow(s_.beta2, static_cast<double>(t_));
  auto denom = (v_.sqrt() / std::sqrt(bias2)).add_(s_.eps);
  data_.addcdiv_(m_, denom, -s_.lr / bias1);
  if (ema_.defined()) ema_.mul_(s_.ema_decay).add_(data_, 1 - s_.ema_decay);
}

void FlatAdam::use_average() {
  torch::NoGradGuard no_grad;
  if (ema_.defined() && t_ > 0) data_.copy_(ema_);
}

}  // namespace popflow

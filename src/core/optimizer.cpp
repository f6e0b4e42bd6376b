#include "optimizer.h"

#include <cmath>
#include <stdexcept>

#include "adam_cpu.h"
#include "scratch.h"

namespace popflow {

FlatAdam::FlatAdam(torch::nn::Module& module, const AdamSettings& settings) : s_(settings) {
  params_ = module.parameters();
  int64_t total = 0;
  for (const auto& p : params_) total += p.numel();
  auto opts = params_.empty() ? torch::TensorOptions() : params_[0].options();
  data_ = torch::empty({total}, opts);
  grad_ = torch::zeros({total}, opts);
  {
    torch::NoGradGuard no_grad;
    int64_t offset = 0;
    for (auto& p : params_) {
      data_.narrow(0, offset, p.numel()).view(p.sizes()).copy_(p.detach());
      offset += p.numel();
    }
  }
  bind_views();
  m_ = torch::zeros_like(data_);
  v_ = torch::zeros_like(data_);
  if (s_.ema_decay > 0) ema_ = data_.clone();
}

FlatAdam::~FlatAdam() { release(); }

void FlatAdam::bind_views() {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& p : params_) {
    const int64_t n = p.numel();
    p.set_data(data_.narrow(0, offset, n).view(p.sizes()));
    // A defined .grad is accumulated into in place, so backward() fills grad_.
    p.mutable_grad() = grad_.narrow(0, offset, n).view(p.sizes());
    offset += n;
  }
}

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
  auto denom = scratch_buffer("adam", 0, v_.sizes(), v_.options());
  at::sqrt_out(denom, v_).div_(std::sqrt(bias2)).add_(s_.eps);
  data_.addcdiv_(m_, denom, -s_.lr / bias1);
  if (ema_.defined()) ema_.mul_(s_.ema_decay).add_(data_, 1 - s_.ema_decay);
}

void FlatAdam::clip_grad_norm(const torch::Tensor& norm, double max_norm) {
  if (max_norm <= 0) return;
  torch::NoGradGuard no_grad;
  grad_.mul_(torch::where(norm > max_norm, max_norm / (norm + 1e-6), torch::ones_like(norm)));
}

void FlatAdam::step(const torch::Tensor& keep) {
  ++t_;
  update(keep);
}

void FlatAdam::count_on_device() {
  t_device_ = torch::full({}, static_cast<double>(t_), data_.options().dtype(torch::kDouble));
}

void FlatAdam::update(const torch::Tensor& keep) {
  torch::NoGradGuard no_grad;
  // A non-finite gradient must not reach the moments even with weight 0 (0 * NaN is NaN).
  auto g = torch::nan_to_num(s_.weight_decay > 0 ? grad_ + data_ * s_.weight_decay : grad_, 0.0, 0.0, 0.0);
  m_.lerp_(g, keep * (1 - s_.beta1));
  v_.lerp_(g * g, keep * (1 - s_.beta2));
  if (t_device_.defined()) {
    // The same arithmetic, with the count read on the device (step(keep) has counted on the host already).
    t_device_.add_(1);
    const auto bias1 = 1 - torch::pow(s_.beta1, t_device_);
    const auto bias2 = 1 - torch::pow(s_.beta2, t_device_);
    auto denom = (v_.sqrt() / bias2.sqrt()).add_(s_.eps);
    data_.addcdiv_(m_ * (keep * (-s_.lr / bias1)), denom);
  } else {
    const double bias1 = 1 - std::pow(s_.beta1, static_cast<double>(t_));
    const double bias2 = 1 - std::pow(s_.beta2, static_cast<double>(t_));
    auto denom = (v_.sqrt() / std::sqrt(bias2)).add_(s_.eps);
    data_.addcdiv_(m_ * (keep * (-s_.lr / bias1)), denom);
  }
  if (ema_.defined()) ema_.lerp_(data_, keep * (1 - s_.ema_decay));
}

TrainState FlatAdam::state() const {
  TrainState s;
  s.m = m_.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);
  s.v = v_.to(torch::kCPU, false, true);
  if (ema_.defined()) {
    s.ema = ema_.to(torch::kCPU, false, true);
    s.raw = data_.to(torch::kCPU, false, true);
  }
  return s;
}

void FlatAdam::restore(const TrainState& state) {
  const int64_t n = data_.numel();
  auto fits = [n](const torch::Tensor& t) { return t.defined() && t.dim() == 1 && t.numel() == n; };
  if (!fits(state.m) || !fits(state.v) || (state.ema.defined() && !fits(state.ema)) ||
      (state.raw.defined() && !fits(state.raw)))
    throw std::invalid_argument("the saved optimiser state does not fit this network's parameters");
  torch::NoGradGuard no_grad;
  // The saved weights are the average when there is one; training goes on from the raw weights.
  auto saved_weights = data_.clone();
  if (state.raw.defined()) data_.copy_(state.raw);
  m_.copy_(state.m);
  v_.copy_(state.v);
  if (ema_.defined()) ema_.copy_(state.ema.defined() ? state.ema.to(ema_.device()) : saved_weights);
  t_ = state.step;
  if (t_device_.defined()) t_device_.fill_(static_cast<double>(t_));
}

void FlatAdam::with_weights_to_save(const std::function<void()>& save) {
  torch::NoGradGuard no_grad;
  torch::Tensor raw;
  if (ema_.defined() && t_ > 0) {
    raw = data_.clone();
    data_.copy_(ema_);
  }
  // Views into the flat buffer would be saved as the whole buffer: give each its own copy meanwhile.
  for (auto& p : params_) p.set_data(p.detach().clone());
  try {
    save();
  } catch (...) {
    bind_views();
    if (raw.defined()) data_.copy_(raw);
    throw;
  }
  bind_views();
  if (raw.defined()) data_.copy_(raw);
}

// Preallocated once: a copy per step costs a few whole-buffer copies, no allocation.
void FlatAdam::allocate_saved() {
  if (saved_data_.defined()) return;
  saved_data_ = torch::empty_like(data_);
  saved_m_ = torch::empty_like(m_);
  saved_v_ = torch::empty_like(v_);
  if (ema_.defined()) saved_ema_ = torch::empty_like(ema_);
}

void FlatAdam::remember() {
  torch::NoGradGuard no_grad;
  allocate_saved();
  saved_data_.copy_(data_);
  saved_m_.copy_(m_);
  saved_v_.copy_(v_);
  if (ema_.defined()) saved_ema_.copy_(ema_);
  saved_t_ = t_;
}

void FlatAdam::remember(const torch::Tensor& keep) {
  torch::NoGradGuard no_grad;
  if (!saved_data_.defined()) remember();  // first call: start from valid copies
  // lerp with weight 1 returns its end exactly, with weight 0 its start.
  saved_data_.lerp_(data_, keep);
  saved_m_.lerp_(m_, keep);
  saved_v_.lerp_(v_, keep);
  if (ema_.defined()) saved_ema_.lerp_(ema_, keep);
  auto t = t_device_.defined() ? t_device_
                               : torch::full({}, static_cast<double>(t_), keep.options().dtype(torch::kDouble));
  // In place: a captured step (step_graph.h) must read the last replay's count, not a tensor of its capture.
  if (saved_t_kept_.defined()) saved_t_kept_.copy_(torch::where(keep > 0, t, saved_t_kept_));
  else saved_t_kept_ = t.clone();
  saved_t_ = -2;
}

void FlatAdam::remember_and_step() {
  if (!data_.device().is_cpu() || data_.scalar_type() != torch::kFloat) {
    remember();
    step();
    return;
  }
  allocate_saved();
  saved_t_ = t_++;
  const double bias1 = 1 - std::pow(s_.beta1, static_cast<double>(t_));
  const double bias2 = 1 - std::pow(s_.beta2, static_cast<double>(t_));
  const bool average = ema_.defined();
  const AdamBuffers b{data_.data_ptr<float>(),
                      grad_.data_ptr<float>(),
                      m_.data_ptr<float>(),
                      v_.data_ptr<float>(),
                      average ? ema_.data_ptr<float>() : nullptr,
                      saved_data_.data_ptr<float>(),
                      saved_m_.data_ptr<float>(),
                      saved_v_.data_ptr<float>(),
                      average ? saved_ema_.data_ptr<float>() : nullptr,
                      data_.numel()};
  const auto f = [](double x) { return static_cast<float>(x); };
  const AdamCoefficients c{f(s_.beta1), f(1 - s_.beta1), f(s_.beta2),        f(1 - s_.beta2),     f(s_.eps),
                           f(s_.weight_decay), f(s_.ema_decay), f(1 - s_.ema_decay), f(-s_.lr / bias1), f(std::sqrt(bias2))};
  adam_step_cpu(b, c);
}

void FlatAdam::rollback() {
  if (saved_t_ == -2) saved_t_ = static_cast<int64_t>(saved_t_kept_.item<double>());
  if (saved_t_ < 0) throw std::logic_error("FlatAdam::rollback without remember");
  torch::NoGradGuard no_grad;
  data_.copy_(saved_data_);
  m_.copy_(saved_m_);
  v_.copy_(saved_v_);
  if (ema_.defined()) ema_.copy_(saved_ema_);
  t_ = saved_t_;
  saved_t_ = -1;
  if (t_device_.defined()) t_device_.fill_(static_cast<double>(t_));
}

void FlatAdam::use_average() {
  torch::NoGradGuard no_grad;
  if (ema_.defined() && t_ > 0) data_.copy_(ema_);
}

}  // namespace popflow

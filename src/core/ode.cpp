#include "ode.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu_block_cache.h"

namespace popflow {
namespace {

torch::Tensor fixed_step(const VelocityFn& f, const torch::Tensor& x, double t, double h, SolverKind kind,
                         OdeStats& st) {
  switch (kind) {
    case SolverKind::Euler:
      st.evaluations += 1;
      return x + h * f(x, t);
    case SolverKind::Heun: {
      auto k1 = f(x, t);
      auto k2 = f(x + h * k1, t + h);
      st.evaluations += 2;
      return x + 0.5 * h * (k1 + k2);
    }
    case SolverKind::Midpoint: {
      auto k1 = f(x, t);
      st.evaluations += 2;
      return x + h * f(x + 0.5 * h * k1, t + 0.5 * h);
    }
    case SolverKind::RK4: {
      auto k1 = f(x, t);
      auto k2 = f(x + 0.5 * h * k1, t + 0.5 * h);
      auto k3 = f(x + 0.5 * h * k2, t + 0.5 * h);
      auto k4 = f(x + h * k3, t + h);
      st.evaluations += 4;
      return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4);
    }
    default:
      throw std::invalid_argument("fixed_step: not a fixed-step solver");
  }
}

// Dormand-Prince 5(4) tableau.
constexpr double c2 = 1.0 / 5, c3 = 3.0 / 10, c4 = 4.0 / 5, c5 = 8.0 / 9;
constexpr double a21 = 1.0 / 5;
constexpr double a31 = 3.0 / 40, a32 = 9.0 / 40;
constexpr double a41 = 44.0 / 45, a42 = -56.0 / 15, a43 = 32.0 / 9;
constexpr double a51 = 19372.0 / 6561, a52 = -25360.0 / 2187, a53 = 64448.0 / 6561, a54 = -212.0 / 729;
constexpr double a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247, a64 = 49.0 / 176,
                 a65 = -5103.0 / 18656;
constexpr double b1 = 35.0 / 384, b3 = 500.0 / 1113, b4 = 125.0 / 192, b5 = -2187.0 / 6784, b6 = 11.0 / 84;
// b (5th order) minus b* (4th order): the embedded error estimate.
constexpr double e1 = 71.0 / 57600, e3 = -71.0 / 16695, e4 = 71.0 / 1920, e5 = -17253.0 / 339200,
                 e6 = 22.0 / 525, e7 = -1.0 / 40;

// Integrates from t0 to t1 adaptively; `h` carries the step size between
// calls; `step_done(t)` is called after every accepted step.
torch::Tensor dopri5(const VelocityFn& f, torch::Tensor x, double t0, double t1, double& h,
                     const SolverConfig& cfg, OdeStats& st, const std::function<void(double)>& step_done) {
  const double dir = t1 >= t0 ? 1.0 : -1.0;
  const double span = std::abs(t1 - t0);
  if (span == 0) return x;
  if (h <= 0) h = std::min(span, 0.01);
  double t = t0;
  auto k1 = f(x, t);
  st.evaluations += 1;
  int64_t n_steps = 0;
  while (dir * (t1 - t) > 1e-12 * std::max(1.0, std::abs(t1))) {
    if (++n_steps > cfg.max_steps)
      throw std::runtime_error("dopri5: more than max_steps steps; loosen atol/rtol or raise max_steps");
    h = std::min(h, std::abs(t1 - t));
    const double s = dir * h;
    auto k2 = f(x + s * a21 * k1, t + c2 * s);
    auto k3 = f(x + s * (a31 * k1 + a32 * k2), t + c3 * s);
    auto k4 = f(x + s * (a41 * k1 + a42 * k2 + a43 * k3), t + c4 * s);
    auto k5 = f(x + s * (a51 * k1 + a52 * k2 + a53 * k3 + a54 * k4), t + c5 * s);
    auto k6 = f(x + s * (a61 * k1 + a62 * k2 + a63 * k3 + a64 * k4 + a65 * k5), t + s);
    auto x_new = x + s * (b1 * k1 + b3 * k3 + b4 * k4 + b5 * k5 + b6 * k6);
    auto k7 = f(x_new, t + s);
    st.evaluations += 6;
    auto err = s * (e1 * k1 + e3 * k3 + e4 * k4 + e5 * k5 + e6 * k6 + e7 * k7);
    auto scale = cfg.atol + cfg.rtol * torch::maximum(x.abs(), x_new.abs());
    double err_norm = torch::sqrt((err / scale).pow(2).mean()).item<double>();
    if (!std::isfinite(err_norm))
      throw std::runtime_error("dopri5: the velocity field produced non-finite values");
    if (err_norm <= 1.0) {
      t += s;
      x = x_new;
      k1 = k7;  // first-same-as-last
      st.accepted += 1;
      step_done(t);
    } else {
      st.rejected += 1;
    }
    double factor = err_norm == 0 ? 5.0 : 0.9 * std::pow(err_norm, -0.2);
    h *= std::clamp(factor, 0.2, 5.0);
  }
  return x;
}

}  // namespace

std::vector<torch::Tensor> integrate(const std::function<VelocityFn(int64_t, int64_t)>& chunk_fn,
                                     const torch::Tensor& x0, const std::vector<double>& times,
                                     const SolverConfig& config, OdeStats* stats, const OdeProgress& progress) {
  if (times.empty()) throw std::invalid_argument("integrate: no output times");
  if (config.steps < 1 && config.kind != SolverKind::Dopri5)
    throw std::invalid_argument("integrate: steps must be >= 1");
  if (config.chunk_size < 1) throw std::invalid_argument("integrate: chunk_size must be >= 1");
  torch::NoGradGuard no_grad;
  // Every velocity evaluation frees and reallocates the same large temporaries.
  const CpuBlockCacheScope block_cache;
  OdeStats st;
  const int64_t n = x0.size(0);
  std::vector<std::vector<torch::Tensor>> pieces(times.size());
  const double total_span = std::abs(times.back() - times.front());
  for (int64_t begin = 0; begin < std::max<int64_t>(n, 1); begin += config.chunk_size) {
    const int64_t end = std::min(n, begin + config.chunk_size);
    VelocityFn f = chunk_fn(begin, end);
    torch::Tensor x = x0.slice(0, begin, end);
    pieces[0].push_back(x);
    double h = 0;  // adaptive step size, carried across output times
    // Work done: the finished chunks' cells plus this chunk's share of the span.
    auto step_done = [&](double t) {
      if (!progress) return;
      const double along = total_span > 0 ? std::min(1.0, std::abs(t - times.front()) / total_span) : 1.0;
      if (!progress((begin + along * (end - begin)) / static_cast<double>(std::max<int64_t>(n, 1))))
        throw Interrupted();
    };
    for (size_t k = 1; k < times.size(); ++k) {
      const double ta = times[k - 1], tb = times[k];
      if (config.kind == SolverKind::Dopri5) {
        x = dopri5(f, x, ta, tb, h, config, st, step_done);
      } else {
        // Same step length as `steps` over the whole span; each segment gets at least one step.
        const double seg = std::abs(tb - ta);
        const int64_t m =
            total_span > 0 ? std::max<int64_t>(1, std::llround(config.steps * seg / total_span)) : 0;
        const double dt = m > 0 ? (tb - ta) / m : 0.0;
        for (int64_t i = 0; i < m; ++i) {
          x = fixed_step(f, x, ta + i * dt, dt, config.kind, st);
          st.accepted += 1;
          step_done(ta + (i + 1) * dt);
        }
      }
      pieces[k].push_back(x);
    }
    if (n == 0) break;
  }
  std::vector<torch::Tensor> out;
  for (auto& p : pieces) out.push_back(torch::cat(p, 0));
  if (stats) *stats = st;
  return out;
}

bool exact_divergence(const DensityConfig& density, int64_t dim) {
  switch (density.divergence) {
    case DivergenceKind::Exact:
      return true;
    case DivergenceKind::Hutchinson:
      return false;
    case DivergenceKind::Auto:
      return dim <= density.probes;
  }
  throw std::invalid_argument("exact_divergence: unknown divergence kind");
}

DivergencePath integrate_divergence(const std::function<VelocityFn(int64_t, int64_t)>& chunk_fn,
                                    const torch::Tensor& x0, double t_from, double t_to, const SolverConfig& config,
                                    const DensityConfig& density, OdeStats* stats) {
  if (x0.dim() != 2) throw std::invalid_argument("integrate_divergence: cells must be a matrix");
  if (density.probes < 1) throw std::invalid_argument("integrate_divergence: probes must be >= 1");
  const int64_t n = x0.size(0), d = x0.size(1);
  const bool exact = exact_divergence(density, d);
  // Rademacher probes for all rows at once, so that a row's estimate does not depend on chunk_size.
  torch::Tensor probes;
  if (!exact) {
    auto gen = at::detail::createCPUGenerator(density.seed);
    probes = (torch::randint(0, 2, {density.probes, n, d}, gen, torch::kFloat) * 2 - 1).to(x0.options());
  }
  // The augmented state [x, a] with da/dt = div v(x, t).
  auto augmented = [&](int64_t begin, int64_t end) -> VelocityFn {
    VelocityFn f = chunk_fn(begin, end);
    torch::Tensor e = exact ? torch::Tensor() : probes.slice(1, begin, end);
    return [f, e, d, exact](const torch::Tensor& z, double t) {
      torch::AutoGradMode grad_mode(true);  // integrate() runs without gradients
      auto x = z.slice(1, 0, d).detach().requires_grad_(true);
      auto v = f(x, t);
      auto div = torch::zeros({x.size(0)}, z.options());
      // A field that does not depend on x (no graph) has divergence 0.
      const int64_t passes = !v.requires_grad() ? 0 : exact ? d : e.size(0);
      for (int64_t k = 0; k < passes; ++k) {
        // Exact: row sums of dv_k/dx, keeping column k. Hutchinson: e_k' J e_k.
        auto out = exact ? v.select(1, k).sum() : (v * e[k]).sum();
        auto g = torch::autograd::grad({out}, {x}, {}, /*retain_graph=*/k + 1 < passes, /*create_graph=*/false,
                                       /*allow_unused=*/true)[0];
        if (g.defined()) div += exact ? g.select(1, k) : (g * e[k]).sum(1);
      }
      if (!exact) div /= static_cast<double>(e.size(0));
      return torch::cat({v.detach(), div.detach().unsqueeze(1)}, 1);
    };
  };
  auto z0 = torch::cat({x0, torch::zeros({n, 1}, x0.options())}, 1);
  auto states = integrate(augmented, z0, {t_from, t_to}, config, stats);
  return {states[1].slice(1, 0, d).contiguous(), states[1].select(1, d).contiguous()};
}

}  // namespace popflow

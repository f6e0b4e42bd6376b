#include "paths.h"

#include <cmath>

namespace popflow {

bool gaussian_source(PathKind kind) {
  return kind == PathKind::TargetFM || kind == PathKind::VPCosine || kind == PathKind::VPLinear;
}

PathSample sample_path(const PathConfig& path, const torch::Tensor& x0, const torch::Tensor& x1,
                       const torch::Tensor& t) {
  auto tt = t.reshape({-1, 1});
  auto eps = torch::randn_like(x1);
  switch (path.kind) {
    case PathKind::ICFM: {
      auto mu = tt * x1 + (1 - tt) * x0;
      return {mu + path.sigma * eps, x1 - x0};
    }
    case PathKind::SBCFM: {
      // Brownian bridge: sigma_t = sigma sqrt(t (1 - t)); the target adds the
      // bridge's pull back towards the mean path. t is kept off {0, 1}, where
      // the drift term is 0/0.
      auto tc = tt.clamp(1e-5, 1 - 1e-5);
      auto mu = tc * x1 + (1 - tc) * x0;
      auto sigma_t = path.sigma * torch::sqrt(tc * (1 - tc));
      auto xt = mu + sigma_t * eps;
      auto drift = (1 - 2 * tc) / (2 * tc * (1 - tc));
      return {xt, drift * (xt - mu) + x1 - x0};
    }
    case PathKind::TargetFM: {
      // Lipman et al.: Gaussian source, mu_t = t x1, sigma_t = 1 - (1 - sigma_min) t.
      const double s = 1 - path.sigma_min;
      auto xt = tt * x1 + (1 - s * tt) * eps;
      return {xt, (x1 - s * xt) / (1 - s * tt)};
    }
    case PathKind::VPCosine: {
      // Variance preserving, cosine schedule: alpha_t = sin(pi t / 2) and
      // sigma_t = cos(pi t / 2), so alpha_t^2 + sigma_t^2 = 1 all along.
      const double w = M_PI / 2;
      auto a = torch::sin(w * tt), s = torch::cos(w * tt);
      return {a * x1 + s * eps, w * (s * x1 - a * eps)};
    }
    case PathKind::VPLinear: {
      // Variance preserving, linear schedule in diffusion time s = 1 - t:
      // alpha = exp(-T(s) / 2), T(s) = integral of beta, sigma = sqrt(1 - alpha^2).
      // The target is d alpha/dt x1 + d sigma/dt eps; sigma -> 0 as t -> 1 makes
      // d sigma/dt infinite there, so s is kept >= 1e-5 (as SB-CFM keeps t off 0, 1).
      auto s = (1 - tt).clamp_min(1e-5);
      auto beta = kVPBetaMin + s * (kVPBetaMax - kVPBetaMin);
      auto a = torch::exp(-0.5 * (kVPBetaMin * s + 0.5 * (kVPBetaMax - kVPBetaMin) * s * s));
      auto sd = torch::sqrt(1 - a * a);
      auto da = 0.5 * beta * a;  // d alpha / dt (= -d alpha / ds)
      return {a * x1 + sd * eps, da * x1 - (a * da / sd) * eps};
    }
  }
  throw std::invalid_argument("sample_path: unknown path kind");
}

}  // namespace popflow

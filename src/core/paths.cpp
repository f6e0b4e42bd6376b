#include "paths.h"

namespace popflow {

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
  }
  throw std::invalid_argument("sample_path: unknown path kind");
}

}  // namespace popflow

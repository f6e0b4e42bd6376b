#include "paths.h"

#include <cmath>
#include <string>

#include "config_text.h"

namespace popflow {

bool gaussian_source(PathKind kind) {
  return kind == PathKind::TargetFM || kind == PathKind::VPCosine || kind == PathKind::VPLinear;
}

std::string source_problem(const SourceConfig& source, PathKind path, int64_t dim) {
  if (source.kind == SourceKind::Gaussian) return "";
  if (!gaussian_source(path))
    return std::string("a ") + method_name(source.kind) + " source needs a generative path (targetfm, vp_cosine, " +
           "vp_linear), not '" + method_name(path) + "'";
  if (source.kind == SourceKind::ZINB && source.rows != 3)
    return "a zinb source has 3 rows (mu, theta, pi), not " + std::to_string(source.rows);
  if (source.rows < 1) return "an empirical source needs at least one cell";
  if (static_cast<int64_t>(source.values.size()) != source.rows * dim)
    return "the source holds " + std::to_string(source.values.size()) + " values, not " +
           std::to_string(source.rows) + " rows of " + std::to_string(dim) + " features";
  for (double v : source.values)
    if (!std::isfinite(v)) return "the source holds NA, NaN or infinite values";
  if (source.kind == SourceKind::ZINB) {
    for (int64_t j = 0; j < dim; ++j) {
      const double mu = source.values[j], theta = source.values[dim + j], pi = source.values[2 * dim + j];
      if (!(mu >= 0 && theta > 0 && pi >= 0 && pi < 1))
        return "zinb parameters of feature " + std::to_string(j + 1) + " are out of range (mu >= 0, theta > 0, " +
               "0 <= pi < 1)";
    }
    if (!(source.size_factor > 0)) return "the zinb size factor must be > 0";
    if (!(source.log_base == 0 || source.log_base > 1)) return "the zinb log base must be 0 (none) or > 1";
  }
  return "";
}

SourceSampler::SourceSampler(const SourceConfig& source, int64_t dim, const torch::TensorOptions& options)
    : kind_(source.kind), dim_(dim), options_(options), size_factor_(source.size_factor),
      log_base_(source.log_base) {
  if (kind_ == SourceKind::Gaussian) return;
  values_ = torch::tensor(source.values, torch::kDouble).reshape({source.rows, dim}).to(options);
}

torch::Tensor SourceSampler::draw(int64_t n) const {
  switch (kind_) {
    case SourceKind::Gaussian:
      return torch::randn({n, dim_}, options_);
    case SourceKind::Empirical:
      return values_.index_select(0, torch::randint(values_.size(0), {n}, options_.dtype(torch::kLong)));
    case SourceKind::ZINB: {
      // Negative binomial as a gamma-Poisson mixture, then the zero inflation.
      auto mu = values_[0].expand({n, dim_}), theta = values_[1].expand({n, dim_});
      auto rate = torch::_standard_gamma(theta.contiguous()) * (mu / theta);
      auto counts = torch::poisson(rate);
      counts = counts * (torch::rand({n, dim_}, options_) >= values_[2]).to(options_.dtype());
      auto x = counts / size_factor_;
      return log_base_ > 0 ? torch::log1p(x) / std::log(log_base_) : x;
    }
  }
  throw std::invalid_argument("SourceSampler: unknown source kind");
}

PathSample sample_path(const PathConfig& path, const torch::Tensor& x0, const torch::Tensor& x1,
                       const torch::Tensor& t, bool drawn_source) {
  auto tt = t.reshape({-1, 1});
  auto eps = torch::randn_like(x1);
  // The Gaussian-source paths' noise (the draw above keeps the random stream of Gaussian fits as it was).
  const auto& noise = drawn_source ? x0 : eps;
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
      auto xt = tt * x1 + (1 - s * tt) * noise;
      return {xt, (x1 - s * xt) / (1 - s * tt)};
    }
    case PathKind::VPCosine: {
      // Variance preserving, cosine schedule: alpha_t = sin(pi t / 2) and
      // sigma_t = cos(pi t / 2), so alpha_t^2 + sigma_t^2 = 1 all along.
      const double w = M_PI / 2;
      auto a = torch::sin(w * tt), s = torch::cos(w * tt);
      return {a * x1 + s * noise, w * (s * x1 - a * noise)};
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
      return {a * x1 + sd * noise, da * x1 - (a * da / sd) * noise};
    }
  }
  throw std::invalid_argument("sample_path: unknown path kind");
}

}  // namespace popflow

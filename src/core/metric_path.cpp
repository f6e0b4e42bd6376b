#include "metric_path.h"

#include <algorithm>
#include <stdexcept>
#include <tuple>

namespace popflow {

torch::Tensor land_inverse_metric(const torch::Tensor& x, const torch::Tensor& ref, double bandwidth, double eps) {
  if (x.dim() != 2 || ref.dim() != 2 || x.size(1) != ref.size(1) || ref.size(0) < 1)
    throw std::invalid_argument("land_inverse_metric: x and ref must be matrices with the same columns");
  if (!(bandwidth > 0) || !(eps >= 0))
    throw std::invalid_argument("land_inverse_metric: bandwidth must be > 0 and eps >= 0");
  auto diff = ref.unsqueeze(0) - x.unsqueeze(1);  // [n, m, d]
  auto sq = diff * diff;
  auto w = torch::exp(-sq.sum(2) / (2 * bandwidth * bandwidth));  // [n, m]
  auto h = (w.unsqueeze(2) * sq).sum(1) / static_cast<double>(ref.size(0));
  return h + eps;
}

VectorField make_interpolant(const NetworkConfig& velocity_network) {
  NetworkConfig cfg = velocity_network;
  cfg.cond_dim = velocity_network.dim;  // x1 enters as conditioning
  VectorField phi(cfg);
  torch::NoGradGuard no_grad;
  for (auto& p : phi->named_parameters())
    if (p.key().rfind("output.", 0) == 0) p.value().zero_();
  return phi;
}

InterpolantSample sample_interpolant(VectorField& phi, const torch::Tensor& x0, const torch::Tensor& x1,
                                     const torch::Tensor& s, bool train) {
  auto t = s.detach().clone().requires_grad_(true);
  auto out = phi->forward(x0, t, x1);
  // d phi / d t, one row per cell: a vector-Jacobian product with a dummy
  // vector u is linear in u, so differentiating it in u gives the
  // Jacobian-vector product with ones over the cell's own t.
  auto u = torch::zeros_like(out).requires_grad_(true);
  auto vjp = torch::autograd::grad({out}, {t}, {u}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  auto dphi = torch::autograd::grad({vjp}, {u}, {torch::ones_like(vjp)}, /*retain_graph=*/train,
                                    /*create_graph=*/train)[0];
  auto tt = s.detach().reshape({-1, 1});
  auto bump = tt * (1 - tt);
  auto xt = (1 - tt) * x0 + tt * x1 + bump * out;
  auto dxt = x1 - x0 + (1 - 2 * tt) * out + bump * dphi;
  if (!train) return {xt.detach(), dxt.detach()};
  return {xt, dxt};
}

LandScale land_scale(const torch::Tensor& ref, const MetricConfig& metric) {
  torch::NoGradGuard no_grad;
  const int64_t m = ref.size(0), n = std::min<int64_t>(m, 1000);
  const auto rows = torch::linspace(0, m - 1, n, torch::TensorOptions().dtype(torch::kDouble)).round().to(torch::kLong);
  const auto probe = ref.index_select(0, rows.to(ref.device()));
  double bandwidth = metric.bandwidth;
  if (bandwidth <= 0) {
    if (m < 2) throw std::invalid_argument("metric: an interval has fewer than two reference cells");
    const int64_t k = std::min<int64_t>(10, m - 1);
    // k + 1 smallest: each probe is itself a reference cell, at distance 0.
    auto d = std::get<0>(torch::cdist(probe, ref).topk(k + 1, 1, /*largest=*/false)).select(1, k);
    bandwidth = d.median().item<double>();
    if (!(bandwidth > 0)) throw std::invalid_argument("metric: the reference cells coincide; give a bandwidth");
  }
  const double typical = land_inverse_metric(probe, ref, bandwidth, 0).mean(1).median().item<double>();
  const double eps = metric.eps * typical;
  if (!(eps > 0)) throw std::invalid_argument("metric: the metric is zero on the reference cells; give a bandwidth");
  return {bandwidth, eps};
}

torch::Tensor metric_energy(const InterpolantSample& path, const torch::Tensor& ref, const LandScale& scale) {
  auto ginv = land_inverse_metric(path.xt, ref, scale.bandwidth, scale.eps);
  return (path.dxt * path.dxt / ginv).sum(1).mean();
}

}  // namespace popflow

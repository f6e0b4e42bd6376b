// Metric flow matching's pieces (metric_path.h): the LAND metric, the
// interpolant and its time derivative, and the configuration keys.
#include <torch/torch.h>

#include "check.h"
#include "config_text.h"
#include "fixtures.h"
#include "metric_path.h"

using namespace popflow;
using namespace fixtures;

TEST_CASE("metric_path: the LAND metric is its formula, and only eps far from the cells") {
  torch::manual_seed(3);
  auto x = torch::randn({4, 3}, kD), ref = torch::randn({7, 3}, kD);
  const double bw = 0.6, eps = 0.02;
  auto got = land_inverse_metric(x, ref, bw, eps);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t k = 0; k < 3; ++k) {
      double h = 0;
      for (int64_t j = 0; j < 7; ++j) {
        double d2 = 0;
        for (int64_t l = 0; l < 3; ++l) d2 += std::pow(ref[j][l].item<double>() - x[i][l].item<double>(), 2);
        h += std::exp(-d2 / (2 * bw * bw)) * std::pow(ref[j][k].item<double>() - x[i][k].item<double>(), 2);
      }
      PF_CHECK_NEAR(got[i][k].item<double>(), h / 7 + eps, 1e-12);
    }
  PF_CHECK_NEAR(max_abs(land_inverse_metric(torch::full({1, 3}, 100.0, kD), ref, bw, eps) - eps), 0.0, 1e-15);
}

TEST_CASE("metric_path: the interpolant starts as the straight line; its derivative is d x_t / dt") {
  torch::manual_seed(4);
  NetworkConfig net;
  net.dim = 2;
  net.width = 16;
  net.depth = 2;
  VectorField phi = make_interpolant(net);
  phi->to(torch::kDouble);
  auto x0 = torch::randn({20, 2}, kD), x1 = torch::randn({20, 2}, kD) + 1;
  auto s = torch::rand({20}, kD);
  auto straight = sample_interpolant(phi, x0, x1, s, false);
  auto tt = s.unsqueeze(1);
  PF_CHECK_NEAR(max_abs(straight.xt - ((1 - tt) * x0 + tt * x1)), 0.0, 1e-12);
  PF_CHECK_NEAR(max_abs(straight.dxt - (x1 - x0)), 0.0, 1e-12);
  // With a non-zero phi: the autograd derivative against central differences.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : phi->parameters()) p.normal_(0, 0.5);
  }
  auto path = sample_interpolant(phi, x0, x1, s, false);
  const double h = 1e-6;
  auto up = sample_interpolant(phi, x0, x1, s + h, false).xt, down = sample_interpolant(phi, x0, x1, s - h, false).xt;
  PF_CHECK(max_abs(path.dxt - (x1 - x0)) > 0.1);  // phi bends the path
  PF_CHECK_NEAR(max_abs(path.dxt - (up - down) / (2 * h)), 0.0, 1e-6);
  // Trained: the energy has a gradient for phi's parameters.
  auto trained = sample_interpolant(phi, x0, x1, s, true);
  MetricConfig metric;
  auto e = metric_energy(trained, x1, land_scale(x1, metric));
  e.backward();
  double g = 0;
  for (auto& p : phi->parameters()) g += p.grad().abs().sum().item<double>();
  PF_CHECK(g > 0);
}

TEST_CASE("metric_path: the metric keys round-trip, and flows without them keep their text") {
  FlowConfig c;
  const std::string plain = flow_config_to_text(c);
  PF_CHECK(plain.find("metric") == std::string::npos);
  c.metric.enabled = true;
  c.metric.bandwidth = 0.25;
  c.metric.eps = 0.05;
  c.metric.cells = 300;
  c.metric.interpolant_steps = 42;
  FlowConfig back = flow_config_from_text(flow_config_to_text(c));
  PF_CHECK(back.metric.enabled);
  PF_CHECK(back.metric.bandwidth == 0.25 && back.metric.eps == 0.05);
  PF_CHECK(back.metric.cells == 300 && back.metric.interpolant_steps == 42);
  PF_CHECK(!flow_config_from_text(plain).metric.enabled);
  PF_CHECK_THROWS_AS(flow_config_from_text(plain + "metric=rbf\n"), std::runtime_error);
}

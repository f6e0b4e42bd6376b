// Conditional probability paths (paths.h): locations and regression targets.
#include <torch/torch.h>

#include <cmath>
#include <tuple>

#include "check.h"
#include "fixtures.h"
#include "paths.h"

using namespace popflow;
using namespace fixtures;

TEST_CASE("sample_path: ICFM with sigma 0 is the straight line") {
  torch::manual_seed(10);
  PathConfig p;
  p.kind = PathKind::ICFM;
  p.sigma = 0.0;
  auto x0 = torch::randn({50, 3}, kD), x1 = torch::randn({50, 3}, kD) + 2;
  auto t = torch::rand({50}, kD);
  auto s = sample_path(p, x0, x1, t);
  auto tt = t.unsqueeze(1);
  PF_CHECK_NEAR(max_abs(s.xt - ((1 - tt) * x0 + tt * x1)), 0.0, 1e-12);
  PF_CHECK_NEAR(max_abs(s.ut - (x1 - x0)), 0.0, 1e-12);
  // With sigma > 0 the noise is isotropic with standard deviation sigma.
  p.sigma = 0.5;
  auto big0 = torch::zeros({100000, 2}, kD), big1 = torch::ones({100000, 2}, kD);
  auto tb = torch::full({100000}, 0.25, kD);
  auto sb = sample_path(p, big0, big1, tb);
  auto resid = sb.xt - 0.25;
  PF_CHECK_NEAR(resid.mean().item<double>(), 0.0, 0.01);
  PF_CHECK_NEAR(resid.std().item<double>(), 0.5, 0.01);
  PF_CHECK_NEAR(max_abs(sb.ut - 1.0), 0.0, 1e-15);
}

TEST_CASE("sample_path: SBCFM bridge variance and target") {
  torch::manual_seed(11);
  PathConfig p;
  p.kind = PathKind::SBCFM;
  p.sigma = 0.8;
  const int64_t n = 200000;
  auto x0 = torch::randn({n, 1}, kD), x1 = torch::randn({n, 1}, kD) * 0.5 + 3;
  for (double tv : {0.1, 0.3, 0.5, 0.9}) {
    auto t = torch::full({n}, tv, kD);
    auto s = sample_path(p, x0, x1, t);
    auto mu = (1 - tv) * x0 + tv * x1;
    const double var = (s.xt - mu).var().item<double>();
    const double expect = p.sigma * p.sigma * tv * (1 - tv);
    PF_CHECK_MSG(std::fabs(var / expect - 1) < 0.03, "t " << tv << " var " << var << " expected " << expect);
    // ut = (1 - 2t) / (2 t (1 - t)) (xt - mu) + x1 - x0
    auto ut = (1 - 2 * tv) / (2 * tv * (1 - tv)) * (s.xt - mu) + x1 - x0;
    PF_CHECK_NEAR(max_abs(s.ut - ut), 0.0, 1e-9);
  }
  // The end points are finite (t is kept off {0, 1}) and pinned to x0 / x1.
  for (double tv : {0.0, 1.0}) {
    auto s = sample_path(p, x0.slice(0, 0, 100), x1.slice(0, 0, 100), torch::full({100}, tv, kD));
    PF_CHECK(torch::isfinite(s.xt).all().item<bool>() && torch::isfinite(s.ut).all().item<bool>());
    auto end = tv == 0 ? x0.slice(0, 0, 100) : x1.slice(0, 0, 100);
    PF_CHECK_NEAR(max_abs(s.xt - end), 0.0, 0.05);
  }
}

TEST_CASE("sample_path: TargetFM (Lipman) path and target") {
  torch::manual_seed(12);
  PathConfig p;
  p.kind = PathKind::TargetFM;
  p.sigma_min = 0.01;
  const double s_ = 1 - p.sigma_min;
  const int64_t n = 100000;
  auto x0 = torch::full({n, 2}, 100.0, kD);  // ignored: Gaussian source
  auto x1 = torch::randn({n, 2}, kD) * 0.3 + 5;
  auto t = torch::rand({n}, kD) * 0.999;
  auto out = sample_path(p, x0, x1, t);
  auto tt = t.unsqueeze(1);
  auto eps = (out.xt - tt * x1) / (1 - s_ * tt);
  PF_CHECK_NEAR(eps.mean().item<double>(), 0.0, 0.02);
  PF_CHECK_NEAR(eps.std().item<double>(), 1.0, 0.02);
  PF_CHECK_NEAR(max_abs(out.ut - (x1 - s_ * out.xt) / (1 - s_ * tt)), 0.0, 1e-9);
  PF_CHECK_NEAR(max_abs(out.ut - (x1 - s_ * eps)), 0.0, 1e-8);
  // At t = 0 the sample is standard normal, whatever x0 and x1 are.
  auto at0 = sample_path(p, x0, x1, torch::zeros({n}, kD));
  PF_CHECK_NEAR(at0.xt.mean().item<double>(), 0.0, 0.02);
  PF_CHECK_NEAR(at0.xt.std().item<double>(), 1.0, 0.02);
  // At t = 1 it is x1 up to sigma_min.
  auto at1 = sample_path(p, x0, x1, torch::ones({n}, kD));
  PF_CHECK_NEAR((at1.xt - x1).std().item<double>(), p.sigma_min, 0.001);
}

TEST_CASE("sample_path: variance-preserving paths (cosine and linear schedules)") {
  torch::manual_seed(15);
  const int64_t n = 100000;
  auto x0 = torch::full({n, 2}, 100.0, kD);  // ignored: Gaussian source
  auto x1 = torch::randn({n, 2}, kD) * 0.3 + 5;
  for (auto kind : {PathKind::VPCosine, PathKind::VPLinear}) {
    PathConfig p;
    p.kind = kind;
    PF_CHECK(gaussian_source(kind));
    // alpha_t, sigma_t and their time derivatives, written out.
    auto schedule = [&](const torch::Tensor& t) {
      if (kind == PathKind::VPCosine) {
        const double w = M_PI / 2;
        return std::make_tuple(torch::sin(w * t), torch::cos(w * t), w * torch::cos(w * t), -w * torch::sin(w * t));
      }
      auto s = 1 - t;
      auto T = 0.1 * s + 0.5 * 19.9 * s * s;
      auto a = torch::exp(-0.5 * T), sd = torch::sqrt(1 - a * a);
      auto da = 0.5 * (0.1 + 19.9 * s) * a;
      return std::make_tuple(a, sd, da, -a * da / sd);
    };
    auto t = torch::rand({n, 1}, kD) * 0.99;
    auto out = sample_path(p, x0, x1, t.squeeze(1));
    auto [a, sd, da, dsd] = schedule(t);
    PF_CHECK_NEAR(max_abs(a * a + sd * sd - 1), 0.0, 1e-12);  // variance preserving
    auto eps = (out.xt - a * x1) / sd;
    PF_CHECK_NEAR(eps.mean().item<double>(), 0.0, 0.02);
    PF_CHECK_NEAR(eps.std().item<double>(), 1.0, 0.02);
    PF_CHECK_NEAR(max_abs(out.ut - (da * x1 + dsd * eps)), 0.0, 1e-6);
    // The target is the time derivative of the path for fixed noise: a finite difference agrees.
    const double h = 1e-6;
    auto ahead = std::get<0>(schedule(t + h)) * x1 + std::get<1>(schedule(t + h)) * eps;
    PF_CHECK_NEAR(max_abs((ahead - out.xt) / h - out.ut), 0.0, 1e-3 * (1 + max_abs(out.ut)));
    // At t = 0 the sample is (close to) standard normal; at t = 1 it is x1.
    auto at0 = sample_path(p, x0, x1, torch::zeros({n}, kD));
    PF_CHECK_NEAR(at0.xt.mean().item<double>(), 0.0, kind == PathKind::VPCosine ? 0.02 : 0.05);
    PF_CHECK_NEAR(at0.xt.std().item<double>(), 1.0, 0.02);
    auto at1 = sample_path(p, x0, x1, torch::ones({n}, kD));
    PF_CHECK_NEAR(max_abs(at1.xt - x1), 0.0, kind == PathKind::VPCosine ? 1e-12 : 0.1);
    PF_CHECK(torch::isfinite(at1.ut).all().item<bool>());
  }
  PF_CHECK(gaussian_source(PathKind::TargetFM) && !gaussian_source(PathKind::ICFM) &&
           !gaussian_source(PathKind::SBCFM));
}

TEST_CASE("SourceSampler: ZINB counts, their transform, and empirical rows") {
  SourceConfig zinb;
  zinb.kind = SourceKind::ZINB;
  zinb.rows = 3;
  // mu, theta, pi of two features: NB(4, 2) with 30% extra zeros; Poisson-like NB(1, 1e4).
  zinb.values = {4.0, 1.0, 2.0, 1e4, 0.3, 0.0};
  PF_CHECK(source_problem(zinb, PathKind::TargetFM, 2).empty());
  PF_CHECK(!source_problem(zinb, PathKind::ICFM, 2).empty());  // a source is for generative paths
  PF_CHECK(!source_problem(zinb, PathKind::TargetFM, 3).empty());
  const auto opt = torch::TensorOptions().dtype(torch::kFloat);
  torch::manual_seed(3);
  auto c = SourceSampler(zinb, 2, opt).draw(200000).to(torch::kDouble);
  PF_CHECK(torch::equal(c, c.round()));  // counts (log_base 0, size factor 1)
  // Moments of a ZINB: mean (1 - pi) mu, P(0) = pi + (1 - pi) (theta / (theta + mu))^theta.
  auto a = c.select(1, 0), b = c.select(1, 1);
  PF_CHECK_NEAR(a.mean().item<double>(), 0.7 * 4.0, 0.03);
  PF_CHECK_NEAR((a == 0).to(torch::kDouble).mean().item<double>(), 0.3 + 0.7 * std::pow(2.0 / 6.0, 2.0), 0.005);
  PF_CHECK_NEAR(b.mean().item<double>(), 1.0, 0.01);
  PF_CHECK_NEAR(b.var().item<double>(), 1.0, 0.02);
  // The same seed draws the same cells; the transform is log(c / s + 1) / log(base).
  zinb.size_factor = 0.5;
  zinb.log_base = 2;
  torch::manual_seed(3);
  auto x = SourceSampler(zinb, 2, opt).draw(200000).to(torch::kDouble);
  PF_CHECK_NEAR(max_abs(x - torch::log2(c / 0.5 + 1)), 0.0, 1e-5);

  SourceConfig cells;
  cells.kind = SourceKind::Empirical;
  cells.rows = 3;
  cells.values = {1, 10, 2, 20, 3, 30};
  auto e = SourceSampler(cells, 2, opt).draw(1000);
  PF_CHECK(torch::equal(e.select(1, 1), 10 * e.select(1, 0)));  // whole rows
  for (double v : {1.0, 2.0, 3.0}) PF_CHECK((e.select(1, 0) == v).any().item<bool>());
  PF_CHECK(((e.select(1, 0) == 1) | (e.select(1, 0) == 2) | (e.select(1, 0) == 3)).all().item<bool>());
}

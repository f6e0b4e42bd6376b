// ODE solvers (ode.h): convergence orders, tolerances, output times, chunking.
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "check.h"
#include "fixtures.h"
#include "ode.h"

using namespace popflow;
using namespace fixtures;

namespace {

std::function<VelocityFn(int64_t, int64_t)> fixed_field(VelocityFn f) {
  return [f](int64_t, int64_t) { return f; };
}

}  // namespace

TEST_CASE("integrate: convergence orders of the fixed-step solvers") {
  torch::manual_seed(13);
  auto x0 = torch::randn({10, 2}, kD);
  auto f = fixed_field([](const torch::Tensor& x, double) { return -x; });
  auto exact = x0 * std::exp(-1.0);
  auto err = [&](SolverKind k, int64_t steps) {
    return max_abs(integrate(f, x0, {0.0, 1.0}, solver(k, steps))[1] - exact);
  };
  const double euler = err(SolverKind::Euler, 50) / err(SolverKind::Euler, 100);
  PF_CHECK_MSG(euler > 1.8 && euler < 2.2, "Euler error ratio " << euler);
  for (auto k : {SolverKind::Heun, SolverKind::Midpoint}) {
    const double r = err(k, 20) / err(k, 40);
    PF_CHECK_MSG(r > 3.5 && r < 4.5, "2nd-order error ratio " << r);
  }
  const double rk4 = err(SolverKind::RK4, 10) / err(SolverKind::RK4, 20);
  PF_CHECK_MSG(rk4 > 13 && rk4 < 19, "RK4 error ratio " << rk4);
  PF_CHECK_LE(err(SolverKind::RK4, 20), 1e-6);
}

TEST_CASE("integrate: dopri5 meets its tolerances") {
  torch::manual_seed(14);
  auto x0 = torch::randn({10, 2}, kD);
  // Rotation: x(t) = R(t) x0.
  auto rot = fixed_field([](const torch::Tensor& x, double) {
    return torch::stack({-x.select(1, 1), x.select(1, 0)}, 1);
  });
  for (double tol : {1e-4, 1e-7, 1e-10}) {
    OdeStats st;
    const double T = 3.0;
    auto out = integrate(rot, x0, {0.0, T}, solver(SolverKind::Dopri5, 0, tol), &st);
    auto ex = torch::stack({std::cos(T) * x0.select(1, 0) - std::sin(T) * x0.select(1, 1),
                            std::sin(T) * x0.select(1, 0) + std::cos(T) * x0.select(1, 1)}, 1);
    const double e = max_abs(out[1] - ex);
    PF_CHECK_MSG(e < 50 * tol, "tol " << tol << " error " << e);
    PF_CHECK(st.accepted > 0 && st.evaluations >= 6 * st.accepted);
  }
  // Decay with a time-dependent rate: x' = -t x, x(t) = x0 exp(-t^2 / 2).
  auto decay = fixed_field([](const torch::Tensor& x, double t) { return -t * x; });
  auto out = integrate(decay, x0, {0.0, 2.0}, solver(SolverKind::Dopri5, 0, 1e-9));
  PF_CHECK_NEAR(max_abs(out[1] - x0 * std::exp(-2.0)), 0.0, 1e-7);
  // max_steps is enforced.
  SolverConfig tight = solver(SolverKind::Dopri5, 0, 1e-12);
  tight.max_steps = 3;
  PF_CHECK_THROWS_AS(integrate(rot, x0, {0.0, 10.0}, tight), std::runtime_error);
  // Non-finite velocities are reported, not returned.
  auto bad = fixed_field([](const torch::Tensor& x, double) { return x * std::nan(""); });
  PF_CHECK_THROWS_AS(integrate(bad, x0, {0.0, 1.0}, solver(SolverKind::Dopri5)), std::runtime_error);
}

TEST_CASE("integrate: output times are hit exactly, forwards and backwards") {
  auto x0 = torch::arange(6, kD).reshape({3, 2});
  auto one = fixed_field([](const torch::Tensor& x, double) { return torch::ones_like(x); });
  const std::vector<double> fwd{0.0, 0.137, 0.5, 0.51, 1.9, 2.5}, bwd{2.5, 1.1, 0.3, -0.2};
  for (auto k : {SolverKind::Euler, SolverKind::Heun, SolverKind::Midpoint, SolverKind::RK4, SolverKind::Dopri5}) {
    for (const auto* times : {&fwd, &bwd}) {
      auto out = integrate(one, x0, *times, solver(k, 7));
      PF_CHECK(out.size() == times->size());
      PF_CHECK(torch::equal(out[0], x0));
      for (size_t i = 0; i < times->size(); ++i)
        PF_CHECK_NEAR(max_abs(out[i] - (x0 + ((*times)[i] - times->front()))), 0.0, 1e-12);
    }
  }
  // A velocity that depends on t only: x(t) = x0 + sin(t).
  auto cosine = fixed_field([](const torch::Tensor& x, double t) { return torch::full_like(x, std::cos(t)); });
  auto out = integrate(cosine, x0, fwd, solver(SolverKind::Dopri5, 0, 1e-10));
  for (size_t i = 0; i < fwd.size(); ++i) PF_CHECK_NEAR(max_abs(out[i] - (x0 + std::sin(fwd[i]))), 0.0, 1e-8);
  // A repeated time gives the same state.
  auto rep = integrate(cosine, x0, {0.0, 0.5, 0.5, 1.0}, solver(SolverKind::Dopri5, 0, 1e-10));
  PF_CHECK(torch::equal(rep[1], rep[2]));
}

TEST_CASE("integrate: forward then backward returns to the start") {
  torch::manual_seed(15);
  auto x0 = torch::randn({20, 2}, kD);
  auto f = fixed_field([](const torch::Tensor& x, double t) {
    return torch::stack({torch::sin(x.select(1, 1)) + t, -x.select(1, 0) * 0.5}, 1);
  });
  {
    auto there = integrate(f, x0, {0.0, 1.5}, solver(SolverKind::Dopri5, 0, 1e-10))[1];
    PF_CHECK(max_abs(there - x0) > 0.1);
    auto back = integrate(f, there, {1.5, 0.0}, solver(SolverKind::Dopri5, 0, 1e-10))[1];
    PF_CHECK_NEAR(max_abs(back - x0), 0.0, 1e-7);
  }
  {
    auto there = integrate(f, x0, {0.0, 1.5}, solver(SolverKind::RK4, 200))[1];
    auto back = integrate(f, there, {1.5, 0.0}, solver(SolverKind::RK4, 200))[1];
    PF_CHECK_NEAR(max_abs(back - x0), 0.0, 1e-7);
  }
}

TEST_CASE("integrate: chunking matches one chunk and follows the rows") {
  torch::manual_seed(16);
  const int64_t n = 103;
  auto x0 = torch::randn({n, 3}, kD);
  auto f = fixed_field([](const torch::Tensor& x, double t) { return -x + 0.5 * torch::sin(2 * x) + std::sin(3 * t); });
  const std::vector<double> times{0.0, 0.4, 1.0};
  for (auto k : {SolverKind::Euler, SolverKind::RK4}) {
    SolverConfig one = solver(k, 17), many = solver(k, 17);
    many.chunk_size = 10;
    OdeStats s1, s2;
    auto a = integrate(f, x0, times, one, &s1), b = integrate(f, x0, times, many, &s2);
    for (size_t i = 0; i < times.size(); ++i) PF_CHECK(torch::equal(a[i], b[i]));
    PF_CHECK(s2.evaluations == 11 * s1.evaluations);  // 11 chunks, same steps each
  }
  {
    // Dopri5 adapts its steps per chunk, so results agree to tolerance, not bit for bit.
    SolverConfig one = solver(SolverKind::Dopri5, 0, 1e-9), many = one;
    many.chunk_size = 10;
    auto a = integrate(f, x0, times, one), b = integrate(f, x0, times, many);
    for (size_t i = 0; i < times.size(); ++i) PF_CHECK_NEAR(max_abs(a[i] - b[i]), 0.0, 1e-7);
  }
  // chunk_fn gets the right row ranges: velocity = row index.
  auto rows = torch::arange(n, kD).unsqueeze(1);
  std::vector<std::pair<int64_t, int64_t>> seen;
  auto by_row = [&](int64_t begin, int64_t end) -> VelocityFn {
    seen.push_back({begin, end});
    auto r = rows.slice(0, begin, end);
    return [r](const torch::Tensor& x, double) { return r.expand_as(x); };
  };
  SolverConfig cfg = solver(SolverKind::Euler, 4);
  cfg.chunk_size = 25;
  auto out = integrate(by_row, x0, {0.0, 2.0}, cfg);
  PF_CHECK_NEAR(max_abs(out[1] - (x0 + 2.0 * rows)), 0.0, 1e-12);
  PF_CHECK(seen.size() == 5 && seen.front().first == 0 && seen.back().second == n);
  // Bad configurations are rejected.
  cfg.chunk_size = 0;
  PF_CHECK_THROWS_AS(integrate(by_row, x0, {0.0, 1.0}, cfg), std::invalid_argument);
  PF_CHECK_THROWS_AS(integrate(by_row, x0, {}, solver(SolverKind::Euler)), std::invalid_argument);
  // No rows: one empty state per time.
  auto empty = integrate(f, torch::zeros({0, 3}, kD), times, solver(SolverKind::RK4));
  PF_CHECK(empty.size() == 3 && empty[2].size(0) == 0 && empty[2].size(1) == 3);
}

TEST_CASE("integrate: progress is reported in order and can stop the integration") {
  torch::manual_seed(15);
  auto x0 = torch::randn({10, 2}, kD);
  auto f = fixed_field([](const torch::Tensor& x, double) { return -x; });
  for (auto kind : {SolverKind::RK4, SolverKind::Dopri5}) {
    SolverConfig cfg = solver(kind, 8);
    cfg.chunk_size = 4;  // three chunks: the fraction counts cells and time
    std::vector<double> seen;
    auto out = integrate(f, x0, {0.0, 0.5, 1.0}, cfg, nullptr, [&](double fraction) {
      seen.push_back(fraction);
      return true;
    });
    PF_CHECK(!seen.empty());
    for (size_t i = 1; i < seen.size(); ++i) PF_CHECK_LE(seen[i - 1], seen[i] + 1e-12);
    PF_CHECK_MSG(std::abs(seen.back() - 1.0) < 1e-9, "last fraction " << seen.back());
    PF_CHECK(seen.front() > 0 && seen.front() < 0.34);
    // Stopping after the third step throws Interrupted; no result is returned.
    int calls = 0;
    PF_CHECK_THROWS_AS(integrate(f, x0, {0.0, 1.0}, cfg, nullptr, [&](double) { return ++calls < 3; }),
                       Interrupted);
    PF_CHECK(calls == 3);
  }
}

TEST_CASE("integrate_divergence: a linear field, exact and Hutchinson") {
  torch::manual_seed(16);
  const int64_t n = 4000;
  auto x0 = torch::randn({n, 3}, kD);
  // v(x) = x A': the flow is x(t) = x0 expm(A' t), its divergence tr(A) at every point.
  auto A = torch::tensor({{-0.5, 0.8, 0.0}, {0.3, 0.2, -0.6}, {0.4, 0.0, -1.0}}, kD);
  const double trace = A.trace().item<double>();
  auto f = fixed_field([A](const torch::Tensor& x, double) { return torch::matmul(x, A.t()); });
  const double T = 0.7;
  auto expected_x = torch::matmul(x0, torch::linalg_matrix_exp(A * T).t());
  DensityConfig exact;
  exact.divergence = DivergenceKind::Exact;
  for (auto k : {SolverKind::Dopri5, SolverKind::RK4}) {
    auto out = integrate_divergence(f, x0, 0.0, T, solver(k, 50, 1e-9), exact);
    PF_CHECK_NEAR(max_abs(out.x - expected_x), 0.0, 1e-6);
    PF_CHECK_NEAR(max_abs(out.divergence - trace * T), 0.0, 1e-9);
    // Backwards, the integral changes sign and the state returns.
    auto back = integrate_divergence(f, out.x, T, 0.0, solver(k, 50, 1e-9), exact);
    PF_CHECK_NEAR(max_abs(back.x - x0), 0.0, 1e-6);
    PF_CHECK_NEAR(max_abs(back.divergence + trace * T), 0.0, 1e-9);
  }
  // Hutchinson: unbiased (the mean over cells), but not exact per cell for a non-diagonal Jacobian.
  DensityConfig hutch;
  hutch.divergence = DivergenceKind::Hutchinson;
  hutch.probes = 2;
  auto est = integrate_divergence(f, x0, 0.0, T, solver(SolverKind::RK4, 20), hutch);
  PF_CHECK_NEAR(max_abs(est.x - expected_x), 0.0, 1e-6);
  // e'Ae - tr(A) = sum over i != j of A_ij e_i e_j: variance sum_{i<j} (A_ij + A_ji)^2 / probes.
  const double sd = std::sqrt((std::pow(0.8 + 0.3, 2) + std::pow(0.4, 2) + std::pow(0.6, 2)) / hutch.probes) * T;
  PF_CHECK_NEAR(est.divergence.mean().item<double>(), trace * T, 4 * sd / std::sqrt(double(n)));
  PF_CHECK_NEAR(est.divergence.std().item<double>(), sd, 0.1 * sd);
  // More probes, less spread; the same seed gives the same probes, whatever the chunk size.
  hutch.probes = 32;
  auto many = integrate_divergence(f, x0, 0.0, T, solver(SolverKind::RK4, 20), hutch);
  PF_CHECK_NEAR(many.divergence.std().item<double>(), sd * std::sqrt(2.0 / 32), 0.1 * sd * std::sqrt(2.0 / 32));
  SolverConfig chunked = solver(SolverKind::RK4, 20);
  chunked.chunk_size = 333;
  PF_CHECK(torch::equal(integrate_divergence(f, x0, 0.0, T, chunked, hutch).divergence, many.divergence));
  hutch.seed = 2;
  PF_CHECK(!torch::equal(integrate_divergence(f, x0, 0.0, T, chunked, hutch).divergence, many.divergence));
  // A diagonal Jacobian: Rademacher probes are exact (e_i^2 = 1).
  auto g = fixed_field([](const torch::Tensor& x, double t) { return -t * x; });
  hutch.probes = 1;
  auto diag = integrate_divergence(g, x0, 0.0, 1.0, solver(SolverKind::Dopri5, 0, 1e-9), hutch);
  PF_CHECK_NEAR(max_abs(diag.divergence + 1.5), 0.0, 1e-7);  // integral of -3 t from 0 to 1
  // A field that does not depend on x has divergence 0.
  auto one = fixed_field([](const torch::Tensor& x, double) { return torch::ones_like(x); });
  PF_CHECK_NEAR(max_abs(integrate_divergence(one, x0, 0.0, 1.0, solver(SolverKind::Euler, 4), exact).divergence), 0.0,
                0.0);
}

TEST_CASE("integrate_divergence: auto is exact up to `probes` dimensions") {
  DensityConfig c;
  c.probes = 4;
  PF_CHECK(exact_divergence(c, 4) && !exact_divergence(c, 5));
  c.divergence = DivergenceKind::Exact;
  PF_CHECK(exact_divergence(c, 100));
  c.divergence = DivergenceKind::Hutchinson;
  PF_CHECK(!exact_divergence(c, 1));
}

// Minibatch couplings (coupling.h): exact OT pairing and resampling, Sinkhorn plans.
#include <torch/torch.h>

#include <limits>
#include <random>
#include <set>

#include "check.h"
#include "coupling.h"
#include "fixtures.h"

using namespace popflow;
using namespace fixtures;

TEST_CASE("couple: exact OT permutation re-pairs x1 and never costs more") {
  torch::manual_seed(6);
  std::mt19937_64 rng(6);
  CouplingConfig cfg;
  cfg.kind = CouplingKind::ExactOT;
  cfg.mode = OTMode::Permutation;
  for (int rep = 0; rep < 5; ++rep) {
    const int64_t n = 24;
    auto x0 = torch::randn({n, 3}, kD), x1 = torch::randn({n, 3}, kD) * 2 + 0.5;
    auto pair = couple(cfg, x0, x1, 0.1, rng);
    PF_CHECK(torch::equal(pair.x0, x0));
    PF_CHECK(pair.x1.size(0) == n);
    // Every output row is an input row and every input row is used once.
    std::set<int64_t> used;
    for (int64_t i = 0; i < n; ++i) {
      auto match = (x1 == pair.x1[i]).all(1).nonzero();
      PF_CHECK(match.size(0) == 1);
      if (match.size(0) == 1) used.insert(match[0][0].item<int64_t>());
    }
    PF_CHECK(static_cast<int64_t>(used.size()) == n);
    const double ot = (pair.x0 - pair.x1).pow(2).sum().item<double>();
    const double indep = (x0 - x1).pow(2).sum().item<double>();
    PF_CHECK_LE(ot, indep + 1e-9);
    // And it is the exact optimum.
    auto plan = exact_plan(x0, x1);
    PF_CHECK_NEAR(ot / n, (plan * squared_cost(x0, x1)).sum().item<double>(), 1e-9);
  }
}

TEST_CASE("couple: independent passes through, resampling draws input rows") {
  torch::manual_seed(7);
  std::mt19937_64 rng(7);
  auto x0 = torch::randn({16, 2}), x1 = torch::randn({16, 2}) + 3;
  CouplingConfig ind;
  auto p = couple(ind, x0, x1, 0.1, rng);
  PF_CHECK(torch::equal(p.x0, x0) && torch::equal(p.x1, x1));
  for (auto kind : {CouplingKind::ExactOT, CouplingKind::Sinkhorn}) {
    CouplingConfig cfg;
    cfg.kind = kind;
    cfg.mode = OTMode::Resample;
    auto q = couple(cfg, x0, x1, 0.5, rng);
    PF_CHECK(q.x0.size(0) == 16 && q.x1.size(0) == 16);
    for (int64_t i = 0; i < 16; ++i) {
      PF_CHECK((x0 == q.x0[i]).all(1).any().item<bool>());
      PF_CHECK((x1 == q.x1[i]).all(1).any().item<bool>());
    }
  }
}

TEST_CASE("sinkhorn_plan: uniform marginals") {
  torch::manual_seed(8);
  auto x0 = torch::randn({20, 2}, kD), x1 = torch::randn({30, 2}, kD) + 0.5;
  for (double reg : {2.0, 0.5, 0.1}) {
    auto plan = sinkhorn_plan(x0, x1, reg, 2000);
    PF_CHECK(torch::isfinite(plan).all().item<bool>());
    PF_CHECK_NEAR(max_abs(plan.sum(1) - 1.0 / 20), 0.0, 1e-5);
    PF_CHECK_NEAR(max_abs(plan.sum(0) - 1.0 / 30), 0.0, 1e-5);
  }
  PF_CHECK_THROWS_AS(sinkhorn_plan(x0, x1, 0.0, 10), std::invalid_argument);
}

TEST_CASE("sinkhorn_plan: cost approaches the exact cost as reg shrinks") {
  torch::manual_seed(9);
  auto x0 = torch::randn({15, 2}, kD), x1 = torch::randn({15, 2}, kD) + 0.5;
  auto c = squared_cost(x0, x1);
  const double exact = (exact_plan(x0, x1) * c).sum().item<double>();
  double first_gap = 0, prev_gap = std::numeric_limits<double>::infinity();
  // (Log-domain Sinkhorn without epsilon scaling needs many iterations once
  // reg is far below the cost scale; below ~0.05 here 20000 are not enough
  // for 1e-5 marginals.)
  for (double reg : {1.0, 0.3, 0.1, 0.05}) {
    auto plan = sinkhorn_plan(x0, x1, reg, 20000);
    PF_CHECK(torch::isfinite(plan).all().item<bool>());
    PF_CHECK_NEAR(max_abs(plan.sum(1) - 1.0 / 15), 0.0, 1e-5);
    PF_CHECK_NEAR(max_abs(plan.sum(0) - 1.0 / 15), 0.0, 1e-5);
    const double gap = (plan * c).sum().item<double>() - exact;
    PF_CHECK_MSG(gap > -1e-4, "reg " << reg << " gap " << gap);
    PF_CHECK_MSG(gap < prev_gap, "reg " << reg << " gap " << gap << " prev " << prev_gap);
    if (reg == 1.0) first_gap = gap;
    prev_gap = gap;
  }
  PF_CHECK_MSG(prev_gap < 0.05 * first_gap, "gap " << first_gap << " -> " << prev_gap << ", exact " << exact);
}

// The plan of a direct (non-log-domain) scaling iteration in double precision:
// P = diag(u) K diag(v), K_ij = a_i b_j exp(-C_ij / reg), u = (K v)^-tau, v = (K' u)^-tau.
static torch::Tensor direct_unbalanced_plan(const torch::Tensor& x0, const torch::Tensor& x1, double mass, double reg,
                                            double reg_m) {
  auto cost = squared_cost(x0.to(torch::kDouble), x1.to(torch::kDouble));
  const int64_t n = cost.size(0), m = cost.size(1);
  const double tau = reg_m / (reg_m + reg);
  auto k = torch::exp(-cost / reg) * (1.0 / n) * (mass / m);
  auto u = torch::ones({n, 1}, kD), v = torch::ones({m, 1}, kD);
  for (int it = 0; it < 5000; ++it) {
    u = torch::pow(torch::matmul(k, v) * n, -tau);  // the 1/n of a_i is K's; u_i = exp(f_i / reg)
    v = torch::pow(torch::matmul(k.t(), u) * m / mass, -tau);
  }
  return u * k * v.t();
}

TEST_CASE("unbalanced sinkhorn: the log-domain plan equals a direct scaling computation") {
  torch::manual_seed(21);
  auto x0 = torch::randn({7, 2}, kD), x1 = torch::randn({5, 2}, kD) + 0.5;
  for (double mass : {0.5, 1.0, 2.5}) {
    for (double reg_m : {0.3, 3.0}) {
      auto plan = unbalanced_sinkhorn_plan(x0, x1, mass, 0.5, reg_m, 5000);
      auto direct = direct_unbalanced_plan(x0, x1, mass, 0.5, reg_m);
      PF_CHECK_NEAR((plan - direct).abs().max().item<double>(), 0.0, 1e-5);
    }
  }
}

TEST_CASE("unbalanced sinkhorn: a large reg_m gives the balanced marginals, a small one keeps mass local") {
  torch::manual_seed(22);
  auto x0 = torch::randn({12, 3}, kD), x1 = torch::randn({12, 3}, kD);
  auto plan = unbalanced_sinkhorn_plan(x0, x1, 1.0, 0.5, 1e5, 5000);
  PF_CHECK_NEAR((plan.sum(1) - 1.0 / 12).abs().max().item<double>(), 0.0, 1e-4);
  PF_CHECK_NEAR((plan.sum(0) - 1.0 / 12).abs().max().item<double>(), 0.0, 1e-4);
  // The balanced limit is the balanced Sinkhorn plan.
  PF_CHECK_NEAR((plan - sinkhorn_plan(x0, x1, 0.5, 5000)).abs().max().item<double>(), 0.0, 1e-4);
  PF_CHECK_THROWS_AS(unbalanced_sinkhorn_plan(x0, x1, 0.0, 0.5, 1.0, 10), std::invalid_argument);
  PF_CHECK_THROWS_AS(unbalanced_sinkhorn_plan(x0, x1, 1.0, 0.5, -1.0, 10), std::invalid_argument);
}

TEST_CASE("couple_unbalanced: growth averages the mass ratio and follows isolated regions") {
  torch::manual_seed(23);
  std::mt19937_64 rng(23);
  CouplingConfig cfg;
  cfg.kind = CouplingKind::Unbalanced;
  cfg.sinkhorn_iters = 2000;
  // Two far-apart regions, 20 source cells each; the target has 3x the cells
  // in the first region and 1x in the second: total mass ratio 2, growth 3 and 1.
  auto x0 = torch::cat({torch::randn({20, 2}, kD) * 0.3, torch::randn({20, 2}, kD) * 0.3 + 10});
  auto x1 = torch::cat({torch::randn({60, 2}, kD) * 0.3, torch::randn({20, 2}, kD) * 0.3 + 10});
  auto up = couple_unbalanced(cfg, x0, x1, 2.0, rng);
  PF_CHECK(up.x0.size(0) == 40 && up.log_growth.size(0) == 40);
  auto growth = up.log_growth.exp().to(torch::kDouble);
  auto first = up.x0.select(1, 0) < 5;
  PF_CHECK_NEAR(growth.masked_select(first).mean().item<double>(), 3.0, 0.05);
  PF_CHECK_NEAR(growth.masked_select(~first).mean().item<double>(), 1.0, 0.05);
  // Pairs stay within their region.
  PF_CHECK(((up.x0.select(1, 0) < 5) == (up.x1.select(1, 0) < 5)).all().item<bool>());
  // couple() refuses the unbalanced kind: it has no masses.
  PF_CHECK_THROWS_AS(couple(cfg, x0, x0, 0.1, rng), std::invalid_argument);
}

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

// Exact optimal transport (exact_ot.h), the exact plans built on it (coupling.h) and the
// assignment solver (assignment.h), against brute-force optima.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "assignment.h"
#include "check.h"
#include "coupling.h"
#include "exact_ot.h"
#include "fixtures.h"

using namespace popflow;
using namespace fixtures;

namespace {

std::vector<double> random_cost(int n, int m, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 10.0);
  std::vector<double> c(static_cast<size_t>(n) * m);
  for (auto& v : c) v = u(rng);
  return c;
}

// Exact optimum of the uniform n x m transport LP by exhaustive dynamic
// programming over the expanded L x L assignment problem (L = lcm(n, m)):
// source i is split into L/n unit rows, target j accepts L/m units. The LP
// has integer vertices, so this integer optimum is the LP optimum.
double brute_force_transport(const std::vector<double>& c, int n, int m) {
  const int L = std::lcm(n, m), rep = L / n, cap = L / m, base = cap + 1;
  int n_states = 1;
  for (int j = 0; j < m; ++j) n_states *= base;
  std::vector<double> dp(n_states, std::numeric_limits<double>::infinity());
  dp[0] = 0;
  for (int s = 0; s < n_states; ++s) {
    if (!std::isfinite(dp[s])) continue;
    int used = 0, rest = s;
    std::vector<int> cnt(m);
    for (int j = 0; j < m; ++j) { cnt[j] = rest % base; rest /= base; used += cnt[j]; }
    if (used == L) continue;
    const int i = used / rep;  // source of the next unit row
    int pw = 1;
    for (int j = 0; j < m; ++j, pw *= base) {
      if (cnt[j] == cap) continue;
      dp[s + pw] = std::min(dp[s + pw], dp[s] + c[static_cast<size_t>(i) * m + j]);
    }
  }
  return dp[n_states - 1] / L;
}

// Checks the plan's row sums (1/n) and column sums (1/m).
void check_marginals(const TransportPlan& plan, int n, int m, double tol) {
  std::vector<double> rows(n, 0.0), cols(m, 0.0);
  for (const auto& e : plan.entries) {
    PF_CHECK(e.i >= 0 && e.i < n && e.j >= 0 && e.j < m);
    PF_CHECK(e.mass > 0);
    rows[e.i] += e.mass;
    cols[e.j] += e.mass;
  }
  for (int i = 0; i < n; ++i) PF_CHECK_NEAR(rows[i], 1.0 / n, tol);
  for (int j = 0; j < m; ++j) PF_CHECK_NEAR(cols[j], 1.0 / m, tol);
}

double plan_cost(const TransportPlan& plan, const std::vector<double>& c, int m) {
  double s = 0;
  for (const auto& e : plan.entries) s += e.mass * c[static_cast<size_t>(e.i) * m + e.j];
  return s;
}

// A random feasible plan: a random assignment of the expanded problem.
double random_feasible_cost(const std::vector<double>& c, int n, int m, std::mt19937_64& rng) {
  const int L = std::lcm(n, m);
  std::vector<int> slots(L);
  for (int k = 0; k < L; ++k) slots[k] = k / (L / m);
  std::shuffle(slots.begin(), slots.end(), rng);
  double s = 0;
  for (int r = 0; r < L; ++r) s += c[static_cast<size_t>(r / (L / n)) * m + slots[r]];
  return s / L;
}

}  // namespace

TEST_CASE("exact_transport: square problems match brute-force permutations") {
  std::mt19937_64 rng(11);
  for (int rep = 0; rep < 25; ++rep) {
    const int n = 5;
    auto c = random_cost(n, n, rng);
    TransportPlan plan = exact_transport(c.data(), n, n);
    const double best = brute_force_assignment(c, n);
    PF_CHECK_NEAR(plan.cost, best, 1e-10);
    PF_CHECK_NEAR(plan_cost(plan, c, n), plan.cost, 1e-10);
    check_marginals(plan, n, n, 1e-12);
  }
}

TEST_CASE("exact_transport: rectangular problems match the exhaustive LP optimum") {
  std::mt19937_64 rng(12);
  for (auto [n, m] : std::vector<std::pair<int, int>>{{4, 6}, {6, 4}, {3, 5}, {1, 4}, {4, 1}}) {
    for (int rep = 0; rep < 10; ++rep) {
      auto c = random_cost(n, m, rng);
      TransportPlan plan = exact_transport(c.data(), n, m);
      check_marginals(plan, n, m, 1e-12);
      PF_CHECK_NEAR(plan_cost(plan, c, m), plan.cost, 1e-10);
      PF_CHECK_NEAR(plan.cost, brute_force_transport(c, n, m), 1e-10);
      // No feasible plan beats it.
      for (int k = 0; k < 50; ++k) PF_CHECK_LE(plan.cost, random_feasible_cost(c, n, m, rng) + 1e-12);
      double indep = std::accumulate(c.begin(), c.end(), 0.0) / (n * m);
      PF_CHECK_LE(plan.cost, indep + 1e-12);
    }
  }
}

TEST_CASE("exact_transport: rejects empty sets") {
  double c = 1;
  PF_CHECK_THROWS_AS(exact_transport(&c, 0, 1), std::invalid_argument);
  PF_CHECK_THROWS_AS(exact_transport(&c, 1, 0), std::invalid_argument);
}

TEST_CASE("exact_plan: equal sizes give a permutation matrix / n") {
  torch::manual_seed(3);
  for (int64_t n : {1, 2, 8, 33}) {
    auto x0 = torch::randn({n, 3}), x1 = torch::randn({n, 3}) + 1.0;
    auto plan = exact_plan(x0, x1);
    PF_CHECK(plan.size(0) == n && plan.size(1) == n);
    PF_CHECK_NEAR(plan.sum().item<double>(), 1.0, 1e-12);
    auto nz = (plan > 0).to(torch::kLong);
    PF_CHECK(torch::equal(nz.sum(1), torch::ones({n}, torch::kLong)));
    PF_CHECK(torch::equal(nz.sum(0), torch::ones({n}, torch::kLong)));
    PF_CHECK_NEAR(max_abs(std::get<0>(plan.max(1)) - 1.0 / n), 0.0, 1e-15);
  }
}

TEST_CASE("exact_plan: equal sizes reach the network-simplex optimum, ties included") {
  torch::manual_seed(13);
  for (int64_t n : {2, 7, 64, 200}) {
    for (bool ties : {false, true}) {
      // With ties: points on a coarse integer grid, duplicates and equal costs everywhere.
      auto x0 = ties ? torch::randint(0, 3, {n, 2}, kD) : torch::randn({n, 5}, kD);
      auto x1 = ties ? torch::randint(0, 3, {n, 2}, kD) : torch::randn({n, 5}, kD) * 1.5;
      auto cost = squared_cost(x0, x1).contiguous();
      const double reference = exact_transport(cost.data_ptr<double>(), n, n).cost;
      auto plan = exact_plan(x0, x1);
      PF_CHECK_NEAR((plan * cost).sum().item<double>(), reference, 1e-9 * std::max(1.0, reference));
      PF_CHECK_NEAR(max_abs(plan.sum(1) - 1.0 / n), 0.0, 1e-12);
      PF_CHECK_NEAR(max_abs(plan.sum(0) - 1.0 / n), 0.0, 1e-12);
    }
  }
}

TEST_CASE("exact_plan: unequal sizes have uniform marginals and the exact cost") {
  torch::manual_seed(4);
  auto x0 = torch::randn({4, 2}, kD), x1 = torch::randn({6, 2}, kD);
  auto plan = exact_plan(x0, x1);
  PF_CHECK_NEAR(max_abs(plan.sum(1) - 0.25), 0.0, 1e-12);
  PF_CHECK_NEAR(max_abs(plan.sum(0) - 1.0 / 6), 0.0, 1e-12);
  auto cost = squared_cost(x0, x1).contiguous();
  std::vector<double> c(cost.data_ptr<double>(), cost.data_ptr<double>() + cost.numel());
  PF_CHECK_NEAR((plan * cost).sum().item<double>(), brute_force_transport(c, 4, 6), 1e-10);
}

TEST_CASE("squared_cost: matches the direct formula") {
  torch::manual_seed(5);
  auto a = torch::randn({7, 4}, kD), b = torch::randn({5, 4}, kD);
  auto direct = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(2);
  PF_CHECK_NEAR(max_abs(squared_cost(a, b) - direct), 0.0, 1e-12);
  PF_CHECK(squared_cost(a, a).min().item<double>() >= 0);
}

TEST_CASE("solve_assignment: matches network simplex on random and tied problems") {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(0, 1);
  std::uniform_int_distribution<int> small(0, 3);
  for (int n : {1, 2, 3, 17, 100, 300}) {
    for (int tied = 0; tied < 2; ++tied) {
      std::vector<double> cost(static_cast<size_t>(n) * n);
      for (auto& c : cost) c = tied ? small(rng) : u(rng);
      std::vector<int> col = popflow::solve_assignment(cost.data(), n);
      std::vector<int> sorted = col;
      std::sort(sorted.begin(), sorted.end());
      bool perm = true;
      for (int i = 0; i < n; ++i) perm = perm && sorted[i] == i;
      PF_CHECK_MSG(perm, "not a permutation for n=" << n);
      double total = 0;
      for (int i = 0; i < n; ++i) total += cost[static_cast<size_t>(i) * n + col[i]];
      PF_CHECK_NEAR(total / n, popflow::exact_transport(cost.data(), n, n).cost, 1e-9);
    }
  }
  // Squared distances between shifted 2-d clouds: the case where the auction
  // phase runs out of its bid budget and the augmenting paths must finish.
  std::normal_distribution<double> normal(0, 1);
  for (int n : {64, 256}) {
    std::vector<double> a(2 * n), b(2 * n), cost(static_cast<size_t>(n) * n);
    for (auto& v : a) v = normal(rng);
    for (auto& v : b) v = normal(rng) + 3;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        const double dx = a[2 * i] - b[2 * j], dy = a[2 * i + 1] - b[2 * j + 1];
        cost[static_cast<size_t>(i) * n + j] = dx * dx + dy * dy;
      }
    std::vector<int> col = popflow::solve_assignment(cost.data(), n);
    std::vector<int> sorted = col;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) PF_CHECK_MSG(sorted[i] == i, "not a permutation for 2-d n=" << n);
    double total = 0;
    for (int i = 0; i < n; ++i) total += cost[static_cast<size_t>(i) * n + col[i]];
    PF_CHECK_NEAR(total / n, popflow::exact_transport(cost.data(), n, n).cost, 1e-9);
  }
}

namespace {

// Squared distances between two n-point clouds in d dimensions of a named
// shape: "shifted" (N(0, I) to N(3, 0.25 I), where plain JV's column reduction
// is far off), "identical" (both N(0, I)), "clusters" (two well-separated
// clusters on each side, of unequal weights) or "duplicates" (each target point
// four times: many tied optima).
std::vector<double> shaped_cost(const std::string& shape, int n, int d, std::mt19937_64& rng) {
  std::normal_distribution<double> z(0, 1);
  std::vector<double> a(static_cast<size_t>(n) * d), b(a.size());
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < d; ++k) {
      double& x = a[static_cast<size_t>(i) * d + k];
      double& y = b[static_cast<size_t>(i) * d + k];
      x = z(rng);
      y = z(rng);
      if (shape == "shifted") y = 3 + 0.5 * y;
      if (shape == "clusters" && k == 0) {
        x += i % 3 == 0 ? 8 : -8;
        y += i % 2 == 0 ? 8 : -8;
      }
      if (shape == "duplicates" && i % 4 != 0) y = b[static_cast<size_t>(i - i % 4) * d + k];
    }
  std::vector<double> c(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int k = 0; k < d; ++k) {
        const double t = a[static_cast<size_t>(i) * d + k] - b[static_cast<size_t>(j) * d + k];
        s += t * t;
      }
      c[static_cast<size_t>(i) * n + j] = s;
    }
  return c;
}

// Mean cost of the matching col, or NaN when col is not a permutation.
double matching_cost(const std::vector<double>& c, int n, const std::vector<int64_t>& col) {
  std::vector<char> seen(n, 0);
  double total = 0;
  for (int i = 0; i < n; ++i) {
    if (col[i] < 0 || col[i] >= n || seen[col[i]]) return std::numeric_limits<double>::quiet_NaN();
    seen[col[i]] = 1;
    total += c[static_cast<size_t>(i) * n + col[i]];
  }
  return total / n;
}

const char* const kShapes[] = {"shifted", "identical", "clusters", "duplicates"};

}  // namespace

TEST_CASE("solve_assignment and plain JV reach the network-simplex optimum on every data shape") {
  std::mt19937_64 rng(21);
  for (const char* shape : kShapes)
    for (int d : {2, 10})
      for (int n : {50, 200}) {
        auto c = shaped_cost(shape, n, d, rng);
        const double reference = exact_transport(c.data(), n, n).cost;
        auto fast = solve_assignment(c.data(), n), plain = solve_assignment_jv(c.data(), n);
        const double got = matching_cost(c, n, {fast.begin(), fast.end()});
        const double got_jv = matching_cost(c, n, {plain.begin(), plain.end()});
        PF_CHECK_MSG(std::abs(got - reference) <= 1e-9 * std::max(1.0, reference),
                     shape << " d=" << d << " n=" << n << ": " << got << " vs " << reference);
        PF_CHECK_MSG(std::abs(got_jv - reference) <= 1e-9 * std::max(1.0, reference),
                     "plain JV " << shape << " d=" << d << " n=" << n << ": " << got_jv << " vs " << reference);
      }
  // Constant costs (no spread for the auction's eps) and a single row.
  std::vector<double> flat(49, 2.5);
  auto col = solve_assignment(flat.data(), 7);
  PF_CHECK_NEAR(matching_cost(flat, 7, {col.begin(), col.end()}), 2.5, 0);
  double one = 3;
  PF_CHECK(solve_assignment(&one, 1) == std::vector<int>{0});
}

TEST_CASE("exact_transport: degenerate problems (duplicate target points) terminate at the optimum") {
  // With double arc costs LEMON's simplex cycled forever on the first of these (seed 22).
  for (uint64_t seed : {22u, 23u, 24u}) {
    std::mt19937_64 rng(seed);
    for (int k = 0; k < 6; ++k) shaped_cost("shifted", 96, 2, rng);  // the auction test's draws before it
    auto c = shaped_cost("duplicates", 96, 2, rng);
    auto col = solve_assignment(c.data(), 96);
    PF_CHECK_NEAR(exact_transport(c.data(), 96, 96).cost, matching_cost(c, 96, {col.begin(), col.end()}), 1e-9);
  }
}

TEST_CASE("auction_assignment: a permutation within its bound of the optimum, on every data shape") {
  std::mt19937_64 rng(22);
  const double rel_gap = 1e-3;
  for (const char* shape : kShapes)
    for (int d : {2, 10}) {
      const int n = 96;
      auto c = shaped_cost(shape, n, d, rng);
      const double reference = exact_transport(c.data(), n, n).cost;
      auto cost = torch::from_blob(c.data(), {n, n}, kD).to(torch::kFloat);
      auto col_t = auction_assignment(cost, rel_gap);
      PF_CHECK(col_t.scalar_type() == torch::kLong && col_t.size(0) == n);
      std::vector<int64_t> col(col_t.data_ptr<int64_t>(), col_t.data_ptr<int64_t>() + n);
      const double got = matching_cost(c, n, col);
      const double bound = rel_gap * cost.mean().item<double>();
      PF_CHECK_MSG(got >= reference - 1e-6 * reference && got <= reference + bound,
                   shape << " d=" << d << ": " << got << " vs optimum " << reference << " + " << bound);
    }
  // Integer costs with n * eps below their resolution: the auction's matching is optimal.
  std::uniform_int_distribution<int> digit(0, 9);
  const int n = 40;
  std::vector<double> c(static_cast<size_t>(n) * n);
  for (auto& v : c) v = digit(rng);
  auto cost = torch::from_blob(c.data(), {n, n}, kD).clone();
  auto col_t = auction_assignment(cost, 0.5 / (n * cost.mean().item<double>()));
  std::vector<int64_t> col(col_t.data_ptr<int64_t>(), col_t.data_ptr<int64_t>() + n);
  PF_CHECK_NEAR(matching_cost(c, n, col), exact_transport(c.data(), n, n).cost, 1e-12);
  // Degenerate and bad input.
  PF_CHECK(auction_assignment(torch::ones({5, 5}), 1e-3).equal(torch::arange(5)));
  PF_CHECK(auction_assignment(torch::ones({1, 1}), 1e-3).equal(torch::zeros({1}, torch::kLong)));
  PF_CHECK_THROWS_AS(auction_assignment(torch::ones({2, 3}), 1e-3), std::invalid_argument);
  PF_CHECK_THROWS_AS(auction_assignment(torch::ones({2, 2}), 0), std::invalid_argument);
}

TEST_CASE("couple: the auction solver pairs equal batches by a near-optimal permutation") {
  torch::manual_seed(23);
  std::mt19937_64 rng(23);
  CouplingConfig cfg;
  cfg.kind = CouplingKind::ExactOT;
  cfg.mode = OTMode::Permutation;
  cfg.solver = OTSolver::Auction;
  const int64_t n = 64;
  auto x0 = torch::randn({n, 5}), x1 = torch::randn({n, 5}) * 0.5 + 3;
  auto pair = couple(cfg, x0, x1, 0.1, rng);
  PF_CHECK(torch::equal(pair.x0, x0));
  auto col = ot_permutation(x0, x1, OTSolver::Auction);
  PF_CHECK(torch::equal(pair.x1, x1.index_select(0, col)));
  PF_CHECK(std::get<0>(col.sort()).equal(torch::arange(n)));
  const double mean_cost = squared_cost(x0, x1).mean().item<double>();
  const double optimum = (exact_plan(x0, x1) * squared_cost(x0, x1).to(torch::kDouble)).sum().item<double>();
  const double got = (pair.x0 - pair.x1).pow(2).sum(1).mean().item<double>();
  PF_CHECK_LE(got, optimum + 1e-3 * mean_cost + 1e-4);
  // The plan form: a permutation matrix / n; unequal sizes still go to network simplex.
  auto plan = exact_plan(x0, x1, OTSolver::Auction);
  PF_CHECK_NEAR(max_abs(plan.sum(1) - 1.0 / n), 0.0, 1e-12);
  PF_CHECK_NEAR(max_abs(plan.sum(0) - 1.0 / n), 0.0, 1e-12);
  PF_CHECK(plan.gt(0).sum().item<int64_t>() == n);
  auto unequal = exact_plan(x0, x1.narrow(0, 0, 48), OTSolver::Auction);
  PF_CHECK_NEAR(max_abs(unequal.sum(0) - 1.0 / 48), 0.0, 1e-12);
}

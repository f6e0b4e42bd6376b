#include "coupling.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "assignment.h"
#include "exact_ot.h"

namespace popflow {

torch::Tensor squared_cost(const torch::Tensor& x0, const torch::Tensor& x1) {
  auto a2 = x0.pow(2).sum(1, true);
  auto b2 = x1.pow(2).sum(1, true).t();
  return (a2 + b2 - 2 * torch::matmul(x0, x1.t())).clamp_min(0);
}

namespace {

// Column potentials g of entropic OT between uniform marginals at regularisation
// reg, by a few log-domain Sinkhorn iterations per stage of eps halving from
// max(cost) / 8: a warm start for the auction's prices, not a converged plan.
torch::Tensor sinkhorn_column_potentials(const torch::Tensor& cost, double reg, int iters_per_stage) {
  const int64_t n = cost.size(0);
  const double log_w = -std::log(static_cast<double>(n));
  auto f = torch::zeros({n}, cost.options()), g = torch::zeros({n}, cost.options());
  for (double eps = std::max(reg, cost.max().item<double>() / 8);; eps = std::max(reg, eps / 2)) {
    for (int it = 0; it < iters_per_stage; ++it) {
      f = eps * (log_w - torch::logsumexp((g.unsqueeze(0) - cost) / eps, 1));
      g = eps * (log_w - torch::logsumexp((f.unsqueeze(1) - cost) / eps, 0));
    }
    if (eps <= reg) break;
  }
  return g;
}

}  // namespace

torch::Tensor auction_assignment(const torch::Tensor& cost, double rel_gap) {
  if (cost.dim() != 2 || cost.size(0) != cost.size(1) || cost.size(0) == 0)
    throw std::invalid_argument("auction_assignment: cost must be a non-empty square matrix");
  if (!(rel_gap > 0)) throw std::invalid_argument("auction_assignment: rel_gap must be > 0");
  torch::NoGradGuard no_grad;
  const int64_t n = cost.size(0);
  auto opts_long = cost.options().dtype(torch::kLong);
  if (n == 1) return torch::zeros({1}, opts_long);
  const double spread = (cost.max() - cost.min()).item<double>();
  const double mean = cost.mean().item<double>();
  const double eps_final = rel_gap * mean;
  if (!(spread > 0) || !std::isfinite(spread) || !(eps_final > 0))  // constant costs: any matching is optimal
    return torch::arange(n, opts_long);
  // Prices start at minus the entropic column potentials at 3 eps_final: close
  // to optimal duals, so the auction needs one or two eps stages and a few
  // hundred rounds rather than five stages and thousands of rounds from zero.
  const double warm = 3 * eps_final;
  // One trailing slot in price and row_col takes the writes of "no column" / "no row".
  auto price = torch::zeros({n + 1}, cost.options());
  price.narrow(0, 0, n).copy_(-sinkhorn_column_potentials(cost, warm, 5));
  auto row_col = torch::full({n + 1}, -1, opts_long), col_row = torch::full({n}, -1, opts_long);
  auto cols = torch::arange(n, opts_long);
  // Stages of eps shrinking 5-fold, each from an empty matching and the last
  // stage's prices, down to eps_final: the last matching is within n * eps_final
  // of the optimum (every row ends within eps of its cheapest column).
  std::vector<double> stages{eps_final};
  while (stages.back() * 5 <= std::min(warm, spread / 4)) stages.push_back(stages.back() * 5);
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) {
    const double eps = *it;
    row_col.fill_(-1);
    col_row.fill_(-1);
    while (true) {
      auto free_rows = (row_col.narrow(0, 0, n) < 0).nonzero().squeeze(1);
      const int64_t k = free_rows.size(0);
      if (k == 0) break;
      // Every free row bids at once for its cheapest column (cost + price),
      // raising its price by the gap to its second-cheapest plus eps.
      auto top = (cost.index_select(0, free_rows) + price.narrow(0, 0, n).unsqueeze(0)).topk(2, 1, false);
      auto values = std::get<0>(top);
      auto bid_col = std::get<1>(top).select(1, 0);
      auto bid = price.index_select(0, bid_col) + (values.select(1, 1) - values.select(1, 0) + eps);
      // Each column goes to its highest bid, the lowest row on ties: bids sorted
      // by value, then stably by column, so each column's group starts with its winner.
      auto by_bid = std::get<1>(bid.sort(/*stable=*/true, 0, /*descending=*/true));
      auto col_by_bid = bid_col.index_select(0, by_bid);
      auto by_col = std::get<1>(col_by_bid.sort(/*stable=*/true, 0, /*descending=*/false));
      auto order = by_bid.index_select(0, by_col);
      auto col_sorted = col_by_bid.index_select(0, by_col);
      auto head = torch::ones({k}, cost.options().dtype(torch::kBool));
      if (k > 1) head.narrow(0, 1, k - 1).copy_(col_sorted.narrow(0, 1, k - 1) != col_sorted.narrow(0, 0, k - 1));
      auto target = torch::where(head, col_sorted, torch::full_like(col_sorted, n));
      price.scatter_(0, target, bid.index_select(0, order));
      auto winner = torch::full({n + 1}, n, opts_long).scatter_(0, target, free_rows.index_select(0, order)).narrow(0, 0, n);
      auto won = winner < n;
      // The previous holders of won columns become free; the winners take them.
      row_col.scatter_(0, torch::where(won & (col_row >= 0), col_row, torch::full_like(col_row, n)), -1);
      row_col.scatter_(0, torch::where(won, winner, torch::full_like(winner, n)), cols);
      col_row = torch::where(won, winner, col_row);
    }
  }
  return row_col.narrow(0, 0, n).clone();
}

torch::Tensor ot_permutation(const torch::Tensor& x0, const torch::Tensor& x1, OTSolver solver) {
  if (x0.size(0) != x1.size(0)) throw std::invalid_argument("ot_permutation: batches must have equal sizes");
  torch::NoGradGuard no_grad;
  if (solver == OTSolver::Auction)
    return auction_assignment(squared_cost(x0.to(torch::kFloat), x1.to(torch::kFloat))).to(x1.device());
  auto cost = squared_cost(x0, x1).to(torch::kCPU, torch::kDouble).contiguous();
  const int n = static_cast<int>(cost.size(0));
  std::vector<int> col = solve_assignment(cost.data_ptr<double>(), n);
  return torch::tensor(std::vector<int64_t>(col.begin(), col.end()), torch::kLong).to(x1.device());
}

torch::Tensor exact_plan(const torch::Tensor& x0, const torch::Tensor& x1, OTSolver solver) {
  const int64_t n = x0.size(0), m = x1.size(0);
  if (n == m) {
    // Equal uniform batches: the optimal plan is a permutation (an assignment).
    auto col = ot_permutation(x0, x1, solver).to(torch::kCPU);
    return torch::zeros({n, m}, torch::kDouble).index_put_({torch::arange(n), col}, 1.0 / static_cast<double>(n));
  }
  auto cost = squared_cost(x0, x1).to(torch::kCPU, torch::kDouble).contiguous();
  TransportPlan plan = exact_transport(cost.data_ptr<double>(), static_cast<int>(n), static_cast<int>(m));
  auto dense = torch::zeros({n, m}, torch::kDouble);
  auto acc = dense.accessor<double, 2>();
  for (const auto& e : plan.entries) acc[e.i][e.j] = e.mass;
  return dense;
}

torch::Tensor sinkhorn_plan(const torch::Tensor& x0, const torch::Tensor& x1, double reg, int iters) {
  if (reg <= 0) throw std::invalid_argument("sinkhorn: regularisation must be > 0");
  auto cost = squared_cost(x0.to(torch::kFloat), x1.to(torch::kFloat));
  const int64_t n = cost.size(0), m = cost.size(1);
  const double log_a = -std::log(static_cast<double>(n)), log_b = -std::log(static_cast<double>(m));
  // Dual potentials in cost units, so they carry over when eps shrinks.
  auto f = torch::zeros({n}, cost.options()), g = torch::zeros({m}, cost.options());
  // Epsilon scaling: start blurred and halve towards `reg`, warm-starting each
  // stage; small reg then needs far fewer iterations than a cold start.
  double eps = std::max(reg, cost.max().item<double>() / 8);
  int used = 0;
  while (true) {
    const bool final_stage = eps <= reg;
    for (int it = 0; it < iters && used < iters; ++it, ++used) {
      f = eps * (log_a - torch::logsumexp((g.unsqueeze(0) - cost) / eps, 1));
      g = eps * (log_b - torch::logsumexp((f.unsqueeze(1) - cost) / eps, 0));
      // Column marginals are exact after a g-update; stop once the rows are close.
      if (it % 10 == 9) {
        auto row_log = torch::logsumexp((f.unsqueeze(1) + g.unsqueeze(0) - cost) / eps, 1);
        if ((row_log - log_a).abs().max().item<double>() < (final_stage ? 1e-4 : 1e-2)) break;
      }
    }
    if (final_stage || used >= iters) break;
    eps = std::max(reg, eps / 2);
  }
  return torch::exp((f.unsqueeze(1) + g.unsqueeze(0) - cost) / eps).to(torch::kDouble);
}

torch::Tensor unbalanced_sinkhorn_plan(const torch::Tensor& x0, const torch::Tensor& x1, double target_mass,
                                       double reg, double reg_m, int iters) {
  if (!(reg > 0) || !(reg_m > 0)) throw std::invalid_argument("unbalanced sinkhorn: reg and reg_m must be > 0");
  if (!(target_mass > 0)) throw std::invalid_argument("unbalanced sinkhorn: target_mass must be > 0");
  // Double precision: the potentials of a small reg are large and close together.
  auto cost = squared_cost(x0.to(torch::kDouble), x1.to(torch::kDouble));
  const int64_t n = cost.size(0), m = cost.size(1);
  const double log_a = -std::log(static_cast<double>(n));
  const double log_b = std::log(target_mass) - std::log(static_cast<double>(m));
  // The KL penalty of the marginals damps each scaling step by tau (tau -> 1: balanced).
  const double tau = reg_m / (reg_m + reg);
  auto f = torch::zeros({n}, cost.options()), g = torch::zeros({m}, cost.options());
  for (int it = 0; it < iters; ++it) {
    auto f_new = -tau * reg * torch::logsumexp(log_b + (g.unsqueeze(0) - cost) / reg, 1);
    g = -tau * reg * torch::logsumexp(log_a + (f_new.unsqueeze(1) - cost) / reg, 0);
    const bool converged = it % 10 == 9 && (f_new - f).abs().max().item<double>() < 1e-5 * reg;
    f = f_new;
    if (converged) break;
  }
  return torch::exp(log_a + log_b + (f.unsqueeze(1) + g.unsqueeze(0) - cost) / reg);
}

namespace {

// Draw n (i, j) pairs with probability proportional to the plan.
std::pair<torch::Tensor, torch::Tensor> sample_from_plan(const torch::Tensor& plan, int64_t n,
                                                         std::mt19937_64& rng) {
  auto flat = plan.reshape({-1}).to(torch::kCPU, torch::kDouble).contiguous();
  const double* p = flat.data_ptr<double>();
  std::discrete_distribution<int64_t> dist(p, p + flat.numel());
  auto idx = torch::empty({n}, torch::kLong);
  auto* out = idx.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) out[k] = dist(rng);
  const int64_t m = plan.size(1);
  return {torch::floor_divide(idx, m), torch::remainder(idx, m)};
}

}  // namespace

UnbalancedPair couple_unbalanced(const CouplingConfig& config, const torch::Tensor& x0, const torch::Tensor& x1,
                                 double target_mass, std::mt19937_64& rng) {
  torch::NoGradGuard no_grad;
  const int64_t n = x0.size(0);
  const double scale = std::max(squared_cost(x0.to(torch::kFloat), x1.to(torch::kFloat)).mean().item<double>(), 1e-12);
  auto plan = unbalanced_sinkhorn_plan(x0, x1, target_mass, config.unbalanced_reg * scale,
                                       config.unbalanced_reg_m * scale, config.sinkhorn_iters);
  // Growth of each source cell: the target mass that comes from it, each
  // target cell's mass split over the source cells by its column of the plan.
  // The source cells' growth then averages target_mass exactly, and an
  // isolated region grows by its own mass ratio (the plan's row sums alone
  // would give only the square root of it: KL-relaxed marginals meet halfway).
  const double b = target_mass / static_cast<double>(x1.size(0));
  auto cols = plan.sum(0, true).clamp_min(1e-300);
  auto growth = (plan / cols).sum(1) * (b * static_cast<double>(n));
  // A cell that receives (almost) nothing would regress g on log(0): growth
  // over one interval is capped at 100-fold either way.
  auto log_growth = torch::log(growth.clamp(1e-2, 1e2));
  auto ij = sample_from_plan(plan, n, rng);
  auto i = ij.first.to(x0.device());
  return {x0.index_select(0, i), x1.index_select(0, ij.second.to(x1.device())),
          log_growth.to(x0.device(), torch::kFloat).index_select(0, i)};
}

CoupledPair couple(const CouplingConfig& config, const torch::Tensor& x0, const torch::Tensor& x1,
                   double reg_default, std::mt19937_64& rng) {
  if (!repairs(config.kind)) return {x0, x1};
  if (config.kind == CouplingKind::Unbalanced)
    throw std::invalid_argument("the unbalanced coupling needs the snapshots' masses: use couple_unbalanced()");
  torch::NoGradGuard no_grad;
  const int64_t n = x0.size(0);
  torch::Tensor plan;
  if (config.kind == CouplingKind::ExactOT) {
    if (config.mode == OTMode::Permutation && x1.size(0) == n)
      return {x0, x1.index_select(0, ot_permutation(x0, x1, config.solver))};
    plan = exact_plan(x0, x1, config.solver);
    if (config.mode == OTMode::Permutation) {
      // Unequal sizes: each source cell goes to the target carrying most of its mass.
      auto j = plan.argmax(1).to(x1.device());
      return {x0, x1.index_select(0, j)};
    }
  } else {
    double reg = config.sinkhorn_reg > 0 ? config.sinkhorn_reg : reg_default;
    plan = sinkhorn_plan(x0, x1, reg, config.sinkhorn_iters);
  }
  auto ij = sample_from_plan(plan, n, rng);
  return {x0.index_select(0, ij.first.to(x0.device())), x1.index_select(0, ij.second.to(x1.device()))};
}

}  // namespace popflow

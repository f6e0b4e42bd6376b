#include "coupling.h"

#include <cmath>
#include <stdexcept>

#include "assignment.h"
#include "exact_ot.h"

namespace popflow {

torch::Tensor squared_cost(const torch::Tensor& x0, const torch::Tensor& x1) {
  auto a2 = x0.pow(2).sum(1, true);
  auto b2 = x1.pow(2).sum(1, true).t();
  return (a2 + b2 - 2 * torch::matmul(x0, x1.t())).clamp_min(0);
}

torch::Tensor exact_plan(const torch::Tensor& x0, const torch::Tensor& x1) {
  auto cost = squared_cost(x0, x1).to(torch::kCPU, torch::kDouble).contiguous();
  const int n = static_cast<int>(cost.size(0)), m = static_cast<int>(cost.size(1));
  if (n == m) {
    // Equal uniform batches: the optimal plan is a permutation (an assignment).
    std::vector<int> col = solve_assignment(cost.data_ptr<double>(), n);
    auto dense = torch::zeros({n, m}, torch::kDouble);
    auto acc = dense.accessor<double, 2>();
    for (int i = 0; i < n; ++i) acc[i][col[i]] = 1.0 / n;
    return dense;
  }
  TransportPlan plan = exact_transport(cost.data_ptr<double>(), n, m);
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
    plan = exact_plan(x0, x1);
    if (config.mode == OTMode::Permutation) {
      // Each source cell goes to the target carrying most of its mass; with
      // equal batch sizes the exact plan is a permutation, so this is it.
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

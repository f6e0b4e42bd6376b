#include "coupling.h"

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
  auto cost = squared_cost(x0, x1).to(torch::kDouble);
  const int64_t n = cost.size(0), m = cost.size(1);
  auto log_a = torch::full({n}, -std::log(static_cast<double>(n)), cost.options());
  auto log_b = torch::full({m}, -std::log(static_cast<double>(m)), cost.options());
  auto log_k = -cost / reg;
  auto f = torch::zeros({n}, cost.options()), g = torch::zeros({m}, cost.options());
  // Log-domain updates stay finite for small reg, where kernel-space Sinkhorn underflows.
  for (int it = 0; it < iters; ++it) {
    f = log_a - torch::logsumexp(log_k + g.unsqueeze(0), 1);
    g = log_b - torch::logsumexp(log_k + f.unsqueeze(1), 0);
    // After a g-update the column marginals are exact; stop once the rows are too.
    if (it % 10 == 9) {
      auto row_err = (torch::logsumexp(log_k + g.unsqueeze(0), 1) + f - log_a).abs().max();
      if (row_err.item<double>() < 1e-6) break;
    }
  }
  return torch::exp(f.unsqueeze(1) + log_k + g.unsqueeze(0));
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

CoupledPair couple(const CouplingConfig& config, const torch::Tensor& x0, const torch::Tensor& x1,
                   double reg_default, std::mt19937_64& rng) {
  if (config.kind == CouplingKind::Independent) return {x0, x1};
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

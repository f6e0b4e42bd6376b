// Minibatch couplings of source and target cells: independent, exact OT
// (network simplex) or entropic OT (log-domain Sinkhorn, runs on any device).
// Paired coupling happens where rows are drawn (draw_paired_rows, trainer.h).
#pragma once
#include <torch/torch.h>

#include <random>

#include "config.h"

namespace popflow {

struct CoupledPair {
  torch::Tensor x0;
  torch::Tensor x1;
};

// Squared Euclidean cost matrix [n, m].
torch::Tensor squared_cost(const torch::Tensor& x0, const torch::Tensor& x1);

// Exact OT plan (dense [n, m], sums to 1) of uniform point sets. With equal
// sizes the plan is a permutation / n, found by `solver` (OTSolver::Auction:
// auction_assignment() on the inputs' device); unequal sizes use network simplex.
torch::Tensor exact_plan(const torch::Tensor& x0, const torch::Tensor& x1, OTSolver solver = OTSolver::Exact);

// The optimal (Exact) or near-optimal (Auction) permutation of equal batches:
// col [n] (int64, on x1's device), row i paired with x1 row col[i].
torch::Tensor ot_permutation(const torch::Tensor& x0, const torch::Tensor& x1, OTSolver solver);

// Minimum-cost assignment of a square cost matrix by a Jacobi auction (every
// unassigned row bids at once) with epsilon scaling, in tensor ops on cost's
// device; its prices start from entropic (Sinkhorn) potentials. Returns col [n] (int64, on cost's device). Its last stage's eps is
// rel_gap * mean(cost), and the total cost is within n * eps of the optimum:
// the mean cost per row is within rel_gap * mean(cost) of the optimum's.
torch::Tensor auction_assignment(const torch::Tensor& cost, double rel_gap = 1e-3);

// Entropic OT plan (dense [n, m], sums to 1) by log-domain Sinkhorn iterations.
torch::Tensor sinkhorn_plan(const torch::Tensor& x0, const torch::Tensor& x1, double reg, int iters);

// Unbalanced entropic OT plan (dense [n, m]) between a source carrying mass 1
// (1/n per row) and a target carrying mass `target_mass` (target_mass/m per
// column): minimises <C, P> + reg KL(P | a b') + reg_m (KL(P 1 | a) + KL(P' 1 | b))
// with C the squared Euclidean cost, by log-domain Sinkhorn iterations
// (Chizat et al. 2018), on the inputs' device. reg and reg_m are absolute here.
torch::Tensor unbalanced_sinkhorn_plan(const torch::Tensor& x0, const torch::Tensor& x1, double target_mass,
                                       double reg, double reg_m, int iters);

// An unbalanced coupling of a minibatch: pairs drawn from the normalised plan,
// and for each pair the log of its source cell's growth over the interval.
struct UnbalancedPair {
  torch::Tensor x0, x1;
  torch::Tensor log_growth;  // [n]
};

// Couples x0 (mass 1) with x1 (mass target_mass) by the unbalanced plan, with
// config.unbalanced_reg and _reg_m relative to the batch's mean squared
// distance. A source cell's growth is the target mass attributed to it (each
// target cell's mass split over the sources by its column of the plan) over
// its own mass, so the growth factors average target_mass exactly (up to the
// cap of 100-fold growth or death per interval).
UnbalancedPair couple_unbalanced(const CouplingConfig& config, const torch::Tensor& x0, const torch::Tensor& x1,
                                 double target_mass, std::mt19937_64& rng);

// Whether couple() re-pairs the rows it is given (independent and paired rows stay as drawn).
inline bool repairs(CouplingKind kind) { return kind != CouplingKind::Independent && kind != CouplingKind::Paired; }

// Returns x0 and x1 re-paired according to the coupling; both have x0's row count.
// reg_default is used for Sinkhorn when config.sinkhorn_reg is 0.
CoupledPair couple(const CouplingConfig& config, const torch::Tensor& x0, const torch::Tensor& x1,
                   double reg_default, std::mt19937_64& rng);

}  // namespace popflow

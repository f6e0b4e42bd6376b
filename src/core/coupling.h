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

// Exact OT plan (dense [n, m], sums to 1) of uniform point sets.
torch::Tensor exact_plan(const torch::Tensor& x0, const torch::Tensor& x1);

// Entropic OT plan (dense [n, m], sums to 1) by log-domain Sinkhorn iterations.
torch::Tensor sinkhorn_plan(const torch::Tensor& x0, const torch::Tensor& x1, double reg, int iters);

// Whether couple() re-pairs the rows it is given (independent and paired rows stay as drawn).
inline bool repairs(CouplingKind kind) { return kind != CouplingKind::Independent && kind != CouplingKind::Paired; }

// Returns x0 and x1 re-paired according to the coupling; both have x0's row count.
// reg_default is used for Sinkhorn when config.sinkhorn_reg is 0.
CoupledPair couple(const CouplingConfig& config, const torch::Tensor& x0, const torch::Tensor& x1,
                   double reg_default, std::mt19937_64& rng);

}  // namespace popflow

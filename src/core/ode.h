// ODE solvers for dx/dt = v(x, t): fixed-step Euler, Heun, midpoint, RK4 and
// adaptive Dormand-Prince 5(4). Cells are integrated in chunks to bound memory.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

#include "config.h"

namespace popflow {

using VelocityFn = std::function<torch::Tensor(const torch::Tensor& x, double t)>;

struct OdeStats {
  int64_t evaluations = 0;  // velocity evaluations, summed over chunks
  int64_t accepted = 0;     // accepted steps, summed over chunks
  int64_t rejected = 0;
};

// Integrates every row of x0 from times.front() through each of `times`
// (increasing or decreasing). Returns one [n, d] state per entry of `times`
// (the first is x0 itself). `chunk_fn(rows)` gives the velocity function for
// a chunk of rows, so conditioning can follow the cells.
std::vector<torch::Tensor> integrate(const std::function<VelocityFn(int64_t begin, int64_t end)>& chunk_fn,
                                     const torch::Tensor& x0, const std::vector<double>& times,
                                     const SolverConfig& config, OdeStats* stats = nullptr);

}  // namespace popflow

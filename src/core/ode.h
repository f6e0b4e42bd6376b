// ODE solvers for dx/dt = v(x, t): fixed-step Euler, Heun, midpoint, RK4 and
// adaptive Dormand-Prince 5(4). Cells are integrated in chunks to bound memory.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <stdexcept>
#include <vector>

#include "config.h"

namespace popflow {

using VelocityFn = std::function<torch::Tensor(const torch::Tensor& x, double t)>;

struct OdeStats {
  int64_t evaluations = 0;  // velocity evaluations, summed over chunks
  int64_t accepted = 0;     // accepted steps, summed over chunks
  int64_t rejected = 0;
};

// Called after every solver step with the fraction of the work done (cells
// times span, in [0, 1]); returning false stops the integration, which then
// throws Interrupted. How a caller decides (a user interrupt, a time limit)
// is its own business: the solver only asks.
using OdeProgress = std::function<bool(double fraction)>;

struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("the integration was interrupted") {}
};

// Integrates every row of x0 from times.front() through each of `times`
// (increasing or decreasing). Returns one [n, d] state per entry of `times`
// (the first is x0 itself). `chunk_fn(rows)` gives the velocity function for
// a chunk of rows, so conditioning can follow the cells. `progress`, when
// set, is asked after every step (see OdeProgress).
std::vector<torch::Tensor> integrate(const std::function<VelocityFn(int64_t begin, int64_t end)>& chunk_fn,
                                     const torch::Tensor& x0, const std::vector<double>& times,
                                     const SolverConfig& config, OdeStats* stats = nullptr,
                                     const OdeProgress& progress = {});

}  // namespace popflow

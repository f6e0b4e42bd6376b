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

// The instantaneous change of variables (continuous normalising flows): x
// integrated from t_from to t_to together with the integral of the
// velocity's divergence along its path, so that for a flow carrying density
// p to q, log q(x(t_to)) = log p(x(t_from)) - divergence when t_from < t_to
// (and log p(x(t_to)) = log q(x(t_from)) + divergence the other way).
// The divergence is exact (one vector-Jacobian product per dimension) or
// Hutchinson's estimate E[e' (dv/dx) e] with `probes` Rademacher vectors e
// drawn once per row (seeded, independent of chunking) and kept along the
// path; DivergenceKind::Auto is exact when the dimension is <= probes. The
// velocity functions are differentiated, so they must build a graph from x.
// The solver's error control covers the divergence too.
struct DivergencePath {
  torch::Tensor x;           // [n, d] state at t_to
  torch::Tensor divergence;  // [n] integral of div v from t_from to t_to
};
DivergencePath integrate_divergence(const std::function<VelocityFn(int64_t begin, int64_t end)>& chunk_fn,
                                    const torch::Tensor& x0, double t_from, double t_to, const SolverConfig& config,
                                    const DensityConfig& density, OdeStats* stats = nullptr);

// Whether a divergence setting computes the exact divergence in `dim` dimensions.
bool exact_divergence(const DensityConfig& density, int64_t dim);

}  // namespace popflow

// Prediction (Algorithm 2): push cells through the learned flow between snapshot times.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "config.h"
#include "model.h"
#include "ode.h"

namespace popflow {

// x: [n, d] cells at times.front() (user time units); cond: [n, cond_dim] or
// undefined. Returns one double CPU tensor [n, d] per entry of `times`.
// `progress`: see integrate() (Interrupted when it returns false).
// `log_mass`, for an unbalanced flow (a growth rate g): one double CPU tensor
// [n] per entry of `times`, the log of each cell's mass relative to its mass at
// times.front(), integrated with the cells (d log m / dt = g(x, t)) under the
// same error control; std::invalid_argument for a flow without growth.
std::vector<torch::Tensor> transport(const FlowModel& model, const torch::Tensor& x,
                                     const std::vector<double>& times, const torch::Tensor& cond,
                                     const SolverConfig& solver, int threads = 1, OdeStats* stats = nullptr,
                                     const OdeProgress& progress = {}, std::vector<torch::Tensor>* log_mass = nullptr);

// Exact log-likelihood of a generative flow (a Gaussian-source path: target
// FM, VP): each cell x is carried back from the last time to the first, where
// the source is N(0, I), and log p(x) = log N(x0; 0, I) + the integral of div v
// from 1 back to 0 (integrate_divergence, ode.h). Double CPU tensors.
struct LogDensity {
  torch::Tensor log_density;  // [n] log-density of each cell (nats, in the model's features)
  torch::Tensor source;       // [n, d] the cell carried to the source (t = 0)
  torch::Tensor divergence;   // [n] integral of div v from t = 1 back to t = 0
};
LogDensity log_density(const FlowModel& model, const torch::Tensor& x, const SolverConfig& solver,
                       const DensityConfig& density, int threads = 1, OdeStats* stats = nullptr);

// n cells drawn from a generative flow's source (Gaussian, ZINB, empirical:
// config.h SourceConfig), seeded; a double CPU tensor [n, d]. A fitted
// model's own configuration, or one about to be fitted (validation sets).
torch::Tensor draw_source(const FlowConfig& config, int64_t n, uint64_t seed);

}  // namespace popflow

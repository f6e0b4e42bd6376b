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
std::vector<torch::Tensor> transport(const FlowModel& model, const torch::Tensor& x,
                                     const std::vector<double>& times, const torch::Tensor& cond,
                                     const SolverConfig& solver, int threads = 1, OdeStats* stats = nullptr,
                                     const OdeProgress& progress = {});

}  // namespace popflow

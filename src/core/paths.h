// Conditional probability paths: where a cell sits at time t between its
// coupled end points, and the velocity the network must regress there.
#pragma once
#include <torch/torch.h>

#include "config.h"

namespace popflow {

struct PathSample {
  torch::Tensor xt;  // [n, d] location at time t
  torch::Tensor ut;  // [n, d] regression target (velocity on the unit interval)
};

// x0, x1: [n, d] coupled end points; t: [n] in [0, 1].
// For TargetFM x0 is ignored (Gaussian source).
PathSample sample_path(const PathConfig& path, const torch::Tensor& x0, const torch::Tensor& x1,
                       const torch::Tensor& t);

}  // namespace popflow

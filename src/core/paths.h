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

// Paths that start from a standard Gaussian at t = 0 (TargetFM and the
// variance-preserving paths): their source is drawn, not given as cells.
bool gaussian_source(PathKind kind);

// The linear noise schedule of the VP path (the continuous DDPM / score-SDE
// schedule beta(s) = beta_min + s (beta_max - beta_min), s = 1 - t).
constexpr double kVPBetaMin = 0.1, kVPBetaMax = 20.0;

// x0, x1: [n, d] coupled end points; t: [n] in [0, 1].
// For Gaussian-source paths x0 is ignored and the noise is drawn here.
PathSample sample_path(const PathConfig& path, const torch::Tensor& x0, const torch::Tensor& x1,
                       const torch::Tensor& t);

}  // namespace popflow

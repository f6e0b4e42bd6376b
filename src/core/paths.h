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
// For Gaussian-source paths x0 is ignored and the noise is drawn here, unless
// `drawn_source`: then x0 is a draw of the model's own source (ZINB,
// empirical) and takes the noise's place in the path.
PathSample sample_path(const PathConfig& path, const torch::Tensor& x0, const torch::Tensor& x1,
                       const torch::Tensor& t, bool drawn_source = false);

// "" when `source` fits a model of `dim` features on `path`, else the problem.
std::string source_problem(const SourceConfig& source, PathKind path, int64_t dim);

// Draws x0 of a generative path from its source (config.h SourceConfig) with
// torch's global generator, so seeded steps and predictions repeat.
class SourceSampler {
 public:
  SourceSampler() = default;
  SourceSampler(const SourceConfig& source, int64_t dim, const torch::TensorOptions& options);
  torch::Tensor draw(int64_t n) const;  // [n, dim]
  bool gaussian() const { return kind_ == SourceKind::Gaussian; }

 private:
  SourceKind kind_ = SourceKind::Gaussian;
  int64_t dim_ = 0;
  torch::TensorOptions options_;
  torch::Tensor values_;  // ZINB: [3, dim]; empirical: [rows, dim]
  double size_factor_ = 1, log_base_ = 0;
};

}  // namespace popflow

// Metric flow matching (Kapusniak et al., NeurIPS 2024): paths between coupled
// cells that follow the data rather than cross empty space. The interpolant
//   x_t = (1 - t) x0 + t x1 + t (1 - t) phi(x0, x1, t)
// has a learnt correction phi (a VectorField on x0 with x1 as conditioning),
// trained to minimise the kinetic energy  |dx_t/dt|^2_G(x_t)  under a
// data-dependent Riemannian metric G, here the LAND metric of a set of
// reference cells. The velocity field then regresses dx_t/dt along it.
#pragma once
#include <torch/torch.h>

#include "config.h"
#include "network.h"

namespace popflow {

// Diagonal of the inverse LAND metric at x ([n, d]) given reference cells
// ref ([m, d]): h_k(x) + eps (eps >= 0) with
//   h_k(x) = (1/m) sum_i (ref_ik - x_k)^2 exp(-|ref_i - x|^2 / (2 bandwidth^2)).
// Far from the data h -> 0 and G = diag(1 / (h + eps)) grows to 1/eps, so
// paths through empty space cost more. The mean (not the sum) over the
// reference cells keeps eps in squared data units whatever m is.
torch::Tensor land_inverse_metric(const torch::Tensor& x, const torch::Tensor& ref, double bandwidth, double eps);

// The interpolant network: the velocity network's shape with x1 as its
// conditioning input, its output layer zeroed so that training starts from
// the straight line.
VectorField make_interpolant(const NetworkConfig& velocity_network);

struct InterpolantSample {
  torch::Tensor xt;   // [n, d] point of the interpolant at time s
  torch::Tensor dxt;  // [n, d] its time derivative d x_t / d s
};

// The interpolant at times s ([n] in [0, 1]) between x0 and x1 ([n, d]).
// d phi / d s comes from autograd (two vector-Jacobian products: exact, no
// finite differences). With `train` the result keeps its graph to phi's
// parameters; otherwise both tensors are detached.
InterpolantSample sample_interpolant(VectorField& phi, const torch::Tensor& x0, const torch::Tensor& x1,
                                     const torch::Tensor& s, bool train);

// The metric of one interval, in absolute units: kernel width and floor.
struct LandScale {
  double bandwidth, eps;
};

// MetricConfig's settings made absolute for reference cells `ref`: a
// bandwidth of 0 becomes the median distance from a reference cell to its
// 10th nearest other reference cell (the kernel then spans a cell's
// neighbourhood whatever the data's units); eps, relative, is multiplied by
// the median over reference cells of the mean of h_k over features (the
// metric's typical inverse on the data), so that eps = 0.01 puts the floor at
// 1% of it. Computed on at most 1000 reference cells, evenly spaced.
LandScale land_scale(const torch::Tensor& ref, const MetricConfig& metric);

// Mean kinetic energy sum_k dxt_k^2 / (h_k(xt) + eps) of interpolant samples.
torch::Tensor metric_energy(const InterpolantSample& path, const torch::Tensor& ref, const LandScale& scale);

}  // namespace popflow

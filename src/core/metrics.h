// Distances between predicted and observed cell sets, as the field reports them.
// Torch-free: inputs are column-major views (cells x features), like R matrices.
#pragma once
#include <cstdint>
#include <vector>

namespace popflow {

struct MatView {
  const double* data;  // column-major: element (i, k) at data[i + k * rows]
  int rows;
  int cols;
  double operator()(int i, int k) const { return data[i + static_cast<int64_t>(k) * rows]; }
};

// Cell weights (masses, e.g. of an unbalanced flow's predictions): empty means
// uniform; otherwise one per row, >= 0 with a positive sum, normalised to 1.
// Exact Wasserstein-p (p = 1 or 2) with Euclidean ground distance.
double wasserstein(const MatView& x, const MatView& y, int p, const std::vector<double>& wx = {},
                   const std::vector<double>& wy = {});

// The MFM / CellOT gamma set for the RBF kernel MMD.
const std::vector<double>& default_mmd_gammas();
// Squared MMD (biased V-statistic) with k(a, b) = exp(-gamma |a - b|^2), averaged over gammas.
double mmd_rbf(const MatView& x, const MatView& y, const std::vector<double>& gammas,
               const std::vector<double>& wx = {}, const std::vector<double>& wy = {});
// Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic).
double energy_distance(const MatView& x, const MatView& y, const std::vector<double>& wx = {},
                       const std::vector<double>& wy = {});
// Coefficient of determination of the predicted feature means against the observed ones.
double mean_r2(const MatView& predicted, const MatView& observed);
// Pearson r between the upper triangles of the feature-correlation matrices.
double correlation_r(const MatView& predicted, const MatView& observed);

}  // namespace popflow

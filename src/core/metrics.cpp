#include "metrics.h"

#include <cmath>
#include <stdexcept>

#include "exact_ot.h"

namespace popflow {
namespace {

void check_same_cols(const MatView& x, const MatView& y) {
  if (x.cols != y.cols) throw std::invalid_argument("point sets have different numbers of features");
  if (x.rows < 1 || y.rows < 1) throw std::invalid_argument("point sets must not be empty");
}

double sq_dist(const MatView& x, int i, const MatView& y, int j) {
  double s = 0.0;
  for (int k = 0; k < x.cols; ++k) {
    double d = x(i, k) - y(j, k);
    s += d * d;
  }
  return s;
}

// Weights normalised to sum 1 (uniform when w is empty).
std::vector<double> normalised_weights(const std::vector<double>& w, int rows) {
  if (w.empty()) return std::vector<double>(rows, 1.0 / rows);
  if (static_cast<int>(w.size()) != rows) throw std::invalid_argument("one weight per cell is needed");
  double total = 0;
  for (double v : w) {
    if (!(v >= 0) || !std::isfinite(v)) throw std::invalid_argument("weights must be finite and >= 0");
    total += v;
  }
  if (!(total > 0)) throw std::invalid_argument("weights must have a positive sum");
  std::vector<double> out(w);
  for (double& v : out) v /= total;
  return out;
}

// Weighted mean of f(|a - b|^2) over all pairs (a in x, b in y).
template <typename F>
double mean_pair(const MatView& x, const MatView& y, F f, const std::vector<double>& wx,
                 const std::vector<double>& wy) {
  double s = 0.0;
  for (int i = 0; i < x.rows; ++i) {
    double si = 0.0;
    for (int j = 0; j < y.rows; ++j) si += wy[j] * f(sq_dist(x, i, y, j));
    s += wx[i] * si;
  }
  return s;
}

std::vector<double> column_means(const MatView& x) {
  std::vector<double> mu(x.cols, 0.0);
  for (int k = 0; k < x.cols; ++k) {
    for (int i = 0; i < x.rows; ++i) mu[k] += x(i, k);
    mu[k] /= x.rows;
  }
  return mu;
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = a.size();
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) { ma += a[i]; mb += b[i]; }
  ma /= n; mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  if (saa <= 0 || sbb <= 0) return std::nan("");
  return sab / std::sqrt(saa * sbb);
}

// Upper triangle (k < l) of the feature correlation matrix; constant features give NaN.
std::vector<double> correlation_upper(const MatView& x) {
  std::vector<double> mu = column_means(x), sd(x.cols, 0.0), out;
  for (int k = 0; k < x.cols; ++k) {
    for (int i = 0; i < x.rows; ++i) sd[k] += (x(i, k) - mu[k]) * (x(i, k) - mu[k]);
    sd[k] = std::sqrt(sd[k]);
  }
  for (int k = 0; k < x.cols; ++k)
    for (int l = k + 1; l < x.cols; ++l) {
      double c = 0;
      for (int i = 0; i < x.rows; ++i) c += (x(i, k) - mu[k]) * (x(i, l) - mu[l]);
      out.push_back(c / (sd[k] * sd[l]));
    }
  return out;
}

}  // namespace

double wasserstein(const MatView& x, const MatView& y, int p, const std::vector<double>& wx,
                   const std::vector<double>& wy) {
  check_same_cols(x, y);
  if (p != 1 && p != 2) throw std::invalid_argument("wasserstein: p must be 1 or 2");
  std::vector<double> cost(static_cast<size_t>(x.rows) * y.rows);
  for (int i = 0; i < x.rows; ++i)
    for (int j = 0; j < y.rows; ++j) {
      double d2 = sq_dist(x, i, y, j);
      cost[static_cast<size_t>(i) * y.rows + j] = p == 1 ? std::sqrt(d2) : d2;
    }
  double c = 0;
  if (wx.empty() && wy.empty()) {
    c = exact_transport(cost.data(), x.rows, y.rows).cost;
  } else {
    const std::vector<double> a = normalised_weights(wx, x.rows), b = normalised_weights(wy, y.rows);
    c = exact_transport_weighted(cost.data(), x.rows, y.rows, a.data(), b.data()).cost;
  }
  return p == 1 ? c : std::sqrt(std::max(c, 0.0));
}

const std::vector<double>& default_mmd_gammas() {
  static const std::vector<double> g{2.0, 1.0, 0.5, 0.1, 0.01, 0.005};
  return g;
}

double mmd_rbf(const MatView& x, const MatView& y, const std::vector<double>& gammas,
               const std::vector<double>& wx_in, const std::vector<double>& wy_in) {
  check_same_cols(x, y);
  if (gammas.empty()) throw std::invalid_argument("mmd_rbf: no kernel widths");
  const std::vector<double> wx = normalised_weights(wx_in, x.rows), wy = normalised_weights(wy_in, y.rows);
  double total = 0.0;
  for (double g : gammas) {
    auto k = [g](double d2) { return std::exp(-g * d2); };
    total += mean_pair(x, x, k, wx, wx) + mean_pair(y, y, k, wy, wy) - 2.0 * mean_pair(x, y, k, wx, wy);
  }
  return total / gammas.size();
}

double energy_distance(const MatView& x, const MatView& y, const std::vector<double>& wx_in,
                       const std::vector<double>& wy_in) {
  check_same_cols(x, y);
  const std::vector<double> wx = normalised_weights(wx_in, x.rows), wy = normalised_weights(wy_in, y.rows);
  auto dist = [](double d2) { return std::sqrt(d2); };
  return 2.0 * mean_pair(x, y, dist, wx, wy) - mean_pair(x, x, dist, wx, wx) - mean_pair(y, y, dist, wy, wy);
}

double mean_r2(const MatView& predicted, const MatView& observed) {
  check_same_cols(predicted, observed);
  std::vector<double> mp = column_means(predicted), mo = column_means(observed);
  double grand = 0;
  for (double v : mo) grand += v;
  grand /= mo.size();
  double ss_res = 0, ss_tot = 0;
  for (size_t k = 0; k < mo.size(); ++k) {
    ss_res += (mo[k] - mp[k]) * (mo[k] - mp[k]);
    ss_tot += (mo[k] - grand) * (mo[k] - grand);
  }
  if (ss_tot <= 0) return std::nan("");
  return 1.0 - ss_res / ss_tot;
}

double correlation_r(const MatView& predicted, const MatView& observed) {
  check_same_cols(predicted, observed);
  if (predicted.cols < 3) return std::nan("");  // fewer than 3 pairs: r is meaningless
  return pearson(correlation_upper(predicted), correlation_upper(observed));
}

}  // namespace popflow

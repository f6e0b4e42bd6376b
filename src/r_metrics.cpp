// Rcpp glue for the torch-free metrics (fast to compile).
#include <Rcpp.h>

#include "core/assignment.h"
#include "core/exact_ot.h"
#include "core/metrics.h"

using popflow::MatView;

namespace {
MatView view(const Rcpp::NumericMatrix& m) { return {m.begin(), m.nrow(), m.ncol()}; }
}  // namespace

// `wx`, `wy`: cell weights, or empty for uniform ones (metrics.h).
// [[Rcpp::export]]
double pf_wasserstein(Rcpp::NumericMatrix x, Rcpp::NumericMatrix y, int p, std::vector<double> wx,
                      std::vector<double> wy) {
  return popflow::wasserstein(view(x), view(y), p, wx, wy);
}

// [[Rcpp::export]]
double pf_mmd(Rcpp::NumericMatrix x, Rcpp::NumericMatrix y, std::vector<double> gammas, std::vector<double> wx,
              std::vector<double> wy) {
  return popflow::mmd_rbf(view(x), view(y), gammas, wx, wy);
}

// [[Rcpp::export]]
double pf_energy(Rcpp::NumericMatrix x, Rcpp::NumericMatrix y, std::vector<double> wx, std::vector<double> wy) {
  return popflow::energy_distance(view(x), view(y), wx, wy);
}

// [[Rcpp::export]]
double pf_mean_r2(Rcpp::NumericMatrix predicted, Rcpp::NumericMatrix observed) {
  return popflow::mean_r2(view(predicted), view(observed));
}

// [[Rcpp::export]]
double pf_correlation_r(Rcpp::NumericMatrix predicted, Rcpp::NumericMatrix observed) {
  return popflow::correlation_r(view(predicted), view(observed));
}

// Exact OT plan of a cost matrix, as (i, j, mass) rows (1-based), for tests and users.
// [[Rcpp::export]]
Rcpp::DataFrame pf_exact_plan(Rcpp::NumericMatrix cost) {
  const int n = cost.nrow(), m = cost.ncol();
  std::vector<double> row_major(static_cast<size_t>(n) * m);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) row_major[static_cast<size_t>(i) * m + j] = cost(i, j);
  auto plan = popflow::exact_transport(row_major.data(), n, m);
  Rcpp::IntegerVector I, J;
  Rcpp::NumericVector mass;
  for (const auto& e : plan.entries) {
    I.push_back(e.i + 1);
    J.push_back(e.j + 1);
    mass.push_back(e.mass);
  }
  return Rcpp::DataFrame::create(Rcpp::Named("i") = I, Rcpp::Named("j") = J, Rcpp::Named("mass") = mass);
}

// Minimum-cost assignment of a square cost matrix (1-based column per row).
// [[Rcpp::export]]
Rcpp::IntegerVector pf_assignment(Rcpp::NumericMatrix cost) {
  const int n = cost.nrow();
  if (cost.ncol() != n) Rcpp::stop("cost must be square");
  std::vector<double> row_major(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) row_major[static_cast<size_t>(i) * n + j] = cost(i, j);
  std::vector<int> col = popflow::solve_assignment(row_major.data(), n);
  Rcpp::IntegerVector out(col.begin(), col.end());
  return out + 1;
}

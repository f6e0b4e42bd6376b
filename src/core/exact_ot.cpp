#include "exact_ot.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#ifndef LEMON_ONLY_TEMPLATES
#define LEMON_ONLY_TEMPLATES  // header-only use: no -lemon needed
#endif
#include <lemon/network_simplex.h>
#include <lemon/smart_graph.h>

namespace popflow {

namespace {

// Integer supplies of `units` in all, proportional to w (the rounding error
// goes to the largest entry).
std::vector<int64_t> integer_supplies(const double* w, int n, int64_t units) {
  double total = 0;
  for (int i = 0; i < n; ++i) {
    if (!(w[i] >= 0) || !std::isfinite(w[i])) throw std::invalid_argument("exact_transport: weights must be >= 0");
    total += w[i];
  }
  if (!(total > 0)) throw std::invalid_argument("exact_transport: weights must have a positive sum");
  std::vector<int64_t> out(n);
  int64_t sum = 0;
  int largest = 0;
  for (int i = 0; i < n; ++i) {
    out[i] = std::llround(w[i] / total * static_cast<double>(units));
    sum += out[i];
    if (out[i] > out[largest]) largest = i;
  }
  out[largest] += units - sum;
  return out;
}

// The optimal plan for integer supplies `out` (sources) and `in` (sinks),
// each summing to `total`.
TransportPlan solve_transport(const double* cost, int n, int m, const std::vector<int64_t>& out,
                              const std::vector<int64_t>& in, double total) {
  using Graph = lemon::SmartDigraph;
  Graph g;
  g.reserveNode(n + m);
  g.reserveArc(static_cast<int>(static_cast<int64_t>(n) * m));
  std::vector<Graph::Node> src(n), dst(m);
  for (int i = 0; i < n; ++i) src[i] = g.addNode();
  for (int j = 0; j < m; ++j) dst[j] = g.addNode();
  // Integer arc costs: the costs scaled so the largest magnitude is 2^40, then
  // rounded. With double costs the pivots' reduced costs carry rounding noise,
  // and on degenerate problems (duplicate points) the simplex cycled forever;
  // in exact integer arithmetic it cannot. The rounding (at most 2^-41 of the
  // largest cost per arc) costs the plan at most ~1e-12 of the largest cost.
  double largest = 0;
  const int64_t nm = static_cast<int64_t>(n) * m;
  for (int64_t k = 0; k < nm; ++k) {
    if (!std::isfinite(cost[k])) throw std::invalid_argument("exact_transport: costs must be finite");
    largest = std::max(largest, std::abs(cost[k]));
  }
  const double scale = largest > 0 ? std::ldexp(1.0, 40) / largest : 1.0;
  Graph::ArcMap<int64_t> arc_cost(g);
  Graph::NodeMap<int64_t> supply(g);
  for (int i = 0; i < n; ++i) supply[src[i]] = out[i];
  for (int j = 0; j < m; ++j) supply[dst[j]] = -in[j];
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j)
      arc_cost[g.addArc(src[i], dst[j])] = std::llround(cost[static_cast<int64_t>(i) * m + j] * scale);

  using Simplex = lemon::NetworkSimplex<Graph, int64_t, int64_t>;
  Simplex solver(g);
  solver.costMap(arc_cost).supplyMap(supply);
  auto status = solver.run(Simplex::BLOCK_SEARCH);
  if (status != Simplex::OPTIMAL)
    throw std::runtime_error("exact_transport: network simplex did not reach an optimum (status " +
                             std::to_string(static_cast<int>(status)) + ")");

  TransportPlan plan;
  for (Graph::ArcIt a(g); a != lemon::INVALID; ++a) {
    int64_t f = solver.flow(a);
    if (f <= 0) continue;
    int i = g.id(g.source(a));
    int j = g.id(g.target(a)) - n;
    double mass = static_cast<double>(f) / total;
    plan.entries.push_back({i, j, mass});
    plan.cost += mass * cost[static_cast<int64_t>(i) * m + j];
  }
  return plan;
}

}  // namespace

TransportPlan exact_transport_weighted(const double* cost, int n, int m, const double* a, const double* b) {
  if (n <= 0 || m <= 0) throw std::invalid_argument("exact_transport: empty point set");
  const int64_t units = int64_t{1} << 40;
  return solve_transport(cost, n, m, integer_supplies(a, n, units), integer_supplies(b, m, units),
                         static_cast<double>(units));
}

TransportPlan exact_transport(const double* cost, int n, int m) {
  if (n <= 0 || m <= 0) throw std::invalid_argument("exact_transport: empty point set");
  // Uniform weights become integer supplies: each source sends m/g units and
  // each target receives n/g (g = gcd), so every plan entry is an exact
  // integer; with n == m this is an assignment problem with unit flows.
  const int64_t g_nm = std::gcd(n, m);
  const int64_t out_units = m / g_nm, in_units = n / g_nm;
  return solve_transport(cost, n, m, std::vector<int64_t>(n, out_units), std::vector<int64_t>(m, in_units),
                         static_cast<double>(n) * static_cast<double>(out_units));
}

}  // namespace popflow

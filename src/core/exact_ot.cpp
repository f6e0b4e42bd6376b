#include "exact_ot.h"

#include <numeric>
#include <stdexcept>
#include <string>

#ifndef LEMON_ONLY_TEMPLATES
#define LEMON_ONLY_TEMPLATES  // header-only use: no -lemon needed
#endif
#include <lemon/network_simplex.h>
#include <lemon/smart_graph.h>

namespace popflow {

TransportPlan exact_transport(const double* cost, int n, int m) {
  if (n <= 0 || m <= 0) throw std::invalid_argument("exact_transport: empty point set");
  using Graph = lemon::SmartDigraph;
  Graph g;
  g.reserveNode(n + m);
  g.reserveArc(static_cast<int>(static_cast<int64_t>(n) * m));
  std::vector<Graph::Node> src(n), dst(m);
  for (int i = 0; i < n; ++i) src[i] = g.addNode();
  for (int j = 0; j < m; ++j) dst[j] = g.addNode();
  // Uniform weights become integer supplies: each source sends m/g units and
  // each target receives n/g (g = gcd), so every plan entry is an exact
  // integer; with n == m this is an assignment problem with unit flows.
  const int64_t g_nm = std::gcd(n, m);
  const int64_t out_units = m / g_nm, in_units = n / g_nm;
  Graph::ArcMap<double> arc_cost(g);
  Graph::NodeMap<int64_t> supply(g);
  for (int i = 0; i < n; ++i) supply[src[i]] = out_units;
  for (int j = 0; j < m; ++j) supply[dst[j]] = -in_units;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j)
      arc_cost[g.addArc(src[i], dst[j])] = cost[static_cast<int64_t>(i) * m + j];

  lemon::NetworkSimplex<Graph, int64_t, double> solver(g);
  solver.costMap(arc_cost).supplyMap(supply);
  auto status = solver.run(lemon::NetworkSimplex<Graph, int64_t, double>::BLOCK_SEARCH);
  if (status != lemon::NetworkSimplex<Graph, int64_t, double>::OPTIMAL)
    throw std::runtime_error("exact_transport: network simplex did not reach an optimum (status " +
                             std::to_string(static_cast<int>(status)) + ")");

  TransportPlan plan;
  const double total = static_cast<double>(n) * static_cast<double>(out_units);
  for (Graph::ArcIt a(g); a != lemon::INVALID; ++a) {
    int64_t f = solver.flow(a);
    if (f <= 0) continue;
    int i = g.id(g.source(a));
    int j = g.id(g.target(a)) - n;
    double mass = static_cast<double>(f) / total;
    plan.entries.push_back({i, j, mass});
    plan.cost += mass * arc_cost[a];
  }
  return plan;
}

}  // namespace popflow

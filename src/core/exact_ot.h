// Exact optimal transport between two uniform point sets by network simplex
// (LEMON). Torch-free so metrics and couplings share it.
#pragma once
#include <cstdint>
#include <vector>

namespace popflow {

struct PlanEntry {
  int32_t i;
  int32_t j;
  double mass;  // fraction of total mass moved from i to j (sums to 1)
};

struct TransportPlan {
  std::vector<PlanEntry> entries;  // non-zero entries of the plan
  double cost = 0.0;               // sum of mass * cost
};

// cost is n x m, row-major (cost[i * m + j]). Uniform weights 1/n and 1/m.
TransportPlan exact_transport(const double* cost, int n, int m);

// The same with weights a (n) and b (m), each >= 0 with a positive sum; each
// side is normalised to mass 1. The weights are rounded to integer supplies
// of 2^40 units in all (relative error ~1e-12), so the network simplex stays exact.
TransportPlan exact_transport_weighted(const double* cost, int n, int m, const double* a, const double* b);

}  // namespace popflow

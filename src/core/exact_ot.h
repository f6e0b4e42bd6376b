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

}  // namespace popflow

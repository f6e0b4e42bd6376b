// Linear assignment (equal-size exact OT with uniform weights): a
// Jonker-Volgenant shortest-augmenting-path solver. For n == m the exact OT
// plan is a permutation, and this is several times faster than network
// simplex; exact_transport() (LEMON) stays the reference it is tested against.
#pragma once
#include <vector>

namespace popflow {

// cost: n x n, row-major. Returns col[i], the column assigned to row i, of a
// minimum-cost perfect matching.
std::vector<int> solve_assignment(const double* cost, int n);

}  // namespace popflow

// Linear assignment (equal-size exact OT with uniform weights). For n == m the
// exact OT plan is a permutation, and these are several times faster than
// network simplex; exact_transport() (LEMON) stays the reference they are
// tested against.
#pragma once
#include <vector>

namespace popflow {

// cost: n x n, row-major. Returns col[i], the column assigned to row i, of a
// minimum-cost perfect matching. An epsilon-scaling auction first brings the
// column prices close to optimal, then Jonker-Volgenant's augmenting-row
// reduction and shortest augmenting paths finish the exact optimum. Robust to
// costs whose nearest-neighbour structure is far from the optimal matching
// (a shifted, narrower target), where plain JV's column reduction leaves most
// rows to long augmenting paths.
std::vector<int> solve_assignment(const double* cost, int n);

// Plain Jonker-Volgenant (column reduction, reduction transfer, augmenting
// row reduction, shortest augmenting paths): the earlier solver, kept as a
// reference for tests and benchmarks.
std::vector<int> solve_assignment_jv(const double* cost, int n);

}  // namespace popflow

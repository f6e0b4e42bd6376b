#include "assignment.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>

namespace popflow {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The solver's state: the matching both ways and the column prices v (dual
// variables; the reduced cost of (i, j) is cost(i, j) - v[j]).
struct Matching {
  explicit Matching(int n) : row_col(n, -1), col_row(n, -1), v(n, 0.0) {}
  std::vector<int> row_col, col_row;
  std::vector<double> v;
};

// Smallest and second-smallest reduced cost of row ci; returns the column of the smallest.
inline int best_two(const double* ci, const double* v, int n, double& u1, double& u2) {
  u1 = ci[0] - v[0];
  u2 = kInf;
  int j1 = 0;
  for (int j = 1; j < n; ++j) {
    const double h = ci[j] - v[j];
    if (h < u2) {
      if (h < u1) {
        u2 = u1;
        u1 = h;
        j1 = j;
      } else {
        u2 = h;
      }
    }
  }
  return j1;
}

// JV steps 1 and 2: column reduction and reduction transfer. Returns the free rows.
std::vector<int> column_reduction(const double* cost, int n, Matching& s) {
  auto c = [cost, n](int i, int j) { return cost[static_cast<size_t>(i) * n + j]; };
  const double inf = kInf;
  std::vector<int>& row_col = s.row_col;
  std::vector<int>& col_row = s.col_row;
  std::vector<double>& v = s.v;
  std::vector<int> matches(n, 0), free_rows;
  // 1. Column reduction: each column goes to its cheapest row, if that row is still free.
  for (int j = n - 1; j >= 0; --j) {
    int imin = 0;
    for (int i = 1; i < n; ++i)
      if (c(i, j) < c(imin, j)) imin = i;
    v[j] = c(imin, j);
    if (++matches[imin] == 1) {
      row_col[imin] = j;
      col_row[j] = imin;
    } else if (v[j] < v[row_col[imin]]) {
      col_row[row_col[imin]] = -1;
      row_col[imin] = j;
      col_row[j] = imin;
    }
  }
  // 2. Reduction transfer from rows matched once; collect the unmatched rows.
  for (int i = 0; i < n; ++i) {
    if (matches[i] == 0) {
      free_rows.push_back(i);
    } else if (matches[i] == 1) {
      const int j1 = row_col[i];
      double m = inf;
      for (int j = 0; j < n; ++j)
        if (j != j1) m = std::min(m, c(i, j) - v[j]);
      if (m < inf) v[j1] -= m;
    } else {
      // Row won several columns in step 1 but keeps one: the others are free.
    }
  }
  // Rows that won several columns keep only row_col[i]; make the rest consistent.
  for (int j = 0; j < n; ++j)
    if (col_row[j] >= 0 && row_col[col_row[j]] != j) col_row[j] = -1;

  return free_rows;
}

// JV step 3: augmenting row reduction, an auction with zero increments that
// keeps every matched row on a column of least reduced cost. Leaves the rows
// it could not place in free_rows.
void augmenting_row_reduction(const double* cost, int n, Matching& s, std::vector<int>& free_rows) {
  auto c = [cost, n](int i, int j) { return cost[static_cast<size_t>(i) * n + j]; };
  const double inf = kInf;
  std::vector<int>& row_col = s.row_col;
  std::vector<int>& col_row = s.col_row;
  std::vector<double>& v = s.v;
  // 3. Augmenting row reduction, two passes: cheap partial auctions for free rows.
  // Each pass gets a budget of bids: on low-dimensional squared-Euclidean costs
  // the auction's price steps shrink and rows outbid each other millions of
  // times (1 s for n = 256 in 2-d); rows left over go to the exact step 4.
  for (int pass = 0; pass < 2 && !free_rows.empty(); ++pass) {
    std::vector<int> todo = free_rows;
    free_rows.clear();
    size_t k = 0;
    int64_t bids_left = 8 * static_cast<int64_t>(n);
    while (k < todo.size()) {
      if (--bids_left < 0) {
        free_rows.insert(free_rows.end(), todo.begin() + static_cast<std::ptrdiff_t>(k), todo.end());
        break;
      }
      const int i = todo[k++];
      double u1 = c(i, 0) - v[0], u2 = inf;
      int j1 = 0, j2 = -1;
      for (int j = 1; j < n; ++j) {
        const double h = c(i, j) - v[j];
        if (h < u2) {
          if (h >= u1) {
            u2 = h;
            j2 = j;
          } else {
            u2 = u1;
            u1 = h;
            j2 = j1;
            j1 = j;
          }
        }
      }
      int i0 = col_row[j1];
      const bool strictly = u1 < u2;
      if (strictly) {
        v[j1] -= (u2 - u1);
      } else if (i0 >= 0 && j2 >= 0) {
        j1 = j2;
        i0 = col_row[j2];
      }
      if (i0 >= 0) row_col[i0] = -1;
      row_col[i] = j1;
      col_row[j1] = i;
      if (i0 >= 0) {
        if (strictly) {
          todo[--k] = i0;  // displaced row bids again at once
        } else {
          free_rows.push_back(i0);
        }
      }
    }
  }

}

// JV step 4: a Dijkstra-like shortest augmenting path from each free row; exact
// given that every matched row sits on a column of least reduced cost.
void augment(const double* cost, int n, Matching& s, const std::vector<int>& free_rows) {
  auto c = [cost, n](int i, int j) { return cost[static_cast<size_t>(i) * n + j]; };
  std::vector<int>& row_col = s.row_col;
  std::vector<int>& col_row = s.col_row;
  std::vector<double>& v = s.v;
  // 4. Augmentation: Dijkstra-like shortest augmenting path from each free row.
  std::vector<double> d(n);
  std::vector<int> pred(n), cols(n);
  for (int free_row : free_rows) {
    for (int j = 0; j < n; ++j) {
      d[j] = c(free_row, j) - v[j];
      pred[j] = free_row;
      cols[j] = j;
    }
    // cols[0, low): scanned; [low, up): at the current minimum, to scan; [up, n): unscanned.
    int low = 0, up = 0, last = 0, end_col = -1;
    double dmin = 0;
    while (end_col < 0) {
      if (up == low) {
        last = low - 1;
        dmin = d[cols[up++]];
        for (int k = up; k < n; ++k) {
          const int j = cols[k];
          const double h = d[j];
          if (h <= dmin) {
            if (h < dmin) {
              up = low;
              dmin = h;
            }
            cols[k] = cols[up];
            cols[up++] = j;
          }
        }
        for (int k = low; k < up; ++k)
          if (col_row[cols[k]] < 0) {
            end_col = cols[k];
            break;
          }
      }
      if (end_col >= 0) break;
      const int j1 = cols[low++];
      const int i = col_row[j1];
      const double h = c(i, j1) - v[j1] - dmin;
      for (int k = up; k < n; ++k) {
        const int j = cols[k];
        const double v2 = c(i, j) - v[j] - h;
        if (v2 < d[j]) {
          pred[j] = i;
          if (v2 == dmin) {
            if (col_row[j] < 0) {
              end_col = j;
              break;
            }
            cols[k] = cols[up];
            cols[up++] = j;
          }
          d[j] = v2;
        }
      }
    }
    for (int k = 0; k <= last; ++k) {
      const int j = cols[k];
      v[j] += d[j] - dmin;
    }
    int i;
    do {
      i = pred[end_col];
      col_row[end_col] = i;
      const int next = row_col[i];
      row_col[i] = end_col;
      end_col = next;
    } while (i != free_row);
  }
}

// Column prices from a Gauss-Seidel auction with epsilon scaling (Bertsekas):
// one free row at a time takes its cheapest column and lowers that column's
// price by the gap to its second-cheapest plus eps, displacing the previous
// holder; eps starts at a quarter of the cost spread and shrinks 5-fold per
// stage down to 1e-5 of it. The prices end within a few eps of optimal duals
// whatever the data's shape, unlike column reduction, whose prices are the
// nearest-neighbour ones (far off when the target is shifted and narrower).
void auction_prices(const double* cost, int n, Matching& s) {
  double lo = kInf, hi = -kInf;
  const size_t nn = static_cast<size_t>(n) * n;
  for (size_t k = 0; k < nn; ++k) {
    lo = std::min(lo, cost[k]);
    hi = std::max(hi, cost[k]);
  }
  const double spread = hi - lo;
  if (!(spread > 0) || !std::isfinite(spread)) return;  // constant costs: any matching is optimal
  std::vector<int> todo;
  todo.reserve(n);
  for (double eps = spread / 4; eps >= spread * 1e-5; eps /= 5) {
    std::fill(s.row_col.begin(), s.row_col.end(), -1);
    std::fill(s.col_row.begin(), s.col_row.end(), -1);
    todo.clear();
    for (int i = n - 1; i >= 0; --i) todo.push_back(i);
    while (!todo.empty()) {
      const int i = todo.back();
      todo.pop_back();
      double u1, u2;
      const int j = best_two(cost + static_cast<size_t>(i) * n, s.v.data(), n, u1, u2);
      s.v[j] -= (u2 - u1) + eps;
      const int prev = s.col_row[j];
      s.col_row[j] = i;
      s.row_col[i] = j;
      if (prev >= 0) {
        s.row_col[prev] = -1;
        todo.push_back(prev);
      }
    }
  }
  // The auction's matching is only eps-optimal; JV restarts from its prices.
  std::fill(s.row_col.begin(), s.row_col.end(), -1);
  std::fill(s.col_row.begin(), s.col_row.end(), -1);
}

}  // namespace

std::vector<int> solve_assignment_jv(const double* cost, int n) {
  if (n <= 0) throw std::invalid_argument("solve_assignment: empty problem");
  Matching s(n);
  std::vector<int> free_rows = column_reduction(cost, n, s);
  augmenting_row_reduction(cost, n, s, free_rows);
  augment(cost, n, s, free_rows);
  return s.row_col;
}

std::vector<int> solve_assignment(const double* cost, int n) {
  if (n <= 0) throw std::invalid_argument("solve_assignment: empty problem");
  if (n < 2) return {0};
  Matching s(n);
  auction_prices(cost, n, s);
  std::vector<int> free_rows(n);
  for (int i = 0; i < n; ++i) free_rows[i] = i;
  augmenting_row_reduction(cost, n, s, free_rows);
  augment(cost, n, s, free_rows);
  return s.row_col;
}

}  // namespace popflow

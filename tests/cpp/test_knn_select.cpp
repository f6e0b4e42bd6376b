// The k smallest entries per row (knn_select.h), the selection of the kNN graphs.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "check.h"
#include "knn_select.h"

using namespace popflow;

namespace {

// Each row's k smallest columns by sorting (value, column) pairs: smallest
// first, ties in column order, NaN last.
torch::Tensor sorted_reference(const torch::Tensor& d, int64_t k) {
  auto out = torch::empty({d.size(0), k}, torch::kLong);
  auto a = d.accessor<float, 2>();
  for (int64_t r = 0; r < d.size(0); ++r) {
    std::vector<std::pair<float, int64_t>> row;
    for (int64_t j = 0; j < d.size(1); ++j) row.push_back({a[r][j], j});
    std::stable_sort(row.begin(), row.end(), [](const auto& x, const auto& y) {
      if (std::isnan(x.first) || std::isnan(y.first)) return !std::isnan(x.first) && std::isnan(y.first);
      if (x.first == 0.0f && y.first == 0.0f) return std::signbit(x.first) && !std::signbit(y.first);
      return x.first < y.first;
    });
    for (int64_t j = 0; j < k; ++j) out[r][j] = row[static_cast<size_t>(j)].second;
  }
  return out;
}

}  // namespace

TEST_CASE("smallest_k_per_row: the k smallest columns, smallest first, from every kernel") {
  torch::manual_seed(70);
  const auto distances = torch::rand({37, 301}) * 10;  // no ties
  // Ties everywhere: values 0..4, so each row's k-th smallest is shared by many columns.
  const auto tied = torch::randint(0, 5, {23, 64}).to(torch::kFloat);
  for (const int64_t k : {1, 7, 50, 301}) {
    const auto expected = sorted_reference(distances, k);
    const auto got = smallest_k_per_row(distances, k);
    PF_CHECK(got.sizes() == expected.sizes() && got.scalar_type() == torch::kLong);
    PF_CHECK(torch::equal(got, expected));
    // Without ties, LibTorch's topk (what other devices and types take) agrees.
    PF_CHECK(torch::equal(got, std::get<1>(torch::topk(distances, k, 1, false, true))));
    if (k <= 64) PF_CHECK(torch::equal(smallest_k_per_row(tied, k), sorted_reference(tied, k)));
    // The same columns in increasing order, on request.
    PF_CHECK(torch::equal(smallest_k_per_row(distances, k, false), std::get<0>(expected.sort(1))));
    if (k <= 64)
      PF_CHECK(torch::equal(smallest_k_per_row(tied, k, false), std::get<0>(sorted_reference(tied, k).sort(1))));
    // Every kernel this CPU runs gives the same result; one it cannot run throws.
    for (VectorKernel kernel : {VectorKernel::Portable, VectorKernel::Avx2, VectorKernel::Avx512}) {
      if (kernel > fastest_vector_kernel()) {
        PF_CHECK_THROWS_AS(smallest_k_per_row(distances, k, true, kernel), std::invalid_argument);
        continue;
      }
      PF_CHECK(torch::equal(smallest_k_per_row(distances, k, true, kernel), expected));
      if (k <= 64) PF_CHECK(torch::equal(smallest_k_per_row(tied, k, true, kernel), sorted_reference(tied, k)));
    }
  }
  // Rows of 1 to 40 columns: every length of the vector loops' tails.
  for (int64_t n = 1; n <= 40; ++n) {
    const auto d = torch::randint(0, 6, {3, n}).to(torch::kFloat);
    for (const int64_t k : {int64_t{1}, (n + 1) / 2, n})
      PF_CHECK(torch::equal(smallest_k_per_row(d, k), sorted_reference(d, k)));
  }
  // Signs, zeros of both signs, infinity and NaN (NaN last).
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const auto special =
      torch::tensor({nan, inf, 1.0f, -0.0f, std::copysign(nan, -1.0f), 0.0f, -2.0f, -inf}).reshape({1, 8});
  PF_CHECK(torch::equal(smallest_k_per_row(special, 8),
                        torch::tensor({7, 6, 3, 5, 2, 1, 0, 4}, torch::kLong).reshape({1, 8})));
  PF_CHECK(torch::equal(smallest_k_per_row(special, 3), torch::tensor({7, 6, 3}, torch::kLong).reshape({1, 3})));
  // Rows split across two threads give what one thread gives.
  const auto many = torch::rand({2000, 80});
  const auto one = smallest_k_per_row(many, 10);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  const auto two = smallest_k_per_row(many, 10);
  at::set_num_threads(threads);
  PF_CHECK(torch::equal(one, two));
  // Doubles go to topk: the same columns where nothing ties.
  PF_CHECK(torch::equal(smallest_k_per_row(distances.to(torch::kDouble), 7), sorted_reference(distances, 7)));
  PF_CHECK_THROWS_AS(smallest_k_per_row(distances, 0), std::invalid_argument);
  PF_CHECK_THROWS_AS(smallest_k_per_row(distances, 302), std::invalid_argument);
  PF_CHECK_THROWS_AS(smallest_k_per_row(distances.flatten(), 3), std::invalid_argument);
}

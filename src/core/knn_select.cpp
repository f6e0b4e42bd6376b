#include "knn_select.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"

#ifdef POPFLOW_X86_AVX2
#include <immintrin.h>
#endif

namespace popflow {

namespace {

// A float's bits as an int32 that orders as the float does (-0 just below
// +0): negative floats' lower 31 bits are flipped, so that larger magnitudes
// compare lower. NaN of either sign (x86's arithmetic makes negative ones)
// goes above infinity.
constexpr int32_t kNanKey = std::numeric_limits<int32_t>::max();

inline int32_t order_key(float f) {
  int32_t b;
  std::memcpy(&b, &f, sizeof b);
  return std::isnan(f) ? kNanKey : b ^ ((b >> 31) & 0x7fffffff);
}

// Each kernel's three passes over a row: its keys (and their least and
// greatest), how many keys are <= t, and the columns of those keys in
// increasing order (`first`: the column of key[0]; the vector kernels pass
// their tails on with theirs).
struct SelectPasses {
  void (*keys)(const float* row, int64_t n, int32_t* key, int32_t& lo, int32_t& hi);
  int64_t (*count_at_most)(const int32_t* key, int64_t n, int32_t t);
  int64_t (*collect_at_most)(const int32_t* key, int64_t n, int32_t t, int32_t* columns, int32_t first);
};

void keys_scalar(const float* row, int64_t n, int32_t* key, int32_t& lo, int32_t& hi) {
  for (int64_t j = 0; j < n; ++j) {
    key[j] = order_key(row[j]);
    lo = std::min(lo, key[j]);
    hi = std::max(hi, key[j]);
  }
}

int64_t count_at_most_scalar(const int32_t* key, int64_t n, int32_t t) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += key[i] <= t;
  return c;
}

int64_t collect_at_most_scalar(const int32_t* key, int64_t n, int32_t t, int32_t* columns, int32_t first) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i)
    if (key[i] <= t) columns[c++] = first + static_cast<int32_t>(i);
  return c;
}

#ifdef POPFLOW_X86_AVX2
__attribute__((target("avx2"))) void keys_avx2(const float* row, int64_t n, int32_t* key, int32_t& lo,
                                                int32_t& hi) {
  const __m256i flip = _mm256_set1_epi32(0x7fffffff), nan_key = _mm256_set1_epi32(kNanKey);
  __m256i lo_v = _mm256_set1_epi32(lo), hi_v = _mm256_set1_epi32(hi);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(row + i);
    const __m256i b = _mm256_castps_si256(v);
    __m256i k = _mm256_xor_si256(b, _mm256_and_si256(_mm256_srai_epi32(b, 31), flip));
    k = _mm256_blendv_epi8(k, nan_key, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(key + i), k);
    lo_v = _mm256_min_epi32(lo_v, k);
    hi_v = _mm256_max_epi32(hi_v, k);
  }
  alignas(32) int32_t l[8], h[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l), lo_v);
  _mm256_store_si256(reinterpret_cast<__m256i*>(h), hi_v);
  for (int j = 0; j < 8; ++j) {
    lo = std::min(lo, l[j]);
    hi = std::max(hi, h[j]);
  }
  keys_scalar(row + i, n - i, key + i, lo, hi);
}

__attribute__((target("avx2"))) int64_t count_at_most_avx2(const int32_t* key, int64_t n, int32_t t) {
  const __m256i tv = _mm256_set1_epi32(t);
  int64_t above = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i gt = _mm256_cmpgt_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + i)), tv);
    above += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(gt))));
  }
  return i - above + count_at_most_scalar(key + i, n - i, t);
}

__attribute__((target("avx2"))) int64_t collect_at_most_avx2(const int32_t* key, int64_t n, int32_t t,
                                                              int32_t* columns, int32_t first) {
  const __m256i tv = _mm256_set1_epi32(t);
  int64_t c = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i gt = _mm256_cmpgt_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + i)), tv);
    unsigned at_most = ~static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(gt))) & 0xffu;
    for (; at_most != 0; at_most &= at_most - 1)
      columns[c++] = first + static_cast<int32_t>(i) + __builtin_ctz(at_most);
  }
  return c + collect_at_most_scalar(key + i, n - i, t, columns + c, first + static_cast<int32_t>(i));
}

__attribute__((target("avx512f"))) void keys_avx512(const float* row, int64_t n, int32_t* key, int32_t& lo,
                                                     int32_t& hi) {
  const __m512i flip = _mm512_set1_epi32(0x7fffffff), nan_key = _mm512_set1_epi32(kNanKey);
  __m512i lo_v = _mm512_set1_epi32(lo), hi_v = _mm512_set1_epi32(hi);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(row + i);
    const __m512i b = _mm512_castps_si512(v);
    __m512i k = _mm512_xor_si512(b, _mm512_and_si512(_mm512_srai_epi32(b, 31), flip));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), nan_key);
    _mm512_storeu_si512(key + i, k);
    lo_v = _mm512_min_epi32(lo_v, k);
    hi_v = _mm512_max_epi32(hi_v, k);
  }
  lo = std::min(lo, _mm512_reduce_min_epi32(lo_v));
  hi = std::max(hi, _mm512_reduce_max_epi32(hi_v));
  keys_avx2(row + i, n - i, key + i, lo, hi);
}

// Counts in two vector accumulators (each lane adds 1 where its key is <= t):
// no mask-to-register move and scalar add in the loop.
__attribute__((target("avx512f"))) int64_t count_at_most_avx512(const int32_t* key, int64_t n, int32_t t) {
  const __m512i tv = _mm512_set1_epi32(t), one = _mm512_set1_epi32(1);
  __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    c0 = _mm512_mask_add_epi32(c0, _mm512_cmple_epi32_mask(_mm512_loadu_si512(key + i), tv), c0, one);
    c1 = _mm512_mask_add_epi32(c1, _mm512_cmple_epi32_mask(_mm512_loadu_si512(key + i + 16), tv), c1, one);
  }
  for (; i + 16 <= n; i += 16)
    c0 = _mm512_mask_add_epi32(c0, _mm512_cmple_epi32_mask(_mm512_loadu_si512(key + i), tv), c0, one);
  return _mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1)) + count_at_most_avx2(key + i, n - i, t);
}

__attribute__((target("avx512f"))) int64_t collect_at_most_avx512(const int32_t* key, int64_t n, int32_t t,
                                                                   int32_t* columns, int32_t first) {
  const __m512i tv = _mm512_set1_epi32(t), step = _mm512_set1_epi32(16);
  __m512i column = _mm512_add_epi32(_mm512_set1_epi32(first),
                                    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  int64_t c = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __mmask16 at_most = _mm512_cmple_epi32_mask(_mm512_loadu_si512(key + i), tv);
    _mm512_mask_compressstoreu_epi32(columns + c, at_most, column);
    c += __builtin_popcount(static_cast<unsigned>(at_most));
    column = _mm512_add_epi32(column, step);
  }
  return c + collect_at_most_avx2(key + i, n - i, t, columns + c, first + static_cast<int32_t>(i));
}
#endif

SelectPasses passes_of(VectorKernel kernel) {
#ifdef POPFLOW_X86_AVX2
  if (kernel == VectorKernel::Avx512) return {keys_avx512, count_at_most_avx512, collect_at_most_avx512};
  if (kernel == VectorKernel::Avx2) return {keys_avx2, count_at_most_avx2, collect_at_most_avx2};
#endif
  (void)kernel;
  return {keys_scalar, count_at_most_scalar, collect_at_most_scalar};
}

// Buffers one thread reuses from row to row.
struct RowBuffers {
  std::vector<int32_t> key, columns;
  std::vector<uint64_t> order;
};

// The smallest t with at least k of the row's n keys <= t, the keys within
// [lo, hi]. Each step counts the keys <= a trial value: where a straight
// line through the two ends' counts reaches k (a few steps where the keys
// spread evenly), or halfway after a step that did not halve the range (so at
// most about 64 steps whatever the keys). Stops early where exactly k are <=
// the trial value.
int32_t kth_smallest_key(const int32_t* key, int64_t n, int64_t k, int32_t lo, int32_t hi,
                         int64_t (*count_at_most)(const int32_t*, int64_t, int32_t)) {
  int64_t below_lo = 0, at_most_hi = n;  // keys < lo, keys <= hi
  bool halve = false;
  while (lo < hi) {
    const int64_t span = static_cast<int64_t>(hi) - lo;
    int64_t step = span / 2;
    if (!halve) {
      const double reach = static_cast<double>(k - below_lo) / static_cast<double>(at_most_hi - below_lo);
      step = std::min(span - 1, static_cast<int64_t>(reach * static_cast<double>(span)));
    }
    const auto mid = static_cast<int32_t>(lo + step);
    const int64_t c = count_at_most(key, n, mid);
    if (c == k) return mid;
    if (c > k) {
      hi = mid;
      at_most_hi = c;
    } else {
      lo = mid + 1;
      below_lo = c;
    }
    halve = !halve && 2 * (static_cast<int64_t>(hi) - lo) > span;
  }
  return hi;
}

// One row of n entries: its k smallest columns into `out`, smallest first or
// in increasing column order.
void select_row(const float* row, int64_t n, int64_t k, bool nearest_first, const SelectPasses& passes,
                RowBuffers& buf, int64_t* out) {
  int32_t lo = std::numeric_limits<int32_t>::max(), hi = std::numeric_limits<int32_t>::min();
  const int32_t* key = buf.key.data();
  passes.keys(row, n, buf.key.data(), lo, hi);
  const int32_t t = kth_smallest_key(key, n, k, lo, hi, passes.count_at_most);
  // The columns of keys <= t, in increasing order. Where there are more
  // than k, the surplus are keys equal to t (fewer than k are below it):
  // keep those of the lowest columns.
  int32_t* columns = buf.columns.data();
  const int64_t c = passes.collect_at_most(key, n, t, columns, 0);
  if (c > k) {
    int64_t ties_left = k;
    for (int64_t i = 0; i < c; ++i) ties_left -= key[columns[i]] < t;
    int64_t kept = 0;
    for (int64_t i = 0; i < c && kept < k; ++i) {
      const bool tie = key[columns[i]] == t;
      if (tie && ties_left == 0) continue;
      ties_left -= tie;
      columns[kept++] = columns[i];
    }
  }
  if (!nearest_first) {
    std::copy(columns, columns + k, out);
    return;
  }
  // Smallest first, ties by column: (key, column) packed in one unsigned
  // integer, the key's sign bit flipped so that it orders as the key does.
  uint64_t* order = buf.order.data();
  for (int64_t i = 0; i < k; ++i)
    order[i] = (static_cast<uint64_t>(static_cast<uint32_t>(key[columns[i]]) ^ 0x80000000u) << 32) |
               static_cast<uint32_t>(columns[i]);
  std::sort(order, order + k);
  for (int64_t i = 0; i < k; ++i) out[i] = static_cast<int64_t>(order[i] & 0xffffffffu);
}

}  // namespace

torch::Tensor smallest_k_per_row(const torch::Tensor& d, int64_t k, bool nearest_first) {
  return smallest_k_per_row(d, k, nearest_first, fastest_vector_kernel());
}

torch::Tensor smallest_k_per_row(const torch::Tensor& d, int64_t k, bool nearest_first, VectorKernel kernel) {
  if (!cpu_runs(kernel)) throw std::invalid_argument("knn select: this CPU cannot run the requested vector kernel");
  if (d.dim() != 2) throw std::invalid_argument("knn select: a 2-d matrix is needed");
  const int64_t rows = d.size(0), n = d.size(1);
  if (k < 1 || k > n)
    throw std::invalid_argument("knn select: k = " + std::to_string(k) + " needs 1 <= k <= " + std::to_string(n));
  if (!d.device().is_cpu() || d.scalar_type() != torch::kFloat) {
    auto columns = std::get<1>(torch::topk(d, k, 1, /*largest=*/false, /*sorted=*/true));
    return nearest_first ? columns : std::get<0>(columns.sort(1));
  }
  const auto dc = d.contiguous();
  auto out = torch::empty({rows, k}, torch::kLong);
  const float* dp = dc.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  const SelectPasses passes = passes_of(kernel);
  // A grain of rows worth about 32k entries, as LibTorch splits element-wise work.
  const int64_t grain = std::max<int64_t>(1, 32768 / n);  // n >= k >= 1
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    RowBuffers buf{std::vector<int32_t>(static_cast<size_t>(n)), std::vector<int32_t>(static_cast<size_t>(n)),
                   std::vector<uint64_t>(static_cast<size_t>(k))};
    for (int64_t r = begin; r < end; ++r) select_row(dp + r * n, n, k, nearest_first, passes, buf, op + r * k);
  });
  return out;
}

}  // namespace popflow

#include "spmm_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE

#include <algorithm>

#include "cpu_features.h"

#ifdef POPFLOW_X86_AVX2
#include <immintrin.h>
#endif

namespace popflow {

namespace {

// Compressed rows of a coalesced COO matrix: row r's entries are
// [start[r], start[r + 1]) of col and value.
struct Rows {
  const int64_t* start;
  const int64_t* col;
  const float* value;
};

// Rows [r0, r1) of out = A h, one element at a time (CPUs without AVX2, and
// the vector kernels' last columns).
void rows_scalar(const Rows& a, const float* h, float* out, int64_t w, int64_t r0, int64_t r1, int64_t j0) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t j = j0; j < w; ++j) {
      float acc = 0.0f;
      for (int64_t e = a.start[r]; e < a.start[r + 1]; ++e) acc += a.value[e] * h[a.col[e] * w + j];
      out[r * w + j] = acc;
    }
  }
}

#ifdef POPFLOW_X86_AVX2
// Eight columns at a time: a row's entries accumulate in a register, in stored order.
__attribute__((target("avx2,fma"))) void rows_avx2(const Rows& a, const float* h, float* out, int64_t w, int64_t r0,
                                                   int64_t r1) {
  const int64_t vector_cols = w / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t j = 0; j < vector_cols; j += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t e = a.start[r]; e < a.start[r + 1]; ++e)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a.value[e]), _mm256_loadu_ps(h + a.col[e] * w + j), acc);
      _mm256_storeu_ps(out + r * w + j, acc);
    }
  }
  if (vector_cols < w) rows_scalar(a, h, out, w, r0, r1, vector_cols);
}

// Sixteen columns at a time, the last ones masked.
__attribute__((target("avx512f"))) void rows_avx512(const Rows& a, const float* h, float* out, int64_t w, int64_t r0,
                                                    int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t j = 0; j < w; j += 16) {
      const __mmask16 lanes = w - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (w - j)) - 1);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t e = a.start[r]; e < a.start[r + 1]; ++e)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(a.value[e]), _mm512_maskz_loadu_ps(lanes, h + a.col[e] * w + j), acc);
      _mm512_mask_storeu_ps(out + r * w + j, lanes, acc);
    }
  }
}
#endif

bool matrix_takes(const torch::Tensor& a) {
  return a.defined() && a.is_sparse() && a.dim() == 2 && a.is_coalesced() && a.device().is_cpu() &&
         a.scalar_type() == torch::kFloat;
}

}  // namespace

torch::Tensor sparse_row_starts(const torch::Tensor& a) {
  if (!matrix_takes(a)) return torch::Tensor();
  // Coalesced is row-major order, so the sorted row indices compress as CSR's do.
  return at::_convert_indices_from_coo_to_csr(a._indices()[0], a.size(0));
}

torch::Tensor sparse_times_dense(const torch::Tensor& a, const torch::Tensor& h, const torch::Tensor& row_starts) {
  if (!matrix_takes(a) || !h.device().is_cpu() || h.scalar_type() != torch::kFloat || h.dim() != 2 ||
      a.size(1) != h.size(0))
    return torch::mm(a, h);
  const auto starts = row_starts.defined() ? row_starts : sparse_row_starts(a);
  const auto hc = h.contiguous();
  const auto indices = a._indices().contiguous();
  const auto values = a._values().contiguous();
  const int64_t n = a.size(0), w = hc.size(1), nnz = values.size(0);
  const Rows rows{starts.data_ptr<int64_t>(), indices.data_ptr<int64_t>() + nnz, values.data_ptr<float>()};
  auto out = torch::empty({n, w}, hc.options());
  const float* hp = hc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // About GRAIN_SIZE multiply-adds per chunk, as LibTorch splits its element-wise work.
  const int64_t per_row = std::max<int64_t>(1, w * std::max<int64_t>(1, nnz / std::max<int64_t>(1, n)));
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / per_row);
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
#ifdef POPFLOW_X86_AVX2
    if (cpu_has_avx512f()) return rows_avx512(rows, hp, op, w, r0, r1);
    if (cpu_has_avx2_fma()) return rows_avx2(rows, hp, op, w, r0, r1);
#endif
    rows_scalar(rows, hp, op, w, r0, r1, 0);
  });
  return out;
}

}  // namespace popflow

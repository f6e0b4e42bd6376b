#include "adam_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE

#include <cmath>

#include "cpu_features.h"

#ifdef POPFLOW_X86_AVX2
#include <immintrin.h>
#endif

namespace popflow {

namespace {

// Elements [begin, end) one at a time: the vector kernel's tail, and CPUs without AVX2.
void adam_scalar(const AdamBuffers& b, const AdamCoefficients& c, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float w = b.weights[i];
    b.saved_weights[i] = w;
    b.saved_m[i] = b.m[i];
    b.saved_v[i] = b.v[i];
    // Plain products and sums: std::fma would be a library call on a CPU without FMA.
    const float g = c.weight_decay > 0 ? w * c.weight_decay + b.grad[i] : b.grad[i];
    const float m = g * c.one_minus_beta1 + b.m[i] * c.beta1;
    const float v = g * g * c.one_minus_beta2 + b.v[i] * c.beta2;
    const float next = c.step_size * (m / (std::sqrt(v) / c.bias2_sqrt + c.eps)) + w;
    b.m[i] = m;
    b.v[i] = v;
    b.weights[i] = next;
    if (b.ema) {
      b.saved_ema[i] = b.ema[i];
      b.ema[i] = next * c.one_minus_ema_decay + b.ema[i] * c.ema_decay;
    }
  }
}

#ifdef POPFLOW_X86_AVX2
__attribute__((target("avx2,fma"))) void adam_avx2(const AdamBuffers& b, const AdamCoefficients& c, int64_t begin,
                                                   int64_t end) {
  const __m256 beta1 = _mm256_set1_ps(c.beta1), one_minus_beta1 = _mm256_set1_ps(c.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(c.beta2), one_minus_beta2 = _mm256_set1_ps(c.one_minus_beta2);
  const __m256 eps = _mm256_set1_ps(c.eps), decay = _mm256_set1_ps(c.weight_decay);
  const __m256 step_size = _mm256_set1_ps(c.step_size), bias2_sqrt = _mm256_set1_ps(c.bias2_sqrt);
  const __m256 ema_decay = _mm256_set1_ps(c.ema_decay), one_minus_ema = _mm256_set1_ps(c.one_minus_ema_decay);
  const bool weight_decay = c.weight_decay > 0;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 w = _mm256_loadu_ps(b.weights + i);
    __m256 m = _mm256_loadu_ps(b.m + i), v = _mm256_loadu_ps(b.v + i), g = _mm256_loadu_ps(b.grad + i);
    _mm256_storeu_ps(b.saved_weights + i, w);
    _mm256_storeu_ps(b.saved_m + i, m);
    _mm256_storeu_ps(b.saved_v + i, v);
    if (weight_decay) g = _mm256_fmadd_ps(w, decay, g);
    m = _mm256_fmadd_ps(g, one_minus_beta1, _mm256_mul_ps(m, beta1));
    v = _mm256_fmadd_ps(_mm256_mul_ps(g, g), one_minus_beta2, _mm256_mul_ps(v, beta2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v), bias2_sqrt), eps);
    const __m256 next = _mm256_fmadd_ps(step_size, _mm256_div_ps(m, denom), w);
    _mm256_storeu_ps(b.m + i, m);
    _mm256_storeu_ps(b.v + i, v);
    _mm256_storeu_ps(b.weights + i, next);
    if (b.ema) {
      const __m256 e = _mm256_loadu_ps(b.ema + i);
      _mm256_storeu_ps(b.saved_ema + i, e);
      _mm256_storeu_ps(b.ema + i, _mm256_fmadd_ps(next, one_minus_ema, _mm256_mul_ps(e, ema_decay)));
    }
  }
  adam_scalar(b, c, i, end);
}
#endif

}  // namespace

void adam_step_cpu(const AdamBuffers& b, const AdamCoefficients& c) {
  // Chunks as LibTorch splits its own element-wise kernels.
  at::parallel_for(0, b.n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
#ifdef POPFLOW_X86_AVX2
    if (cpu_has_avx2_fma()) return adam_avx2(b, c, begin, end);
#endif
    adam_scalar(b, c, begin, end);
  });
}

}  // namespace popflow

// What this x86-64 CPU can run, for popflow's own vector kernels (selu_cpu, spmm_cpu, knn_select,
// adam_cpu): they are compiled for AVX2 and FMA (some also for AVX-512) with
// target attributes and used only where the CPU has them, so a build runs on
// any x86-64 CPU.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define POPFLOW_X86_AVX2 1
#endif

namespace popflow {

inline bool cpu_has_avx2_fma() {
#ifdef POPFLOW_X86_AVX2
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// AVX-512F (with AVX2 and FMA, which every such CPU has). GCC's check also
// asks whether the operating system saves the 512-bit registers.
inline bool cpu_has_avx512f() {
#ifdef POPFLOW_X86_AVX2
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

// popflow's own vector kernels, narrowest first. Portable is the code that
// runs anywhere: a scalar loop, or LibTorch's kernel where popflow has none
// of its own. Each kernel gives the same result as the others.
enum class VectorKernel { Portable, Avx2, Avx512 };

inline bool cpu_runs(VectorKernel kernel) {
  switch (kernel) {
    case VectorKernel::Avx512: return cpu_has_avx512f();
    case VectorKernel::Avx2: return cpu_has_avx2_fma();
    default: return true;
  }
}

// The widest kernel this CPU runs (what the kernels' callers use by default).
inline VectorKernel fastest_vector_kernel() {
  return cpu_runs(VectorKernel::Avx512) ? VectorKernel::Avx512
         : cpu_runs(VectorKernel::Avx2) ? VectorKernel::Avx2
                                        : VectorKernel::Portable;
}

}  // namespace popflow

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

}  // namespace popflow

// Which matrix-product kernels LibTorch's BLAS runs on this CPU. An OpenBLAS
// built with DYNAMIC_ARCH (Debian's) picks its kernels from the CPU's model
// number when it loads; a release older than the CPU does not know the model
// and falls back to generic SSE kernels ("Prescott"). On a 5th-generation
// Xeon with Debian 12's OpenBLAS 0.3.21, popflow's training steps ran 2.3-4x
// slower that way than with the CPU's AVX-512 kernels. The environment
// variable OPENBLAS_CORETYPE, set before the process starts, picks the
// kernels; OpenBLAS reads it once, when it loads.
#pragma once
#include <string>

namespace popflow {

struct BlasKernels {
  std::string library;  // "OpenBLAS", or "" when the process has another BLAS (MKL, ...)
  std::string config;   // OpenBLAS's own description: version, build options, kernels
  std::string core;     // the kernels in use, OpenBLAS's name for them ("Haswell", "Prescott")
  bool dynamic_arch = false;  // kernels chosen at load, so OPENBLAS_CORETYPE can change them
  std::string cpu_isa;  // this CPU's widest vector set OpenBLAS has kernels for: "avx512", "avx2" or ""
  std::string suggested_coretype;  // OPENBLAS_CORETYPE to set, or "" when the kernels fit the CPU
};

// Asks the OpenBLAS loaded in this process (if any) and the CPU.
BlasKernels blas_kernels();

// The OPENBLAS_CORETYPE that would give kernels of `cpu_isa` where `core`
// has none of AVX2's ("SkylakeX" for AVX-512, "Haswell" for AVX2), else "".
// A core with AVX2 kernels is left alone: OpenBLAS may choose Haswell's on
// an AVX-512 CPU on purpose.
std::string suggested_coretype(const std::string& core, const std::string& cpu_isa);

}  // namespace popflow

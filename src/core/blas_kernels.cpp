#include "blas_kernels.h"

#include <strings.h>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define POPFLOW_HAS_DLSYM 1
#endif

#include "cpu_features.h"

namespace popflow {
namespace {

// OpenBLAS's own answer, looked up by name: LibTorch links whichever BLAS
// its build chose, so popflow does not link OpenBLAS itself.
std::string openblas_string(const char* function) {
#ifdef POPFLOW_HAS_DLSYM
  using Getter = char* (*)();
  auto get = reinterpret_cast<Getter>(dlsym(RTLD_DEFAULT, function));
  if (get == nullptr) return "";
  const char* s = get();
  return s == nullptr ? "" : s;
#else
  (void)function;
  return "";
#endif
}

std::string cpu_isa() {
#ifdef POPFLOW_X86_AVX2
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512cd"))
    return "avx512";
  if (cpu_has_avx2_fma()) return "avx2";
#endif
  return "";
}

}  // namespace

std::string suggested_coretype(const std::string& core, const std::string& cpu_isa) {
  // OpenBLAS's x86-64 kernel sets with AVX2 or wider (Zen's are Haswell's).
  static const char* const with_avx2[] = {"haswell", "zen", "excavator", "skylakex", "cooperlake",
                                          "sapphirerapids"};
  for (const char* name : with_avx2)
    if (strcasecmp(core.c_str(), name) == 0) return "";
  if (cpu_isa == "avx512") return "SkylakeX";
  if (cpu_isa == "avx2") return "Haswell";
  return "";
}

BlasKernels blas_kernels() {
  BlasKernels k;
  k.cpu_isa = cpu_isa();
  k.config = openblas_string("openblas_get_config");
  k.core = openblas_string("openblas_get_corename");
  if (k.config.empty() && k.core.empty()) return k;
  k.library = "OpenBLAS";
  k.dynamic_arch = k.config.find("DYNAMIC_ARCH") != std::string::npos;
  // Only a DYNAMIC_ARCH build can switch kernels; another was built for one CPU.
  if (k.dynamic_arch) k.suggested_coretype = suggested_coretype(k.core, k.cpu_isa);
  return k;
}

}  // namespace popflow

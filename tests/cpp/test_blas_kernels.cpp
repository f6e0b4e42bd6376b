// Which BLAS kernels run (blas_kernels.h): the advice's rule, what this
// process's OpenBLAS reports, and that OPENBLAS_CORETYPE set before a process
// starts does pick the kernels (checked in a child process of this binary).
#include <strings.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "blas_kernels.h"
#include "check.h"

using namespace popflow;

TEST_CASE("blas: the coretype suggested for generic kernels on a CPU with AVX2 or AVX-512") {
  PF_CHECK(suggested_coretype("Prescott", "avx512") == "SkylakeX");
  PF_CHECK(suggested_coretype("Prescott", "avx2") == "Haswell");
  PF_CHECK(suggested_coretype("Sandybridge", "avx2") == "Haswell");
  PF_CHECK(suggested_coretype("Nehalem", "avx512") == "SkylakeX");
  // Kernels with AVX2 or wider are OpenBLAS's choice, kept (Zen's are Haswell's).
  PF_CHECK(suggested_coretype("Haswell", "avx512") == "");
  PF_CHECK(suggested_coretype("SkylakeX", "avx512") == "");
  PF_CHECK(suggested_coretype("ZEN", "avx512") == "");
  PF_CHECK(suggested_coretype("SapphireRapids", "avx512") == "");
  // A CPU without AVX2 has nothing better to offer.
  PF_CHECK(suggested_coretype("Prescott", "") == "");
}

TEST_CASE("blas: what this process's BLAS reports") {
  const BlasKernels k = blas_kernels();
  PF_CHECK(k.cpu_isa == "" || k.cpu_isa == "avx2" || k.cpu_isa == "avx512");
  if (k.library.empty()) {  // another BLAS (a LibTorch with MKL): nothing to advise
    PF_CHECK(k.core.empty() && k.suggested_coretype.empty());
    return;
  }
  PF_CHECK(k.library == "OpenBLAS");
  PF_CHECK_MSG(!k.core.empty(), k.config);
  // A DYNAMIC_ARCH build names the kernels it chose in its configuration.
  if (k.dynamic_arch) PF_CHECK_MSG(k.config.find(k.core) != std::string::npos, k.config << " / " << k.core);
  PF_CHECK(k.suggested_coretype == (k.dynamic_arch ? suggested_coretype(k.core, k.cpu_isa) : ""));
  // With OPENBLAS_CORETYPE set at start (tools/blas_env.sh does it for the tests where
  // OpenBLAS does not know the CPU), those kernels run and nothing is left to suggest.
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  if (forced != nullptr && k.dynamic_arch && !k.cpu_isa.empty()) {
    PF_CHECK_MSG(strcasecmp(k.core.c_str(), forced) == 0, k.core << " vs OPENBLAS_CORETYPE=" << forced);
    PF_CHECK(k.suggested_coretype.empty());
  }
}

TEST_CASE("blas: OPENBLAS_CORETYPE set before start picks the kernels (child process)") {
  const BlasKernels k = blas_kernels();
  if (k.library.empty() || !k.dynamic_arch || k.cpu_isa.empty()) return;  // nothing to switch
  std::array<char, 4096> self{};
  const ssize_t n = readlink("/proc/self/exe", self.data(), self.size() - 1);
  if (n <= 0) return;  // no /proc: not Linux
  // The child runs the case above, which requires the kernels it was asked for.
  const std::string command = "OPENBLAS_CORETYPE=Haswell '" + std::string(self.data(), n) +
                              "' 'blas: what this process' 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  PF_CHECK(pipe != nullptr);
  if (pipe == nullptr) return;
  std::string out;
  std::array<char, 512> buf{};
  while (std::fgets(buf.data(), static_cast<int>(buf.size()), pipe) != nullptr) out += buf.data();
  const int status = pclose(pipe);
  PF_CHECK_MSG(status == 0, out);
  PF_CHECK_MSG(out.find("1 passed, 0 failed") != std::string::npos, out);
}

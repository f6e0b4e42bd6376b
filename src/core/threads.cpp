#include "threads.h"

#include <dlfcn.h>
#include <torch/torch.h>

namespace popflow {
namespace {

using SetThreads = void (*)(int);
using GetThreads = int (*)();

// OpenBLAS is looked up at run time, so builds against MKL or a reference BLAS still work.
SetThreads blas_setter() { return reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")); }
GetThreads blas_getter() { return reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads")); }

}  // namespace

ThreadScope::ThreadScope(int threads) {
  torch::set_num_threads(threads < 1 ? 1 : threads);
  SetThreads set = blas_setter();
  GetThreads get = blas_getter();
  if (set && get) {
    previous_blas_ = get();
    set(threads < 1 ? 1 : threads);
  }
}

ThreadScope::~ThreadScope() {
  if (previous_blas_ > 0) {
    if (SetThreads set = blas_setter()) set(previous_blas_);
  }
}

}  // namespace popflow

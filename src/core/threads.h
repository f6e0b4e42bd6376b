// Thread settings for one fit or prediction. LibTorch's own pool follows
// torch::set_num_threads, but on Debian its matrix products go through
// OpenBLAS, whose pthread pool does not; left at its default it oversubscribes
// small machines. The guard sets both and restores OpenBLAS afterwards (R
// shares that library for its own matrix products).
#pragma once

namespace popflow {

class ThreadScope {
 public:
  explicit ThreadScope(int threads);
  ~ThreadScope();
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int previous_blas_ = -1;  // -1: no OpenBLAS found in the process
};

}  // namespace popflow

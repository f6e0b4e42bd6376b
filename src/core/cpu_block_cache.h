// A cache of large CPU blocks for LibTorch's tensors while training runs.
// LibTorch's CPU allocator hands every tensor to malloc and back. A training
// step frees and reallocates the same large temporaries at every step, and
// glibc gives such blocks back to the system (munmap, or trimming the heap's
// top) only to fault them in again page by page at the next step: a
// population-model step on the CPU spent about a seventh of its time there.
// While a CpuBlockCacheScope lives, freed tensor blocks of 64 KiB or more are
// kept by size class (sizes rounded up by at most 1/8) for the next tensor of
// that class, up to a byte cap; smaller ones go to LibTorch's allocator as
// before. When the last scope ends the cached blocks are freed.
#pragma once
#include <cstddef>
#include <cstdint>

namespace popflow {

struct CpuBlockCacheStats {
  int64_t hits = 0;      // large allocations served from the cache
  int64_t misses = 0;    // large allocations that went to the system
  int64_t cached_bytes = 0;  // held now, free, for reuse
};

class CpuBlockCacheScope {
 public:
  static constexpr size_t kDefaultCapBytes = size_t{256} << 20;
  // Installs the caching allocator as LibTorch's CPU allocator on first use
  // (it then stays installed, passing everything through while no scope is
  // open). cap_bytes: the most the cache holds; the first open scope's cap rules.
  explicit CpuBlockCacheScope(size_t cap_bytes = kDefaultCapBytes);
  ~CpuBlockCacheScope();
  CpuBlockCacheScope(const CpuBlockCacheScope&) = delete;
  CpuBlockCacheScope& operator=(const CpuBlockCacheScope&) = delete;
};

CpuBlockCacheStats cpu_block_cache_stats();

}  // namespace popflow

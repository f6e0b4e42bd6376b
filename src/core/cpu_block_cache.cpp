#include "cpu_block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace popflow {

namespace {

constexpr size_t kMinBytes = size_t{64} << 10;

// 64-byte aligned, as LibTorch's own CPU blocks. A failure is LibTorch's
// error with LibTorch's words, which the R glue turns into popflow's message.
void* alloc_block(size_t bytes) {
  void* p = nullptr;
  const bool ok = posix_memalign(&p, 64, bytes) == 0 && p;
  TORCH_CHECK(ok, "DefaultCPUAllocator: can't allocate memory: you tried to allocate ", bytes,
              " bytes (popflow's CPU block cache).");
  return p;
}

// n rounded up to a multiple of 1/8 of the largest power of two <= n: at most 12.5% more.
size_t size_class(size_t n) {
  size_t p = 1;
  while (p <= n / 2) p *= 2;
  const size_t step = p / 8;
  return (n + step - 1) / step * step;
}

struct BlockCache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // by size class
  std::unordered_map<void*, size_t> live;                      // our blocks in use, with their class
  size_t cached_bytes = 0, cap_bytes = 0;
  std::atomic<int> scopes{0};  // changed under the mutex; read without it on the fast path
  int64_t hits = 0, misses = 0;
  c10::Allocator* fallback = nullptr;  // LibTorch's CPU allocator, for small blocks

  void release_all() {
    for (auto& kv : free_blocks)
      for (void* p : kv.second) std::free(p);
    free_blocks.clear();
    cached_bytes = 0;
  }
};

// Never destroyed: tensors may be freed during exit, after static destructors.
BlockCache& cache() {
  static BlockCache* c = new BlockCache;
  return *c;
}

void delete_block(void* p) {
  if (!p) return;
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto it = c.live.find(p);
  if (it == c.live.end()) {  // not one of ours (cannot happen: only allocate_block() attaches this deleter)
    std::free(p);
    return;
  }
  const size_t bytes = it->second;
  c.live.erase(it);
  if (c.scopes > 0 && c.cached_bytes + bytes <= c.cap_bytes) {
    c.free_blocks[bytes].push_back(p);
    c.cached_bytes += bytes;
  } else {
    std::free(p);
  }
}

c10::DataPtr allocate_block(size_t n) {
  BlockCache& c = cache();
  // Small blocks, and every block outside a fit, go straight to LibTorch's
  // allocator without taking the lock: this runs for every CPU tensor. A
  // scope that ends meanwhile only means the block is freed, not kept, later.
  if (n < kMinBytes || c.scopes.load() == 0) return c.fallback->allocate(n);
  const size_t bytes = size_class(n);
  std::unique_lock<std::mutex> lock(c.mutex);
  void* p = nullptr;
  auto it = c.free_blocks.find(bytes);
  if (it != c.free_blocks.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    c.cached_bytes -= bytes;
    ++c.hits;
  } else {
    ++c.misses;
    lock.unlock();
    p = alloc_block(bytes);
    lock.lock();
  }
  c.live.emplace(p, bytes);
  return {p, p, &delete_block, c10::Device(c10::DeviceType::CPU)};
}

// LibTorch 1.x declares allocate() const, 2.x non-const and adds copy_data():
// both forms are defined, so the class builds against either.
struct BlockCacheAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) const { return allocate_block(n); }
  c10::DataPtr allocate(size_t n) { return allocate_block(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }
};

BlockCacheAllocator& block_cache_allocator() {
  static BlockCacheAllocator* a = new BlockCacheAllocator;
  return *a;
}

}  // namespace

CpuBlockCacheScope::CpuBlockCacheScope(size_t cap_bytes) {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (!c.fallback) {
    c.fallback = c10::GetAllocator(c10::DeviceType::CPU);
    c10::SetAllocator(c10::DeviceType::CPU, &block_cache_allocator());
  }
  if (c.scopes++ == 0) c.cap_bytes = cap_bytes;
}

CpuBlockCacheScope::~CpuBlockCacheScope() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (--c.scopes == 0) c.release_all();
}

CpuBlockCacheStats cpu_block_cache_stats() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.hits, c.misses, static_cast<int64_t>(c.cached_bytes)};
}

}  // namespace popflow

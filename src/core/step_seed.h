// The seed of a training step: every step's randomness is a function of
// (seed, step). The loop reseeds with it; a population model's prefetcher
// uses it to know the next step's populations before that step runs.
#pragma once
#include <cstdint>

namespace popflow {

// splitmix64 of (seed, step): nearby seeds and steps give unrelated streams.
inline uint64_t step_seed(uint64_t seed, int64_t step) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(step);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace popflow

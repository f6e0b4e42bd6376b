// The seed of a training step's draw: every step's randomness is a function
// of (seed, step, draw). The loop reseeds with it; a population model's
// prefetcher uses it to know the next draw's populations before it runs.
#pragma once
#include <cstdint>

namespace popflow {

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// splitmix64 of (seed, step): nearby seeds and steps give unrelated streams.
inline uint64_t step_seed(uint64_t seed, int64_t step) {
  return splitmix64(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(step));
}

// Draw `draw` of a step (accumulation, data-parallel processes: draw r of
// rank k is k * accumulate + r) mixes the draw in once more, so that draw 0
// is the single draw of a plain fit.
inline uint64_t draw_seed(uint64_t seed, int64_t step, int64_t draw) {
  const uint64_t z = step_seed(seed, step);
  return draw > 0 ? splitmix64(z + static_cast<uint64_t>(draw) * 0xD1B54A32D192ED03ULL) : z;
}

}  // namespace popflow

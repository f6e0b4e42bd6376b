// Buffers that a training step's own passes (the network's hand-written
// gradient, the optimiser's update) keep from one step to the next on CPU.
// A step that allocated its [batch, width] and parameter-sized temporaries
// afresh would pay page faults and zeroing each time the C allocator hands
// such large blocks back to the system in between.
#pragma once
#include <torch/torch.h>

#include <string>

namespace popflow {

// This thread's buffer number `slot` of `owner`, shaped `sizes` with the type
// and device of `options`, contents undefined. On CPU it is the tensor the
// last call with the same owner and slot returned while its shape and type
// still fit (so a caller must be done with it before asking again); on other
// devices, whose caching allocators already reuse memory, a fresh one.
torch::Tensor scratch_buffer(const std::string& owner, size_t slot, at::IntArrayRef sizes,
                             const torch::TensorOptions& options);

// Frees this thread's scratch buffers.
void release_scratch();

// Frees them when it goes out of scope: a training run holds them no longer than it runs.
struct ScratchScope {
  ScratchScope() = default;
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;
  ~ScratchScope() { release_scratch(); }
};

}  // namespace popflow

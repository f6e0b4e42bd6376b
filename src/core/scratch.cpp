#include "scratch.h"

#include <map>
#include <utility>

namespace popflow {
namespace {

thread_local std::map<std::pair<std::string, size_t>, torch::Tensor> buffers;

}  // namespace

torch::Tensor scratch_buffer(const std::string& owner, size_t slot, at::IntArrayRef sizes,
                             const torch::TensorOptions& options) {
  if (!options.device().is_cpu()) return torch::empty(sizes, options);
  torch::Tensor& b = buffers[{owner, slot}];
  if (!b.defined() || b.sizes() != sizes || b.scalar_type() != options.dtype().toScalarType())
    b = torch::empty(sizes, options);
  return b;
}

void release_scratch() { buffers.clear(); }

}  // namespace popflow

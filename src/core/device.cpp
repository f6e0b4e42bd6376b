#include "device.h"

#include <ATen/Context.h>

namespace popflow {

torch::Tensor to_device_async(const torch::Tensor& host, const torch::Device& device) {
  if (!device.is_cuda() || !host.device().is_cpu()) return host.to(device);
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

torch::Tensor staging_tensor(at::IntArrayRef sizes, torch::ScalarType dtype, const torch::Device& device) {
  return torch::empty(sizes, torch::TensorOptions().dtype(dtype).pinned_memory(device.is_cuda()));
}

bool stage_into(torch::Tensor& buffer, const torch::Tensor& host, const torch::TensorOptions& options) {
  const bool kept = buffer.defined() && buffer.sizes() == host.sizes();
  if (!kept) buffer = torch::empty(host.sizes(), options);
  buffer.copy_(host, /*non_blocking=*/buffer.is_cuda());
  return kept;
}

Tf32Scope::Tf32Scope(bool tf32)
    : previous_cublas_(at::globalContext().allowTF32CuBLAS()), previous_cudnn_(at::globalContext().allowTF32CuDNN()) {
  at::globalContext().setAllowTF32CuBLAS(tf32);
  at::globalContext().setAllowTF32CuDNN(tf32);
}

Tf32Scope::~Tf32Scope() {
  at::globalContext().setAllowTF32CuBLAS(previous_cublas_);
  at::globalContext().setAllowTF32CuDNN(previous_cudnn_);
}

}  // namespace popflow

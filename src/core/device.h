// What a fit on a GPU needs beyond the tensors themselves: small host tensors
// (drawn rows, population sizes) sent without stalling the GPU's queue, and
// the matrix-product precision the fit asks for.
#pragma once
#include <torch/torch.h>

namespace popflow {

// `host` on `device`. To a GPU the copy goes through page-locked memory and
// does not wait: a copy from ordinary memory first waits for every queued
// kernel, and a training step has several such copies.
torch::Tensor to_device_async(const torch::Tensor& host, const torch::Device& device);

// TF32 matrix products (fp32 storage and accumulation, 10-bit mantissa
// inputs) on Ampere and later GPUs for the scope's duration; no effect on CPU.
// Restores the process's previous setting.
class Tf32Scope {
 public:
  explicit Tf32Scope(bool tf32);
  ~Tf32Scope();
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_cublas_, previous_cudnn_;
};

}  // namespace popflow

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

// Staged steps (TrainConfig::step_graph) fill a host tensor and copy it into
// a device buffer that keeps its storage, which a captured step reads.
// staging_tensor(): the host tensor, page-locked when `device` is a GPU.
// stage_into(): `host` copied into `buffer` (asynchronously to a GPU); true when
// `buffer` already had host's sizes, false when it was allocated anew (with
// `options`), so that a captured step must be captured again.
torch::Tensor staging_tensor(at::IntArrayRef sizes, torch::ScalarType dtype, const torch::Device& device);
bool stage_into(torch::Tensor& buffer, const torch::Tensor& host, const torch::TensorOptions& options);

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

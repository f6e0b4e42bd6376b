// SELU in place on float32 CPU tensors, with an exponential of its own.
// LibTorch's CPU kernel evaluates an exponential for every element, positive
// ones included, at about 0.9 ns each (one thread, [1024, 256]): after the
// matrix products, the largest cost of a width-256 training step. This one computes the
// exponential with a vector polynomial (relative error within about two float
// ulps, as accurate as the step needs): 16 lanes where the CPU has AVX-512,
// 8 where it has AVX2 and FMA; the two give the same bits. Its backward pass,
// LibTorch's next largest element-wise cost, likewise.
#pragma once
#include <torch/torch.h>

#include "cpu_features.h"

namespace popflow {

// z = SELU(z) in place. Float32 contiguous CPU tensors take the fast kernel;
// anything else goes to at::selu_. `kernel` names one (tests compare them; Portable is
// LibTorch's, the default fastest_vector_kernel());
// one the CPU cannot run throws std::invalid_argument.
torch::Tensor& selu_in_place(torch::Tensor& z);
torch::Tensor& selu_in_place(torch::Tensor& z, VectorKernel kernel);

// grad *= SELU'(input) in place, from SELU's output (its derivative is
// `scale` where the output is > 0 and output + scale * alpha elsewhere):
// the backward pass needs no exponential. Same kernels and fallback
// (at::elu_backward_out) as selu_in_place().
torch::Tensor& selu_backward_in_place(torch::Tensor& grad, const torch::Tensor& output);
torch::Tensor& selu_backward_in_place(torch::Tensor& grad, const torch::Tensor& output, VectorKernel kernel);

// Whether selu_in_place() uses a vector kernel of its own on this CPU.
bool fast_selu_available();

}  // namespace popflow

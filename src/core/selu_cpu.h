// SELU in place on float32 CPU tensors, with an exponential of its own.
// LibTorch's CPU kernel evaluates an exponential for every element, positive
// ones included, at about 0.9 ns each (one thread, [1024, 256]): after the
// matrix products, the largest cost of a width-256 training step. This one computes the
// exponential with an 8-wide AVX2 polynomial (relative error within about two
// float ulps, as accurate as the step needs) where the CPU has AVX2 and FMA;
// its backward pass, LibTorch's next largest element-wise cost, likewise.
#pragma once
#include <torch/torch.h>

namespace popflow {

// z = SELU(z) in place. Float32 contiguous CPU tensors take the fast kernel
// (on x86-64 CPUs with AVX2 and FMA); anything else goes to at::selu_.
torch::Tensor& selu_in_place(torch::Tensor& z);

// grad *= SELU'(input) in place, from SELU's output (its derivative is
// `scale` where the output is > 0 and output + scale * alpha elsewhere):
// the backward pass needs no exponential. Same kernels and fallback
// (at::elu_backward_out) as selu_in_place().
torch::Tensor& selu_backward_in_place(torch::Tensor& grad, const torch::Tensor& output);

// Whether selu_in_place() uses the fast kernel on this CPU.
bool fast_selu_available();

}  // namespace popflow

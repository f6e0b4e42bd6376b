// A sparse matrix times a dense one on the CPU: the graph encoder's message
// passing (y = A h, and its backward A g), over the batch's normalised
// adjacency. LibTorch's CPU kernel calls BLAS's axpy once per stored entry,
// a function call for each edge's short row; this one walks each row's
// entries with the output row's columns held in vector registers (16 lanes
// with AVX-512, 8 with AVX2 and FMA), and splits the rows across threads,
// where LibTorch's loop runs on one.
#pragma once
#include <torch/torch.h>

namespace popflow {

// A h for a sparse COO `a` [n, m] and a dense `h` [m, w]. Coalesced float32
// CPU matrices take popflow's kernel (each output element sums its row's
// entries in stored order); anything else (GPUs, other types) goes to torch::mm.
// No autograd: SymmetricPropagate (encoders.cpp) gives the product its gradient.
// `row_starts`, from sparse_row_starts(a), spares the pass that finds them
// when several products share a matrix (the encoder's layers, forward and backward).
torch::Tensor sparse_times_dense(const torch::Tensor& a, const torch::Tensor& h,
                                 const torch::Tensor& row_starts = torch::Tensor());

// The row starts of `a` ([n + 1] long, CSR's row pointers: row r's entries are
// r_s[r] .. r_s[r + 1] - 1) where sparse_times_dense() runs its own kernel on
// it; undefined where it goes to torch::mm.
torch::Tensor sparse_row_starts(const torch::Tensor& a);

}  // namespace popflow

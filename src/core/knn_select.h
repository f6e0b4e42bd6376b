// The k smallest entries of every row of a distance matrix: the selection
// step of the kNN graphs that population models build. LibTorch's CPU topk
// sorts or partially sorts each row through a comparison callback, 12-14 µs
// for a row of 500 distances (k = 50) and most of a graph's time; this one
// finds each row's k-th smallest value by searching the values' bit patterns
// (as integers that order as the floats do), each step a branch-free count of
// the row's entries at or below a trial value (16 lanes at a time with
// AVX-512, 8 with AVX2), then keeps the entries below it and, among entries
// equal to it, those of the lowest columns.
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "cpu_features.h"

namespace popflow {

// [rows, k] long: the columns of each row's k smallest entries, smallest
// first (nearest_first) or in increasing column order; equal entries in
// increasing column order, and where entries equal to the k-th smallest do
// not all fit, those of the lowest columns (NaN counts as larger than every
// number). Float32 CPU matrices take popflow's kernel, rows split across
// threads; anything else goes to torch::topk (the same sets where no two
// entries tie). Needs 1 <= k <= columns (std::invalid_argument). `kernel`
// names one (tests compare them; Portable is a scalar loop, the default
// fastest_vector_kernel()); one the CPU cannot run throws std::invalid_argument.
torch::Tensor smallest_k_per_row(const torch::Tensor& d, int64_t k, bool nearest_first = true);
torch::Tensor smallest_k_per_row(const torch::Tensor& d, int64_t k, bool nearest_first, VectorKernel kernel);

}  // namespace popflow

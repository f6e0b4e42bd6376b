// A population's cells as a graph, and encoders that map a whole population
// to one unit-length vector phi(p) (Meta Flow Matching's population embedding).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "config.h"

namespace popflow {

// Exact k nearest neighbours of every row of x (itself excluded), by chunked
// brute force: [n, k] long indices, nearest first (or, without nearest_first,
// in increasing order); among cells at the same distance, the lower indices
// (smallest_k_per_row(), knn_select.h). Needs k < n rows.
torch::Tensor knn_indices(const torch::Tensor& x, int64_t k, int64_t chunk_rows = 1024, bool nearest_first = true);

// Cells (a capped subsample) and the GCN-normalised adjacency of their kNN
// graph, D^-1/2 (A + I) D^-1/2 with A the symmetrised kNN graph, as weighted
// edges (self-loops included). Built once per population and reused.
struct PopulationGraph {
  torch::Tensor x;       // [m, d] float cells used for the embedding
  torch::Tensor src;     // [E] long: message from node src ...
  torch::Tensor dst;     // [E] long: ... to node dst
  torch::Tensor weight;  // [E] float normalised edge weight
  int64_t nodes() const { return x.size(0); }
};

// k = 0 gives self-loops only (weight 1): the GCN becomes a per-cell MLP. A
// population of m <= k cells (after the cap) uses k = m - 1: all its other cells.
// max_cells > 0 caps the cells used (a random subsample drawn with `seed`).
PopulationGraph build_graph(const torch::Tensor& x, int64_t k, int64_t max_cells, uint64_t seed);

// The same graph with its tensors on `device` (training keeps its graphs there).
PopulationGraph graph_on(const PopulationGraph& g, const torch::Device& device);

// The normalised adjacency as a dense [m, m] matrix (tests, small graphs).
torch::Tensor dense_adjacency(const PopulationGraph& graph);

// Several graphs as one block-diagonal graph: their cells stacked, the
// normalised adjacency as one sparse [M, M] matrix (undefined when every
// graph has self-loops only, where it is the identity).
struct GraphBatch {
  torch::Tensor x;
  torch::Tensor adjacency;
  std::vector<int64_t> sizes;  // nodes per graph, in order
  torch::Tensor graph_of;      // [nodes] long: the graph of each node (for the mean readout)
};
GraphBatch batch_graphs(const std::vector<const PopulationGraph*>& graphs, const torch::Device& device);

// The same block-diagonal graph at fixed sizes whatever the graphs (a training
// step captured as a CUDA graph reads the same buffers every step; step_graph.h):
// `slots` graph rows, cells in the first rows of x, padding rows (zero cells)
// belonging to the extra graph `slots` that the embedding drops; edges as
// (src, dst, weight) in row-major order, padding edges of weight 0 at distinct
// positions among padding rows, so that `adjacency`, a sparse matrix over the
// same storage, stays coalesced and the sparse product keeps its size.
// `scatter`: propagate by a gather and a scatter-add over the edges instead
// (no sparse library; it materialises a row per edge).
struct PaddedGraphBatch {
  torch::Tensor x;          // [node capacity, d]
  torch::Tensor src, dst;   // [edge capacity] long
  torch::Tensor weight;     // [edge capacity] float
  torch::Tensor adjacency;  // sparse [node capacity]^2 over (src, dst) and weight; undefined: self-loops only
  torch::Tensor graph_of;   // [node capacity] long, in 0 .. slots
  torch::Tensor counts;     // [slots + 1, 1] float: nodes per graph (at least 1)
  int64_t slots = 0;
  bool scatter = false;
};

// GCN: h <- A_hat h W + b per layer, ReLU between layers, mean over each
// graph's nodes, unit L2 norm. Mean (DeepSets): the same on self-loop-only
// graphs. KME: random Fourier features of the cells averaged over each graph
// (fixed; no parameters), unit norm.
class PopulationEncoderImpl : public torch::nn::Module {
 public:
  explicit PopulationEncoderImpl(const EncoderConfig& config);
  // Returns [graphs, output_size()].
  torch::Tensor forward(const GraphBatch& batch);
  // Returns [batch.slots, output_size()]; a slot without cells gives a zero row.
  torch::Tensor forward(const PaddedGraphBatch& batch);
  const EncoderConfig& config() const { return config_; }

 private:
  // Each cell's features after the layers, with `propagate` (h -> A_hat h) between transform and bias.
  torch::Tensor cell_features(const torch::Tensor& x,
                              const std::function<torch::Tensor(const torch::Tensor&)>& propagate);
  EncoderConfig config_;
  torch::nn::ModuleList linears_;
  std::vector<torch::Tensor> biases_;
  torch::Tensor frequencies_;  // KME buffer [dim, width / 2]
};
TORCH_MODULE(PopulationEncoder);

}  // namespace popflow

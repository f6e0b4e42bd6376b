#include "encoders.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <numeric>
#include <random>
#include <stdexcept>

#include "device.h"
#include "knn_select.h"
#include "spmm_cpu.h"

namespace popflow {

torch::Tensor knn_indices(const torch::Tensor& x, int64_t k, int64_t chunk_rows, bool nearest_first) {
  if (x.dim() != 2) throw std::invalid_argument("knn: cells must be a 2-d matrix");
  const int64_t n = x.size(0);
  if (k < 1 || k >= n)
    throw std::invalid_argument("knn: k = " + std::to_string(k) + " needs more than k cells, got " +
                                std::to_string(n));
  torch::NoGradGuard no_grad;
  auto xf = x.to(torch::kFloat).contiguous();
  std::vector<torch::Tensor> parts;
  for (int64_t begin = 0; begin < n; begin += chunk_rows) {
    const int64_t end = std::min(n, begin + chunk_rows);
    auto d = torch::cdist(xf.slice(0, begin, end), xf);
    // A cell is not its own neighbour, even when duplicates tie with it.
    d.narrow(1, begin, end - begin).diagonal().fill_(std::numeric_limits<float>::infinity());
    parts.push_back(smallest_k_per_row(d, k, nearest_first));
  }
  return torch::cat(parts);
}

PopulationGraph build_graph(const torch::Tensor& x, int64_t k, int64_t max_cells, uint64_t seed) {
  if (x.dim() != 2 || x.size(0) < 1) throw std::invalid_argument("population graph: no cells");
  if (k < 0) throw std::invalid_argument("population graph: k must be >= 0");
  torch::NoGradGuard no_grad;
  PopulationGraph g;
  const int64_t n = x.size(0);
  auto cells = x.to(torch::kCPU, torch::kFloat);
  if (max_cells > 0 && n > max_cells) {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(order.begin(), order.end(), rng);
    order.resize(max_cells);
    std::sort(order.begin(), order.end());  // keeps the cells' order: same subsample, same graph
    cells = cells.index_select(0, torch::tensor(order, torch::kLong));
  }
  g.x = cells.contiguous();
  const int64_t m = g.x.size(0);
  auto self = torch::arange(m, torch::kLong);
  torch::Tensor src = self, dst = self;
  // A population of m <= k cells gets the neighbourhood it has: k = m - 1 (all its other cells).
  k = std::min(k, m - 1);
  if (k > 0) {
    auto nn = knn_indices(g.x, k, /*chunk_rows=*/1024, /*nearest_first=*/false);
    // Symmetrise: row i holds itself, its k nearest and every cell that lists
    // it, each once, in increasing order (row-major and unique, as
    // batch_graphs() needs to hand the sparse product a coalesced matrix).
    // The cells that list i come in increasing order from one counting pass;
    // each row then merges three sorted lists (no sort over all edges).
    const int64_t* nn_p = nn.data_ptr<int64_t>();
    std::vector<int64_t> in_start(static_cast<size_t>(m + 1), 0), in_list(static_cast<size_t>(m * k));
    for (int64_t e = 0; e < m * k; ++e) ++in_start[static_cast<size_t>(nn_p[e] + 1)];
    std::partial_sum(in_start.begin(), in_start.end(), in_start.begin());
    std::vector<int64_t> fill(in_start.begin(), in_start.end() - 1);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < k; ++j) in_list[static_cast<size_t>(fill[static_cast<size_t>(nn_p[i * k + j])]++)] = i;
    std::vector<int64_t> from, to, out(static_cast<size_t>(k + 1)), row;
    from.reserve(static_cast<size_t>(2 * m * k + m));
    to.reserve(from.capacity());
    for (int64_t i = 0; i < m; ++i) {
      const int64_t* listed = nn_p + i * k;  // in increasing order (not nearest first)
      const auto split = std::lower_bound(listed, listed + k, i) - listed;
      std::copy(listed, listed + split, out.begin());
      out[static_cast<size_t>(split)] = i;
      std::copy(listed + split, listed + k, out.begin() + split + 1);
      row.clear();
      std::set_union(out.begin(), out.end(), in_list.begin() + in_start[static_cast<size_t>(i)],
                     in_list.begin() + in_start[static_cast<size_t>(i + 1)], std::back_inserter(row));
      row.erase(std::unique(row.begin(), row.end()), row.end());
      from.insert(from.end(), row.size(), i);
      to.insert(to.end(), row.begin(), row.end());
    }
    src = torch::tensor(from, torch::kLong);
    dst = torch::tensor(to, torch::kLong);
  }
  auto degree = torch::zeros({m}, torch::kFloat).index_add_(0, dst, torch::ones({dst.size(0)}, torch::kFloat));
  auto inv_sqrt = degree.rsqrt();
  g.src = src;
  g.dst = dst;
  g.weight = inv_sqrt.index_select(0, src) * inv_sqrt.index_select(0, dst);
  return g;
}

PopulationGraph graph_on(const PopulationGraph& g, const torch::Device& device) {
  return PopulationGraph{g.x.to(device), g.src.to(device), g.dst.to(device), g.weight.to(device)};
}

torch::Tensor dense_adjacency(const PopulationGraph& graph) {
  const int64_t m = graph.nodes();
  auto a = torch::zeros({m, m}, torch::kFloat);
  a.index_put_({graph.dst, graph.src}, graph.weight, /*accumulate=*/true);
  return a;
}

namespace {

// t on `device`, without an operator call when it is there already (training's
// cached graphs are): a step then makes no call per population here.
torch::Tensor on_device(const torch::Tensor& t, const torch::Device& device) {
  const auto& at = t.device();
  const bool there = at.type() == device.type() && (!device.has_index() || at.index() == device.index());
  return there ? t : t.to(device);
}

// torch::cat of same-typed tensors along rows. On the CPU by plain copies:
// its cat takes a view of the output per input of an integer type.
torch::Tensor join(const std::vector<torch::Tensor>& parts) {
  if (!parts.front().is_cpu()) return torch::cat(parts);
  auto sizes = parts.front().sizes().vec();
  sizes[0] = 0;
  for (const auto& p : parts) sizes[0] += p.size(0);
  auto out = torch::empty(sizes, parts.front().options());
  auto* to = static_cast<char*>(out.data_ptr());
  for (const auto& p : parts) {
    const auto c = p.contiguous();
    std::memcpy(to, c.data_ptr(), c.nbytes());
    to += c.nbytes();
  }
  return out;
}

}  // namespace

GraphBatch batch_graphs(const std::vector<const PopulationGraph*>& graphs, const torch::Device& device) {
  std::vector<torch::Tensor> xs, ends, ws;
  GraphBatch b;
  int64_t offset = 0, edges = 0;
  bool identity = true;
  const auto n_graphs = static_cast<int64_t>(graphs.size());
  // Per graph on the host: its first node's index in the batch and its edge count.
  auto shift = torch::empty({2, n_graphs}, torch::kLong);
  int64_t* first_node = shift.data_ptr<int64_t>();
  int64_t* edge_count = first_node + n_graphs;
  for (int64_t i = 0; i < n_graphs; ++i) {
    const PopulationGraph* g = graphs[static_cast<size_t>(i)];
    xs.push_back(on_device(g->x, device));
    ws.push_back(on_device(g->weight, device));
    identity = identity && g->src.size(0) == g->nodes();  // self-loops only (k = 0) have weight 1
    first_node[i] = offset;
    edge_count[i] = g->src.size(0);
    b.sizes.push_back(g->nodes());
    offset += g->nodes();
    edges += g->src.size(0);
  }
  // The matrix is symmetric, so (src, dst) serves as (row, column): the order build_graph() sorted.
  for (const PopulationGraph* g : graphs) ends.push_back(on_device(g->src, device));
  for (const PopulationGraph* g : graphs) ends.push_back(on_device(g->dst, device));
  b.x = xs.size() == 1 ? xs[0] : torch::cat(xs);
  // Built on the host: repeat_interleave on a GPU reads its output size back, stalling the queue.
  auto graph_of = torch::empty({offset}, torch::kLong);
  int64_t* node = graph_of.data_ptr<int64_t>();
  for (size_t i = 0; i < b.sizes.size(); ++i) node = std::fill_n(node, b.sizes[i], static_cast<int64_t>(i));
  b.graph_of = to_device_async(graph_of, device);
  if (!identity) {
    auto index = join(ends).view({2, edges});
    if (n_graphs > 1) {
      // Each graph's edges shifted by its first node: one repeat on the device
      // (its output size given, so no read back) instead of an add per graph.
      auto shift_on = to_device_async(shift, device);
      index.add_(at::repeat_interleave(shift_on[0], shift_on[1], 0, edges));
    }
    // Blocks of sorted, unique entries at increasing offsets: already coalesced,
    // which spares the sparse product a sort of every edge at every step.
    b.adjacency = torch::sparse_coo_tensor(index, ws.size() == 1 ? ws[0] : torch::cat(ws), {offset, offset});
    b.adjacency._coalesced_(true);
  }
  return b;
}

namespace {

// y = A h for a symmetric sparse A, with the gradient A g: autograd would
// otherwise transpose (and re-sort) A in every backward pass.
struct SymmetricPropagate : public torch::autograd::Function<SymmetricPropagate> {
  // row_starts: sparse_row_starts(adjacency), found once for all layers (undefined off the CPU).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& adjacency,
                               const torch::Tensor& row_starts, const torch::Tensor& h) {
    ctx->saved_data["adjacency"] = adjacency;
    ctx->saved_data["row_starts"] = row_starts;
    return sparse_times_dense(adjacency, h, row_starts);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto adjacency = ctx->saved_data["adjacency"].toTensor();
    auto row_starts = ctx->saved_data["row_starts"].toTensor();
    return {torch::Tensor(), torch::Tensor(), sparse_times_dense(adjacency, grad[0], row_starts)};
  }
};

}  // namespace

PopulationEncoderImpl::PopulationEncoderImpl(const EncoderConfig& config) : config_(config) {
  if (config.dim < 1 || config.width < 1) throw std::invalid_argument("encoder: dim and width must be >= 1");
  if (config.kind == EncoderKind::KME) {
    if (config.width % 2 != 0) throw std::invalid_argument("encoder: KME width (random features) must be even");
    if (!(config.bandwidth > 0)) throw std::invalid_argument("encoder: KME bandwidth must be > 0");
    frequencies_ = register_buffer("frequencies", torch::randn({config.dim, config.width / 2}) / config.bandwidth);
    return;
  }
  if (config.layers < 1) throw std::invalid_argument("encoder: layers must be >= 1");
  for (int64_t l = 0; l < config.layers; ++l) {
    const int64_t in = l == 0 ? config.dim : config.width;
    linears_->push_back(torch::nn::Linear(torch::nn::LinearOptions(in, config.width).bias(false)));
    biases_.push_back(register_parameter("bias" + std::to_string(l), torch::zeros({config.width})));
  }
  register_module("layers", linears_);
}

torch::Tensor PopulationEncoderImpl::cell_features(const torch::Tensor& x,
                                                  const std::function<torch::Tensor(const torch::Tensor&)>& propagate) {
  if (config_.kind == EncoderKind::KME) {
    auto proj = torch::matmul(x, frequencies_);
    return torch::cat({torch::cos(proj), torch::sin(proj)}, 1) * std::sqrt(2.0 / config_.width);
  }
  torch::Tensor h = x;
  for (size_t l = 0; l < linears_->size(); ++l) {
    // Transform first, then propagate: messages have the (small) output width.
    h = linears_[l]->as<torch::nn::Linear>()->forward(h);
    if (propagate) h = propagate(h);
    h = h + biases_[l];
    if (l + 1 < linears_->size()) h = torch::relu(h);
  }
  return h;
}

namespace {

// Mean over each graph's nodes (one segment sum for all graphs), then unit length.
torch::Tensor unit_means(const torch::Tensor& h, const torch::Tensor& graph_of, const torch::Tensor& counts) {
  auto mean = torch::zeros({counts.size(0), h.size(1)}, h.options()).index_add(0, graph_of, h) / counts;
  return mean / mean.norm(2, 1, true).clamp_min(1e-12);
}

}  // namespace

torch::Tensor PopulationEncoderImpl::forward(const GraphBatch& b) {
  std::function<torch::Tensor(const torch::Tensor&)> propagate;
  const auto row_starts = sparse_row_starts(b.adjacency);
  if (b.adjacency.defined())
    propagate = [&](const torch::Tensor& h) { return SymmetricPropagate::apply(b.adjacency, row_starts, h); };
  const auto h = cell_features(b.x, propagate);
  auto counts = to_device_async(torch::tensor(b.sizes, torch::kLong), h.device()).to(h.scalar_type()).unsqueeze(1);
  return unit_means(h, b.graph_of, counts);
}

torch::Tensor PopulationEncoderImpl::forward(const PaddedGraphBatch& b) {
  std::function<torch::Tensor(const torch::Tensor&)> propagate;
  const auto row_starts = b.scatter ? torch::Tensor() : sparse_row_starts(b.adjacency);
  if (b.adjacency.defined() && b.scatter)
    propagate = [&](const torch::Tensor& h) {
      return torch::zeros_like(h).index_add(0, b.dst, h.index_select(0, b.src) * b.weight.unsqueeze(1));
    };
  else if (b.adjacency.defined())
    propagate = [&](const torch::Tensor& h) { return SymmetricPropagate::apply(b.adjacency, row_starts, h); };
  const auto h = cell_features(b.x, propagate);
  return unit_means(h, b.graph_of, b.counts).narrow(0, 0, b.slots);
}

}  // namespace popflow

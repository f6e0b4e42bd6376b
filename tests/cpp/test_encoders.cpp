// kNN graphs and population encoders (encoders.h).
#include <torch/torch.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "check.h"
#include "encoders.h"
#include "fixtures.h"
#include "spmm_cpu.h"

using namespace popflow;
using namespace fixtures;

TEST_CASE("knn_indices: matches brute force, across chunks") {
  torch::manual_seed(50);
  auto x = torch::randn({150, 3});
  const int64_t k = 7;
  auto nn = knn_indices(x, k, /*chunk_rows=*/37);
  PF_CHECK(nn.size(0) == 150 && nn.size(1) == k);
  auto xd = x.to(torch::kDouble);
  auto acc = nn.accessor<int64_t, 2>();
  for (int64_t i = 0; i < 150; ++i) {
    std::vector<std::pair<double, int64_t>> d;
    for (int64_t j = 0; j < 150; ++j)
      if (j != i) d.push_back({(xd[i] - xd[j]).pow(2).sum().item<double>(), j});
    std::sort(d.begin(), d.end());
    for (int64_t r = 0; r < k; ++r) {
      PF_CHECK(acc[i][r] != i);
      // Compare distances (robust to float ties), nearest first.
      const double got = (xd[i] - xd[acc[i][r]]).pow(2).sum().item<double>();
      PF_CHECK_NEAR(got, d[r].first, 1e-5);
    }
  }
  // Duplicated cells: a cell never lists itself, even when tied with its copy.
  auto dup = torch::cat({x.slice(0, 0, 10), x.slice(0, 0, 10)});
  auto nd = knn_indices(dup, 1);
  for (int64_t i = 0; i < 20; ++i) PF_CHECK(nd[i][0].item<int64_t>() == (i + 10) % 20);
  PF_CHECK_THROWS_AS(knn_indices(x.slice(0, 0, 5), 5), std::invalid_argument);
}

TEST_CASE("build_graph: GCN normalisation D^-1/2 (A + I) D^-1/2 of the symmetrised kNN graph") {
  torch::manual_seed(51);
  auto x = torch::randn({60, 2});
  const int64_t k = 4;
  auto g = build_graph(x, k, 0, 1);
  PF_CHECK(g.nodes() == 60);
  // Brute force: adjacency from the kNN lists, symmetrised, plus identity.
  auto nn = knn_indices(x, k);
  auto a = torch::eye(60, kD);
  for (int64_t i = 0; i < 60; ++i)
    for (int64_t r = 0; r < k; ++r) {
      int64_t j = nn[i][r].item<int64_t>();
      a[i][j] = 1.0;
      a[j][i] = 1.0;
    }
  auto dinv = a.sum(1).rsqrt();
  auto expected = dinv.unsqueeze(1) * a * dinv.unsqueeze(0);
  auto got = dense_adjacency(g).to(torch::kDouble);
  PF_CHECK_NEAR(max_abs(got - expected), 0.0, 1e-6);
  PF_CHECK_NEAR(max_abs(got - got.t()), 0.0, 1e-7);
  // Edges unique and in row-major order (batch_graphs() marks the batch coalesced).
  for (const auto& graph : {g, build_graph(torch::randn({300, 5}), 12, 0, 1)}) {
    auto key = graph.src * graph.nodes() + graph.dst;
    PF_CHECK((key.slice(0, 1) > key.slice(0, 0, -1)).all().item<bool>());
    PF_CHECK_NEAR(max_abs(dense_adjacency(graph) - dense_adjacency(graph).t()), 0.0, 1e-7);
  }
  // Each node has between k + 1 (itself and its own neighbours) and more edges.
  auto degree = (got > 0).sum(1);
  PF_CHECK(degree.min().item<int64_t>() >= k + 1);
  // k = 0: self-loops of weight 1 only; the cap subsamples deterministically.
  auto g0 = build_graph(x, 0, 0, 1);
  PF_CHECK_NEAR(max_abs(dense_adjacency(g0) - torch::eye(60)), 0.0, 0.0);
  auto capped = build_graph(x, k, 25, 9), again = build_graph(x, k, 25, 9);
  PF_CHECK(capped.nodes() == 25 && torch::equal(capped.x, again.x) && torch::equal(capped.src, again.src));
  // A population of no more than k cells uses k = m - 1: every cell joined to every other.
  auto small = build_graph(x.slice(0, 0, 4), 10, 0, 1);
  auto full = torch::full({4, 4}, 0.25, kD);
  PF_CHECK_NEAR(max_abs(dense_adjacency(small).to(torch::kDouble) - full), 0.0, 1e-7);
  PF_CHECK(torch::equal(dense_adjacency(build_graph(x.slice(0, 0, 4), 3, 0, 1)), dense_adjacency(small)));
  auto single = build_graph(x.slice(0, 0, 1), 10, 0, 1);
  PF_CHECK_NEAR(max_abs(dense_adjacency(single) - torch::eye(1)), 0.0, 0.0);
}

TEST_CASE("sparse_times_dense: the dense product's values, rows in any split, LibTorch's product elsewhere") {
  torch::manual_seed(53);
  // A block-diagonal batch of two kNN graphs (rows with many entries) and a
  // matrix with empty rows; widths with a partial last vector, and none.
  auto ga = build_graph(torch::randn({70, 3}), 6, 0, 1), gb = build_graph(torch::randn({45, 3}), 4, 0, 2);
  const auto batch = batch_graphs({&ga, &gb}, torch::kCPU).adjacency;
  auto sparse_rows = torch::zeros({9, 7});
  sparse_rows.index_put_({1, 2}, 0.5f);
  sparse_rows.index_put_({1, 6}, -2.0f);
  sparse_rows.index_put_({8, 0}, 3.0f);
  for (const auto& a : {batch, sparse_rows.to_sparse()}) {
    PF_CHECK(a.is_coalesced());
    const auto dense = a.to_dense();
    for (int64_t w : {1, 5, 16, 21, 64}) {
      auto h = torch::randn({a.size(1), w});
      const auto y = sparse_times_dense(a, h);
      PF_CHECK(y.sizes() == torch::IntArrayRef({a.size(0), w}));
      PF_CHECK_NEAR(max_abs(y - torch::mm(dense, h)), 0.0, 1e-5);
      PF_CHECK_NEAR(max_abs(y - torch::mm(a, h)), 0.0, 1e-5);
      // Split across two threads, each row is summed as on one: the same bits.
      const int threads = at::get_num_threads();
      at::set_num_threads(2);
      const auto y2 = sparse_times_dense(a, h);
      at::set_num_threads(threads);
      PF_CHECK(torch::equal(y, y2));
      // Row starts found once and passed in: the same product.
      const auto starts = sparse_row_starts(a);
      PF_CHECK(starts.size(0) == a.size(0) + 1 && starts[-1].item<int64_t>() == a._nnz());
      PF_CHECK(torch::equal(sparse_times_dense(a, h, starts), y));
      // A transposed (non-contiguous) right-hand side: the same values.
      auto ht = h.t().contiguous().t();
      PF_CHECK(torch::equal(sparse_times_dense(a, ht), y));
    }
  }
  // No entries at all: every row starts at 0, the product is zero.
  const auto none = torch::zeros({4, 3}).to_sparse();
  PF_CHECK(torch::equal(sparse_row_starts(none), torch::zeros({5}, torch::kLong)));
  PF_CHECK(torch::equal(sparse_times_dense(none, torch::randn({3, 2})), torch::zeros({4, 2})));
  // What the kernel does not take goes to torch::mm: doubles, an uncoalesced matrix.
  auto hd = torch::randn({7, 3}, torch::kDouble);
  auto ad = sparse_rows.to(torch::kDouble).to_sparse();
  PF_CHECK(torch::equal(sparse_times_dense(ad, hd), torch::mm(ad, hd)));
  PF_CHECK(!sparse_row_starts(ad).defined() && !sparse_row_starts(torch::Tensor()).defined());
  auto loose =
      torch::sparse_coo_tensor(torch::tensor({{1, 1}, {2, 2}}, torch::kLong), torch::tensor({1.f, 2.f}), {9, 7});
  PF_CHECK(!loose.is_coalesced());
  auto h = torch::randn({7, 4});
  PF_CHECK_NEAR(max_abs(sparse_times_dense(loose, h) - torch::mm(loose.to_dense(), h)), 0.0, 1e-6);
}

TEST_CASE("PopulationEncoder: unit norm, batching equals one graph at a time, kme fixed") {
  torch::manual_seed(52);
  auto ga = build_graph(torch::randn({40, 2}), 5, 0, 1);
  auto gb = build_graph(torch::randn({30, 2}) + 3, 5, 0, 2);
  for (auto kind : {EncoderKind::GCN, EncoderKind::Mean, EncoderKind::KME}) {
    EncoderConfig ec;
    ec.kind = kind;
    ec.dim = 2;
    ec.layers = 3;
    ec.width = 16;
    PopulationEncoder enc(ec);
    auto both = enc->forward(batch_graphs({&ga, &gb}, torch::kCPU));
    PF_CHECK(both.size(0) == 2 && both.size(1) == 16);
    PF_CHECK_NEAR(max_abs(both.norm(2, 1) - 1), 0.0, 1e-5);
    auto a = enc->forward(batch_graphs({&ga}, torch::kCPU)), b = enc->forward(batch_graphs({&gb}, torch::kCPU));
    PF_CHECK_NEAR(max_abs(both - torch::cat({a, b})), 0.0, 1e-5);
    PF_CHECK(max_abs(a - b) > 1e-3);  // different populations, different embeddings
    PF_CHECK((kind == EncoderKind::KME) == enc->parameters().empty());
  }
  // The GCN forward is Â h W (+ b) per layer with ReLU between: check one layer by hand.
  EncoderConfig one;
  one.dim = 2;
  one.layers = 1;
  one.width = 4;
  PopulationEncoder enc(one);
  auto w = enc->named_parameters()["layers.0.weight"];  // [4, 2]; the bias starts at 0
  auto h = torch::matmul(dense_adjacency(ga), torch::matmul(ga.x, w.t()));
  auto m = h.mean(0);
  PF_CHECK_NEAR(max_abs(enc->forward(batch_graphs({&ga}, torch::kCPU))[0] - m / m.norm()), 0.0, 1e-5);
}

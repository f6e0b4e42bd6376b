// Staged training steps (TrainConfig::step_graph, step_graph.h): the fixed
// buffers a CUDA graph replays. On the CPU they run eagerly, which checks
// everything but the capture itself: the padded graph batch embeds as the
// sparse one does, staged fits train the model eager fits train, the device
// step count and the in-place checks behave as the host's.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "check.h"
#include "encoders.h"
#include "fixtures.h"
#include "optimizer.h"
#include "population_model.h"
#include "population_store.h"
#include "step_graph.h"
#include "trainer.h"

using namespace popflow;
using namespace fixtures;

namespace {

// Graphs of `sizes` random 2-d cells (k neighbours), and their padded batch
// with `slots` graph slots, room to spare and the padding edges in a block of
// their own, graph i in slot i.
struct Graphs {
  std::vector<PopulationGraph> graphs;
  PaddedGraphBatch padded;
};

Graphs some_graphs(const std::vector<int64_t>& sizes, int64_t slots, int64_t k, bool scatter) {
  Graphs out;
  int64_t nodes = 0, edges = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    out.graphs.push_back(build_graph(torch::randn({sizes[i], 2}), k, 0, 11 + i));
    nodes += sizes[i];
    edges += out.graphs.back().src.size(0);
  }
  const int64_t ec = edges + 13, r = static_cast<int64_t>(std::ceil(std::sqrt(ec))), nr = nodes + 7, nc = nr + r;
  PaddedGraphBatch& p = out.padded;
  p.x = torch::zeros({nc, 2});
  auto index = torch::zeros({2, ec}, torch::kLong);
  p.src = index[0];
  p.dst = index[1];
  p.weight = torch::zeros({ec});
  p.graph_of = torch::full({nc}, slots, torch::kLong);
  p.counts = torch::ones({slots + 1, 1});
  p.slots = slots;
  p.scatter = scatter;
  int64_t node = 0, edge = 0;
  for (size_t i = 0; i < out.graphs.size(); ++i) {
    const auto& g = out.graphs[i];
    const int64_t m = g.nodes(), e = g.src.size(0);
    p.x.narrow(0, node, m).copy_(g.x);
    p.src.narrow(0, edge, e).copy_(g.src + node);
    p.dst.narrow(0, edge, e).copy_(g.dst + node);
    p.weight.narrow(0, edge, e).copy_(g.weight);
    p.graph_of.narrow(0, node, m).fill_(static_cast<int64_t>(i));
    p.counts[i][0] = static_cast<float>(m);
    node += m;
    edge += e;
  }
  for (int64_t j = 0; edge + j < ec; ++j) {
    p.src[edge + j] = nr + j / r;
    p.dst[edge + j] = nr + j % r;
  }
  p.counts[slots][0] = static_cast<float>(nc - node);
  if (k > 0) {
    p.adjacency = torch::sparse_coo_tensor(index, p.weight, {nc, nc});
    p.adjacency._coalesced_(true);
    PF_CHECK(p.adjacency.coalesce()._nnz() == ec);  // every position once: the flag tells the truth
  }
  return out;
}

// A store whose populations share source blocks: block b holds `per_block`
// cells around centre b, and population p goes from source block
// sources[p] to its own target block (its source's cells moved by p's shift).
std::string shared_source_store(const std::vector<int64_t>& sources, int64_t n_source_blocks, int64_t per_block) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "popflow_test_step_graph_store").string();
  StoreLayout layout;
  layout.dim = 2;
  std::vector<torch::Tensor> cells;
  for (int64_t b = 0; b < n_source_blocks; ++b) {
    cells.push_back(torch::randn({per_block, 2}) + static_cast<float>(b));
    layout.blocks.push_back({"control" + std::to_string(b), 0, per_block, {}});
  }
  for (size_t p = 0; p < sources.size(); ++p) {
    const auto shift = torch::tensor({std::cos(1.0f * p), std::sin(1.0f * p)});
    cells.push_back(cells[sources[p]] + 2 * shift);
    layout.blocks.push_back({"treated" + std::to_string(p), 0, per_block, {}});
    layout.populations.push_back({"p" + std::to_string(p), sources[p], n_source_blocks + static_cast<int64_t>(p)});
  }
  StoreWriter writer(path, layout);
  int64_t row = 0;
  for (size_t b = 0; b < cells.size(); ++b) {
    auto x = cells[b].contiguous();
    std::vector<int64_t> dest(per_block), block(per_block, static_cast<int64_t>(b));
    for (int64_t i = 0; i < per_block; ++i) dest[i] = row++;
    writer.write(x.data_ptr<float>(), per_block, dest.data(), block.data());
  }
  writer.finish();
  return path;
}

// Five populations around the origin, with one label value each when asked.
PopulationSet five_populations(int64_t cells, bool labels) {
  torch::manual_seed(8);
  auto data = mean_shift_populations({{0, 0}, {1.5, 0}, {0, 1.5}, {-1.5, 0}, {0, -1.5}}, cells);
  if (labels) data.labels = torch::arange(5, torch::kLong).view({5, 1});
  return data;
}

// Training with the device-side checks that staged steps need (sync_every > 1), and clipping.
TrainConfig deferred_checks(int64_t steps, int64_t sync_every) {
  TrainConfig tc;
  tc.steps = steps;
  tc.seed = 3;
  tc.sync_every = sync_every;
  tc.clip_norm = 1.0;
  return tc;
}

struct Fit {
  TrainResult result;
  std::shared_ptr<PopulationModel> model;
};

// A fit of the small model from the same initial weights, staged or not.
template <class Data>
Fit fit(const PopulationConfig& pc, Data& data, TrainConfig tc, bool staged, PopulationTrainingStats* stats = nullptr,
        const PopulationTraining& how = {}) {
  tc.step_graph = staged;
  torch::manual_seed(1);
  Fit f;
  f.model = make_population_model(population_flow(), pc, "cpu");
  f.result = train_population_model(*f.model, data, tc, {}, how, stats);
  return f;
}

void check_same_fit(const TrainResult& staged, const TrainResult& eager, torch::nn::Module& a, torch::nn::Module& b,
                    double tol) {
  PF_CHECK_MSG(staged.status == eager.status, staged.status << " vs " << eager.status);
  PF_CHECK(staged.loss.size() == eager.loss.size());
  for (size_t i = 0; i < staged.loss.size() && i < eager.loss.size(); ++i)
    PF_CHECK_MSG(std::abs(staged.loss[i] - eager.loss[i]) <= tol * std::abs(eager.loss[i]),
                 "step " << i + 1 << ": " << staged.loss[i] << " staged, " << eager.loss[i] << " eager");
  const auto pa = a.parameters(), pb = b.parameters();
  PF_CHECK(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size() && i < pb.size(); ++i)
    PF_CHECK_MSG(torch::allclose(pa[i], pb[i], 1e-3, 1e-4), "parameter " << i << " differs");
}

// Two of the three groups drawn a step, 16 cells each.
TrainConfig grouped_training(int64_t steps, int64_t sync_every) {
  TrainConfig tc = deferred_checks(steps, sync_every);
  tc.batch_size = 16;
  tc.groups_per_step = 2;
  return tc;
}

// A flow fit from the same initial weights, staged or not; the model in `model`.
TrainResult fit_flow(const FlowConfig& fc, const TrainingData& data, TrainConfig tc, bool staged,
                     const std::string& device, std::shared_ptr<FlowModel>& model) {
  tc.step_graph = staged;
  tc.device = device;
  torch::manual_seed(1);
  model = make_model(fc, device);
  return train(*model, data, tc);
}

}  // namespace

TEST_CASE("encoder: a padded graph batch embeds as the sparse batch does, gradients included") {
  for (EncoderKind kind : {EncoderKind::GCN, EncoderKind::KME}) {
    for (const auto& [k, scatter] : {std::pair<int64_t, bool>{3, false}, {3, true}, {0, false}}) {
      torch::manual_seed(3);
      EncoderConfig ec;
      ec.kind = kind;
      ec.dim = 2;
      ec.width = 8;
      ec.layers = 2;
      PopulationEncoder encoder(ec);
      const Graphs g = some_graphs({9, 5, 12}, 5, k, scatter);  // two empty slots, padding nodes and edges
      std::vector<const PopulationGraph*> batch;
      for (const auto& one : g.graphs) batch.push_back(&one);
      const auto sparse = encoder->forward(batch_graphs(batch, torch::kCPU));
      const auto padded = encoder->forward(g.padded);
      PF_CHECK(padded.size(0) == 5 && padded.size(1) == sparse.size(1));
      PF_CHECK(torch::allclose(padded.narrow(0, 0, 3), sparse, 1e-5, 1e-6));
      PF_CHECK(padded.narrow(0, 3, 2).abs().max().item<float>() == 0);  // empty slots: zero rows
      const auto params = encoder->parameters();
      if (params.empty()) continue;  // KME: nothing trains
      const auto weights = torch::randn({3, sparse.size(1)});
      std::vector<torch::Tensor> g_sparse, g_padded;
      for (auto& p : params) p.mutable_grad() = torch::Tensor();
      (sparse * weights).sum().backward();
      for (auto& p : params) g_sparse.push_back(p.grad().clone());
      for (auto& p : params) p.mutable_grad() = torch::Tensor();
      (padded.narrow(0, 0, 3) * weights).sum().backward();
      for (size_t i = 0; i < params.size(); ++i) {
        PF_CHECK(torch::isfinite(params[i].grad()).all().item<bool>());
        PF_CHECK(torch::allclose(params[i].grad(), g_sparse[i], 1e-4, 1e-6));
      }
    }
  }
}

TEST_CASE("FlatAdam: counting steps on the device updates as counting on the host, and rolls back alike") {
  torch::manual_seed(2);
  auto make = [] {
    torch::manual_seed(4);
    return torch::nn::Linear(5, 3);
  };
  auto host_net = make(), device_net = make();
  AdamSettings s;
  s.lr = 0.05;
  s.ema_decay = 0.9;
  FlatAdam host(*host_net, s), device(*device_net, s);
  device.count_on_device();
  for (int step = 1; step <= 6; ++step) {
    const auto g = torch::randn({host.parameter_count()});
    const auto keep = torch::tensor(step == 5 ? 0.0f : 1.0f);  // step 5 is refused
    host.gradient().copy_(g);
    device.gradient().copy_(g);
    host.remember(keep);
    host.step(keep);
    device.remember(keep);
    device.update(keep);
    device.count_step();
    PF_CHECK(torch::allclose(host.weights(), device.weights(), 1e-6, 1e-7));
  }
  PF_CHECK(host.state().m.equal(device.state().m));
  host.rollback();
  device.rollback();
  PF_CHECK(torch::allclose(host.weights(), device.weights(), 1e-6, 1e-7));
  // After the rollback both count the same steps: the next update agrees too.
  const auto g = torch::randn({host.parameter_count()});
  host.gradient().copy_(g);
  device.gradient().copy_(g);
  host.step(torch::tensor(1.0f));
  device.update(torch::tensor(1.0f));
  device.count_step();
  PF_CHECK(torch::allclose(host.weights(), device.weights(), 1e-6, 1e-7));
}

TEST_CASE("step_graph: a staged MFM or CGFM fit trains the model the eager fit trains") {
  struct Case {
    bool labels;
    bool encoder;
    bool alternating;
    int64_t per_step;  // 5: every population every step (the graph batch then has no room to spare)
  };
  for (const Case c : {Case{false, true, false, 3}, Case{false, true, false, 5}, Case{true, false, false, 3},
                       Case{true, true, false, 3}, Case{false, true, true, 3}}) {
    const auto data = five_populations(30, c.labels);
    PopulationConfig pc = small_population(EncoderKind::GCN, 2, 8, 12, c.per_step);
    pc.k = 4;
    pc.use_encoder = c.encoder;
    pc.alternating = c.alternating;
    if (c.labels) pc.label_levels = {5};
    const TrainConfig tc = deferred_checks(16, 5);
    const Fit eager = fit(pc, data, tc, false);
    PF_CHECK(eager.result.step_graph.empty());
    for (bool scatter : {false, true}) {
      PopulationTraining how;
      how.scatter_propagation = scatter;
      const Fit staged = fit(pc, data, tc, true, nullptr, how);
      const std::string& said = staged.result.step_graph;
      PF_CHECK_MSG(c.alternating ? said.rfind("eager: the alternating schedule", 0) == 0 : said == "staged", said);
      check_same_fit(staged.result, eager.result, *staged.model->net, *eager.model->net, 1e-4);
    }
  }
}

TEST_CASE("step_graph: staged steps from a store whose populations share source blocks, under a graph cache cap") {
  torch::manual_seed(6);
  // Six populations on three control blocks: a step of four draws 2 or 3 distinct sources.
  const std::string path = shared_source_store({0, 0, 1, 1, 2, 2}, 3, 20);
  auto store = std::make_shared<const PopulationStore>(path);
  PopulationConfig pc = small_population(EncoderKind::GCN, 2, 8, 10, 4);
  pc.k = 3;
  const TrainConfig tc = deferred_checks(14, 4);
  for (int64_t cap : {0, 1}) {  // no cap; a cap of 1 byte (nothing kept: graphs rebuilt when needed again)
    PopulationTraining how;
    how.graph_cache_bytes = cap;
    std::vector<Fit> fits;
    for (bool staged : {false, true}) {
      auto blocks = store_population_data(store, torch::Tensor(), torch::Tensor());
      PopulationTrainingStats stats;
      fits.push_back(fit(pc, *blocks, tc, staged, &stats, how));
      if (cap == 0)
        PF_CHECK(stats.graphs_built == 3 && stats.graph_cache_peak_bytes > 0);  // one per control block, either way
      else
        PF_CHECK_MSG(stats.graphs_built > 3 && stats.graph_cache_peak_bytes == 0, stats.graphs_built);
    }
    PF_CHECK_MSG(fits[1].result.step_graph == "staged", fits[1].result.step_graph);
    check_same_fit(fits[1].result, fits[0].result, *fits[1].model->net, *fits[0].model->net, 1e-4);
  }
  std::remove(path.c_str());
}

TEST_CASE("step_graph: a staged fit that diverges stops where the eager fit stops, with the same weights") {
  torch::manual_seed(8);
  auto data = mean_shift_populations({{0, 0}, {1.5, 0}, {0, 1.5}}, 30);
  PopulationConfig pc = small_population(EncoderKind::GCN, 2, 8, 12, 2);
  pc.k = 4;
  TrainConfig tc = deferred_checks(40, 6);
  tc.lr = 1e30;  // the first step's weights give non-finite losses
  const Fit eager = fit(pc, data, tc, false), staged = fit(pc, data, tc, true);
  PF_CHECK_MSG(eager.result.status == "nonfinite", eager.result.status);
  PF_CHECK(staged.result.status == eager.result.status && staged.result.steps_done == eager.result.steps_done);
  PF_CHECK(same_parameters(*staged.model->net, *eager.model->net));
}

TEST_CASE("step_graph: staged flow fits (I-CFM, SB, target FM and VP paths, a count source, paired cells) "
          "train the model eager fits train; host couplings stay eager") {
  struct Case {
    PathKind path;
    CouplingKind coupling;
    bool zinb;         // a ZINB count source (target FM)
    bool three_times;  // two intervals, else one
  };
  for (const Case c : {Case{PathKind::ICFM, CouplingKind::Independent, false, true},
                       Case{PathKind::SBCFM, CouplingKind::Independent, false, true},
                       Case{PathKind::TargetFM, CouplingKind::Independent, false, true},
                       Case{PathKind::VPCosine, CouplingKind::Independent, false, false},
                       Case{PathKind::TargetFM, CouplingKind::Independent, true, false},
                       Case{PathKind::ICFM, CouplingKind::Paired, false, false},
                       Case{PathKind::ICFM, CouplingKind::ExactOT, false, false}}) {
    const TrainingData data = grouped_snapshots(c.three_times ? 3 : 2);
    FlowConfig fc = grouped_flow(c.path, c.coupling, c.three_times);
    if (c.zinb) {
      fc.source.kind = SourceKind::ZINB;
      fc.source.rows = 3;
      fc.source.values = {2.0, 1.0, 5.0, 5.0, 0.2, 0.4};  // mu, theta, pi per feature
      fc.source.log_base = std::exp(1.0);
    }
    const TrainConfig tc = grouped_training(12, 4);
    std::vector<TrainResult> results;
    std::vector<std::shared_ptr<FlowModel>> models;
    for (bool staged : {false, true}) {
      models.push_back(nullptr);
      results.push_back(fit_flow(fc, data, tc, staged, "cpu", models.back()));
    }
    const std::string& said = results[1].step_graph;
    if (c.coupling == CouplingKind::ExactOT) {
      PF_CHECK_MSG(said == "eager: the coupling is solved on the host for every minibatch", said);
    } else {
      PF_CHECK_MSG(said == "staged", said);
    }
    check_same_fit(results[1], results[0], *models[1]->net, *models[0]->net, 1e-4);
  }
}

TEST_CASE("StepGraph: runs the work eagerly on the CPU and says why it cannot capture elsewhere") {
  StepGraph graph(1);
  int runs = 0;
  for (int i = 0; i < 3; ++i) graph.run(torch::kCPU, [&] { ++runs; });
  PF_CHECK(runs == 3 && !graph.captured() && graph.failure().empty());
  if (!step_graphs_available()) {
    graph.run(torch::Device(torch::kCUDA, 0), [&] { ++runs; });
    PF_CHECK(runs == 4);
    PF_CHECK_MSG(graph.failure().find("without CUDA graphs") != std::string::npos, graph.failure());
  }
}

TEST_CASE("step_graph on a GPU: the captured step trains the model the eager GPU step trains") {
  if (!torch::cuda::is_available()) {
    std::printf("  skipped: no GPU\n");
    return;
  }
  for (bool labels : {false, true}) {
    const auto data = five_populations(60, labels);
    PopulationConfig pc = small_population(EncoderKind::GCN, 2, 16, 24, 3);
    pc.k = 6;
    if (labels) pc.label_levels = {5};
    TrainConfig tc = deferred_checks(40, 10);
    tc.device = "cuda";
    const auto on_gpu = [&](bool staged, bool scatter) {
      tc.step_graph = staged;
      PopulationTraining how;
      how.scatter_propagation = scatter;
      torch::manual_seed(1);
      Fit f;
      f.model = make_population_model(population_flow(), pc, "cuda");
      f.result = train_population_model(*f.model, data, tc, {}, how);
      return f;
    };
    const Fit eager = on_gpu(false, false);
    for (bool scatter : {false, true}) {
      const Fit captured = on_gpu(true, scatter);
      const std::string& said = captured.result.step_graph;
      std::printf("  %s, %s: %s; last loss %.6f captured, %.6f eager\n", labels ? "CGFM + GCN" : "MFM",
                  scatter ? "scatter-add" : "sparse product", said.c_str(), captured.result.loss.back(),
                  eager.result.loss.back());
      PF_CHECK_MSG(said == (step_graphs_available() ? "captured" : "staged, not captured: this popflow was built "
                                                                   "without CUDA graphs (a CPU LibTorch)"),
                   said);
      // Sums in another order (atomics, padding): agreement to float rounding, compounded over 40 steps.
      check_same_fit(captured.result, eager.result, *captured.model->net, *eager.model->net, 1e-3);
    }
  }
  // Flows: I-CFM over two intervals with groups and conditions, and target FM (noise drawn on the device).
  for (PathKind path : {PathKind::ICFM, PathKind::TargetFM}) {
    const TrainingData data = grouped_snapshots(3);
    const FlowConfig fc = grouped_flow(path, CouplingKind::Independent, true);
    const TrainConfig tc = grouped_training(40, 10);
    std::shared_ptr<FlowModel> eager_model, captured_model;
    const TrainResult eager = fit_flow(fc, data, tc, false, "cuda", eager_model);
    const TrainResult captured = fit_flow(fc, data, tc, true, "cuda", captured_model);
    std::printf("  flow (%s): %s; last loss %.6f captured, %.6f eager\n", path == PathKind::ICFM ? "I-CFM" : "target FM",
                captured.step_graph.c_str(), captured.loss.back(), eager.loss.back());
    PF_CHECK_MSG(captured.step_graph == (step_graphs_available() ? "captured"
                                                                 : "staged, not captured: this popflow was built "
                                                                   "without CUDA graphs (a CPU LibTorch)"),
                 captured.step_graph);
    check_same_fit(captured, eager, *captured_model->net, *eager_model->net, 1e-3);
  }
}

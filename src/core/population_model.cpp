#include "population_model.h"

#include <algorithm>
#include <cmath>
#include <future>
#include <numeric>
#include <unordered_map>
#include <random>
#include <stdexcept>

#include "config_text.h"
#include "coupling.h"
#include "device.h"
#include "model_file.h"
#include "optimizer.h"
#include "graph_cache.h"
#include "paths.h"
#include "population_store.h"
#include "step_seed.h"

namespace popflow {

PopulationNetImpl::PopulationNetImpl(const NetworkConfig& network, const PopulationConfig& population) {
  field = register_module("field", VectorField(network));
  if (population.use_encoder) encoder = register_module("encoder", PopulationEncoder(population.encoder));
  for (int64_t levels : population.label_levels) label_embeddings->push_back(torch::nn::Embedding(levels, population.label_dim));
  register_module("labels", label_embeddings);
}

namespace {

// Whether a CPU vector of label codes holds -1 (unseen), without an operator call.
bool any_unseen(const torch::Tensor& codes) {
  const auto a = codes.accessor<int64_t, 1>();
  for (int64_t i = 0; i < a.size(0); ++i)
    if (a[i] < 0) return true;
  return false;
}

}  // namespace

torch::Tensor PopulationNetImpl::condition(const torch::Tensor& embedding, const torch::Tensor& labels,
                                     const torch::Tensor& covariates) {
  std::vector<torch::Tensor> parts;
  if (encoder) parts.push_back(embedding);
  for (size_t j = 0; j < label_embeddings->size(); ++j) {
    auto table = label_embeddings[j]->as<torch::nn::Embedding>();
    auto codes = labels.select(1, j);
    auto rows = table->forward(codes.clamp_min(0));
    // Code -1: a value unseen in training gets the mean embedding, what averaging
    // one-hot conditions over the training values gives. On the host the codes
    // are looked at directly; elsewhere the blend runs whatever they are, since
    // asking would read back from the device and drain its queue every step.
    if (!codes.is_cpu() || codes.scalar_type() != torch::kLong || any_unseen(codes))
      rows = torch::where(codes.lt(0).unsqueeze(1), table->weight.mean(0).unsqueeze(0).expand_as(rows), rows);
    parts.push_back(rows);
  }
  if (covariates.defined() && covariates.size(1) > 0) parts.push_back(covariates);
  if (parts.empty()) throw std::invalid_argument("population model: no conditioning (no encoder, labels or covariates)");
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 1);  // one part: no copy (an MFM step's case)
}

FlowModel PopulationModel::flow() const {
  FlowModel f;
  f.config = config;
  f.net = net->field;
  f.device = device;
  return f;
}

std::shared_ptr<PopulationModel> make_population_model(FlowConfig config, PopulationConfig population, const std::string& device) {
  if (config.times.size() != 2) throw std::invalid_argument("population model: exactly two times (source, target) expected");
  if (gaussian_source(config.path.kind))
    throw std::invalid_argument("population model: the target FM and VP paths have no source population; use the "
                                "icfm or sbcfm path");
  population.encoder.dim = config.network.dim;
  config.network.cond_dim = population.cond_dim();
  if (config.network.cond_dim == 0)
    throw std::invalid_argument("population model: needs a population encoder or labels to condition on");
  auto model = std::make_shared<PopulationModel>();
  model->config = config;
  model->population = population;
  model->device = parse_device(device);
  model->net = PopulationNet(config.network, population);
  model->net->to(model->device);
  return model;
}

namespace {

int64_t population_count(const PopulationSet& data) {
  return data.population.empty() ? 0 : *std::max_element(data.population.begin(), data.population.end()) + 1;
}

// Optional per-population rows, moved to the model's device (undefined stays undefined).
torch::Tensor rows_on(const torch::Tensor& t, const torch::Tensor& index, const torch::Device& dev,
                      torch::ScalarType type) {
  if (!t.defined() || t.size(1) == 0) return torch::Tensor();
  return t.to(dev, type).index_select(0, index);
}

}  // namespace

std::string validate_population_set(const PopulationModel& model, const PopulationSet& data) {
  if (!data.x.defined() || data.x.dim() != 2) return "cells must be a 2-d matrix";
  if (data.x.size(1) != model.config.network.dim)
    return "cells have " + std::to_string(data.x.size(1)) + " features, the model expects " +
           std::to_string(model.config.network.dim);
  const int64_t n = data.x.size(0);
  if (static_cast<int64_t>(data.side.size()) != n) return "one side (source or target) per cell is required";
  if (static_cast<int64_t>(data.population.size()) != n) return "one population per cell is required";
  if (!torch::isfinite(data.x).all().item<bool>()) return "cells contain NA, NaN or infinite values";
  for (int64_t s : data.side)
    if (s != 0 && s != 1) return "side must be 0 (source) or 1 (target)";
  for (int64_t p : data.population)
    if (p < 0) return "negative population id";
  const int64_t n_pop = population_count(data);
  const auto n_labels = static_cast<int64_t>(model.population.label_levels.size());
  if (n_labels > 0) {
    if (!data.labels.defined() || data.labels.dim() != 2 || data.labels.size(0) != n_pop ||
        data.labels.size(1) != n_labels)
      return "labels must have one row per population and " + std::to_string(n_labels) + " columns";
    auto lab = data.labels.to(torch::kLong);
    for (int64_t j = 0; j < n_labels; ++j) {
      auto col = lab.select(1, j);
      if (col.min().item<int64_t>() < -1 || col.max().item<int64_t>() >= model.population.label_levels[j])
        return "label codes out of range";
    }
  }
  if (model.population.covariates > 0 &&
      (!data.covariates.defined() || data.covariates.dim() != 2 || data.covariates.size(0) != n_pop ||
       data.covariates.size(1) != model.population.covariates))
    return "covariates must have one row per population and " + std::to_string(model.population.covariates) + " columns";
  return "";
}

namespace {

// An in-memory PopulationSet as blocks: population p's source cells are block
// p, its target cells block P + p, each in the set's row order.
class MemoryPopulationData : public PopulationData {
 public:
  explicit MemoryPopulationData(const PopulationSet& set) : set_(set), n_pop_(population_count(set)) {
    rows_.assign(static_cast<size_t>(2 * n_pop_), {});
    for (size_t i = 0; i < set.population.size(); ++i)
      rows_[(set.side[i] == 0 ? 0 : n_pop_) + set.population[i]].push_back(static_cast<int64_t>(i));
    x_cpu_ = set.x.to(torch::kCPU, torch::kFloat).contiguous();
  }
  int64_t dim() const override { return set_.x.size(1); }
  int64_t populations() const override { return n_pop_; }
  int64_t blocks() const override { return 2 * n_pop_; }
  int64_t block_size(int64_t b) const override { return static_cast<int64_t>(rows_[b].size()); }
  int64_t source_block(int64_t p) const override { return p; }
  int64_t target_block(int64_t p) const override { return n_pop_ + p; }
  torch::Tensor labels() const override { return set_.labels; }
  torch::Tensor covariates() const override { return set_.covariates; }
  torch::Tensor block_cells(int64_t b) const override {
    return x_cpu_.index_select(0, torch::tensor(rows_[b], torch::kLong));
  }
  bool on_disk() const override { return false; }
  torch::Tensor all_cells() const override { return set_.x; }
  const std::vector<std::vector<int64_t>>* block_rows() const override { return &rows_; }

 private:
  const PopulationSet& set_;
  int64_t n_pop_;
  std::vector<std::vector<int64_t>> rows_;
  torch::Tensor x_cpu_;
};

class StorePopulationData : public PopulationData {
 public:
  StorePopulationData(std::shared_ptr<const PopulationStore> store, torch::Tensor labels, torch::Tensor covariates)
      : store_(std::move(store)), labels_(std::move(labels)), covariates_(std::move(covariates)) {}
  int64_t dim() const override { return store_->dim(); }
  int64_t populations() const override { return static_cast<int64_t>(store_->layout().populations.size()); }
  int64_t blocks() const override { return static_cast<int64_t>(store_->layout().blocks.size()); }
  int64_t block_size(int64_t b) const override { return store_->layout().blocks[b].count; }
  int64_t source_block(int64_t p) const override { return store_->layout().populations[p].source; }
  int64_t target_block(int64_t p) const override { return store_->layout().populations[p].target; }
  torch::Tensor labels() const override { return labels_; }
  torch::Tensor covariates() const override { return covariates_; }
  torch::Tensor block_cells(int64_t b) const override { return store_->read_block(b); }
  bool on_disk() const override { return true; }

 private:
  std::shared_ptr<const PopulationStore> store_;
  torch::Tensor labels_, covariates_;
};

// Labels and covariates of blocks-form data against the model (the cells are checked as they are written).
std::string validate_population_data(const PopulationModel& model, const PopulationData& data) {
  if (data.dim() != model.config.network.dim)
    return "cells have " + std::to_string(data.dim()) + " features, the model expects " +
           std::to_string(model.config.network.dim);
  const int64_t n_pop = data.populations();
  for (int64_t p = 0; p < n_pop; ++p)
    for (int64_t b : {data.source_block(p), data.target_block(p)})
      if (b < 0 || b >= data.blocks()) return "population " + std::to_string(p) + " names a block that does not exist";
  const auto n_labels = static_cast<int64_t>(model.population.label_levels.size());
  const torch::Tensor labels = data.labels(), covariates = data.covariates();
  if (n_labels > 0) {
    if (!labels.defined() || labels.dim() != 2 || labels.size(0) != n_pop || labels.size(1) != n_labels)
      return "labels must have one row per population and " + std::to_string(n_labels) + " columns";
    auto lab = labels.to(torch::kLong);
    for (int64_t j = 0; j < n_labels; ++j) {
      auto col = lab.select(1, j);
      if (col.min().item<int64_t>() < -1 || col.max().item<int64_t>() >= model.population.label_levels[j])
        return "label codes out of range";
    }
  }
  if (model.population.covariates > 0 &&
      (!covariates.defined() || covariates.dim() != 2 || covariates.size(0) != n_pop ||
       covariates.size(1) != model.population.covariates))
    return "covariates must have one row per population and " + std::to_string(model.population.covariates) + " columns";
  return "";
}

// Algorithm 1's objective for population models. With the alternating
// schedule, odd steps update the field and label embeddings (the primary
// optimiser) on cached, detached embeddings, even steps only the encoder.
// Graphs live in a GraphCache; with prefetching, the next draw's populations
// (a function of (seed, step, draw): the next step's, or with accumulation or
// data-parallel ranks this process's next draw of the step) have their blocks
// read and their missing graphs built on a background thread while this draw
// computes. A rank reads only the blocks of its own draws.
class PopulationObjective : public TrainingObjective {
  struct StepInput;  // below: blocks read and graphs built ahead

 public:
  PopulationObjective(PopulationModel& model, PopulationData& data, const PopulationTraining& how,
                      PopulationTrainingStats* stats)
      : model_(model),
        data_(data),
        how_(how),
        stats_(stats),
        graphs_(how.graph_cache_bytes),
        host_graphs_(how.graph_cache_bytes) {}

  ~PopulationObjective() override {
    if (pending_.valid()) pending_.wait();
  }

  void prepare(const TrainConfig& config) override {
    const PopulationConfig& population = model_.population;
    for (auto [name, value] : {std::make_pair("cells_per_population", population.cells_per_population),
                               std::make_pair("populations_per_step", population.populations_per_step)})
      if (value < 1)
        throw std::invalid_argument(std::string(name) + " must be >= 1, not " + std::to_string(value) +
                                    " (a model file written before it was recorded holds 0: set it before training)");
    const torch::Tensor labels = data_.labels(), covariates = data_.covariates();
    if (labels.defined() && labels.numel() > 0 && labels.min().item<int64_t>() < 0)
      throw std::invalid_argument("label codes out of range (unseen values exist only at prediction)");
    seed_ = config.seed;
    last_step_ = config.steps;
    fopt_ = torch::TensorOptions().dtype(torch::kFloat).device(model_.device);
    if (!data_.on_disk()) x_all_ = data_.all_cells().to(fopt_);
    // On the device once: rows_on() then selects without a copy from the host each step.
    labels_ = labels.defined() ? labels.to(model_.device, torch::kLong) : torch::Tensor();
    covariates_ = covariates.defined() ? covariates.to(fopt_) : torch::Tensor();
    index_populations();
    reg_default_ = std::max(2 * model_.config.path.sigma * model_.config.path.sigma, 1e-3);
    make_optimisers(adam_settings(config));
  }

  torch::nn::Module& network() override { return *model_.net; }

  void next_draw(int64_t draw, int64_t first_draw, int64_t draws) override {
    draw_ = draw;
    first_draw_ = first_draw;
    draws_ = draws;
  }

  std::vector<FlatAdam*> optimisers() override {
    if (encoder_opt_) return {opt_.get(), encoder_opt_.get()};
    return {opt_.get()};
  }

  FlatAdam& optimiser(int64_t step) override { return encoder_step(step) ? *encoder_opt_ : *opt_; }

  std::string why_not_resumable() const override {
    // Two optimisers and cached embeddings: no state to resume from.
    return alternate_ ? "a fit with the alternating schedule cannot be resumed; refit it, or use schedule = \"joint\""
                      : "";
  }

  torch::Tensor loss(int64_t step, std::mt19937_64& rng) override {
    const Regression r = regression(step, rng);
    return torch::mse_loss(model_.net->field->forward(r.xt, r.t, expand_rows(r.cond, r.n_cells)), r.ut);
  }

  // The field's gradient by hand (VectorField::mse_with_gradient); the
  // conditioning's gradient, summed over each population's rows, then goes
  // through autograd into the encoder and the label embeddings.
  torch::Tensor loss_and_gradient(int64_t step, std::mt19937_64& rng, FlatAdam& optimiser) override {
    return gradient_of(regression(step, rng), optimiser);
  }

  std::string why_not_staged() const override {
    if (alternate_) return "the alternating schedule steps two optimisers";
    if (repairs(model_.config.coupling.kind)) return "the coupling is solved on the host for every population";
    return "";
  }

  // The step's draws into fixed buffers: the rows (or, from a store, the
  // cells) and the populations' graphs as one padded batch, laid out by
  // source block (sorted), so that a step drawing the same blocks as the last
  // one copies no graph at all. Capacity is a quarter over the batch's (none
  // when every step draws every population) and grows when a batch does not
  // fit, the step then being captured again.
  bool stage(int64_t step, std::mt19937_64& rng) override {
    const auto dev = model_.device;
    const int64_t n_cells = model_.population.cells_per_population;
    staging_ = true;
    const std::vector<int64_t> chosen = choose(rng);
    const auto n_chosen = static_cast<int64_t>(chosen.size());
    StepInput in = take(step);
    read_blocks(chosen, in);
    bool kept = true;
    std::vector<int64_t> blocks;  // sorted unique source blocks: the graph slots in use
    if (model_.population.use_encoder) {
      for (int64_t p : chosen) blocks.push_back(data_.source_block(p));
      std::sort(blocks.begin(), blocks.end());
      blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
      kept = stage_graphs(blocks, n_chosen, in);
      report_graph_cache();
    }
    launch_next(step);

    // One host buffer: the two sides' rows, each population's graph slot, the populations.
    const int64_t n_rows = n_chosen * n_cells;
    auto draws = staging_tensor({2 * n_rows + 2 * n_chosen}, torch::kLong, dev);
    int64_t* const rows0 = draws.data_ptr<int64_t>();
    int64_t* const rows1 = rows0 + n_rows;
    draw_rows_into(chosen, rows0, rows1, rng);
    for (int64_t i = 0; i < n_chosen; ++i) {
      const int64_t b = data_.source_block(chosen[i]);
      rows1[n_rows + i] = blocks.empty() ? 0 : std::lower_bound(blocks.begin(), blocks.end(), b) - blocks.begin();
      rows1[n_rows + n_chosen + i] = chosen[i];
    }
    kept = stage_into(staged_.draws, draws, fopt_.dtype(torch::kLong)) && kept;
    if (data_.on_disk()) {
      auto cells = staging_tensor({2, n_rows, data_.dim()}, torch::kFloat, dev);
      copy_cells(chosen, rows0, rows1, in, cells.data_ptr<float>());
      kept = stage_into(staged_.cells, cells, fopt_) && kept;
    }
    staged_.n_chosen = n_chosen;
    return kept;
  }

  torch::Tensor staged_loss_and_gradient(FlatAdam& optimiser) override {
    const int64_t n_chosen = staged_.n_chosen, n_cells = model_.population.cells_per_population;
    const int64_t n_rows = n_chosen * n_cells;
    torch::Tensor embedding;
    if (model_.population.use_encoder)
      embedding =
          model_.net->encoder->forward(staged_.graphs).index_select(0, staged_.draws.narrow(0, 2 * n_rows, n_chosen));
    torch::Tensor x0, x1;
    if (data_.on_disk()) {
      x0 = staged_.cells[0];
      x1 = staged_.cells[1];
    } else {
      x0 = x_all_.index_select(0, staged_.draws.narrow(0, 0, n_rows));
      x1 = x_all_.index_select(0, staged_.draws.narrow(0, n_rows, n_rows));
    }
    return gradient_of(finish(embedding, staged_.draws.narrow(0, 2 * n_rows + n_chosen, n_chosen), x0, x1, n_cells),
                       optimiser);
  }

 private:
  // One step's regression: points x_t at times t, the path's velocity there,
  // and each chosen population's conditioning row ([P, cond_dim], with its
  // graph when the encoder or label embeddings train on this step).
  struct Regression {
    torch::Tensor xt, t, ut, cond;
    int64_t n_cells;
  };

  // The regression's field gradient by hand and, through autograd, the conditioning's.
  torch::Tensor gradient_of(const Regression& r, FlatAdam& optimiser) {
    optimiser.zero_grad();
    torch::Tensor cond_grad;
    const bool trained_cond = r.cond.requires_grad();
    auto loss = model_.net->field->mse_with_gradient(r.xt, r.t, expand_rows(r.cond.detach(), r.n_cells), r.ut,
                                                     trained_cond ? &cond_grad : nullptr);
    if (trained_cond) r.cond.backward(cond_grad.view({r.cond.size(0), r.n_cells, -1}).sum(1));
    return loss;
  }

  // The regression from the chosen populations' embeddings (undefined without
  // an encoder), their indices on the device (needed with labels or
  // covariates) and their coupled cells: conditioning, times and the path.
  Regression finish(const torch::Tensor& embedding, const torch::Tensor& chosen_index, const torch::Tensor& x0,
                    const torch::Tensor& x1, int64_t n_cells) {
    const auto dev = model_.device;
    torch::Tensor labels, covariates;
    if (labels_.defined() || covariates_.defined()) {
      labels = rows_on(labels_, chosen_index, dev, torch::kLong);
      covariates = rows_on(covariates_, chosen_index, dev, torch::kFloat);
    }
    auto cond_pop = model_.net->condition(embedding, labels, covariates);
    auto t = torch::rand({x0.size(0)}, fopt_);
    auto ps = sample_path(model_.config.path, x0, x1, t);
    return {ps.xt, t, ps.ut, cond_pop, n_cells};
  }

  // Each population's condition for its n_cells rows (expand: no sync, unlike repeat_interleave on a GPU).
  static torch::Tensor expand_rows(const torch::Tensor& cond, int64_t n_cells) {
    return cond.unsqueeze(1).expand({cond.size(0), n_cells, cond.size(1)}).reshape({-1, cond.size(1)});
  }

  Regression regression(int64_t step, std::mt19937_64& rng) {
    const auto dev = model_.device;
    const int64_t n_cells = model_.population.cells_per_population;
    const std::vector<int64_t> chosen = choose(rng);
    const auto n_chosen = static_cast<int64_t>(chosen.size());
    StepInput in = take(step);

    // Source blocks: populations sharing one share its graph and embedding.
    std::vector<int64_t> src(n_chosen), unique_src, slot(n_chosen);
    for (int64_t i = 0; i < n_chosen; ++i) {
      src[i] = data_.source_block(chosen[i]);
      auto at = std::find(unique_src.begin(), unique_src.end(), src[i]);
      slot[i] = at - unique_src.begin();
      if (at == unique_src.end()) unique_src.push_back(src[i]);
    }
    const bool shared = unique_src.size() != src.size();
    read_blocks(chosen, in);

    torch::Tensor embedding;
    std::vector<GraphCache::Graph> held;  // this step's graphs, whatever the cache evicts
    const auto batch_of = [&](const std::vector<int64_t>& blocks) {
      held.clear();
      std::vector<const PopulationGraph*> batch;
      for (int64_t b : blocks) {
        held.push_back(cached_graph(graphs_, b, in, dev));
        batch.push_back(held.back().get());
      }
      return batch_graphs(batch, dev);
    };
    const bool through_encoder = model_.population.use_encoder && (!alternate_ || encoder_step(step));
    if (through_encoder) {
      // Through the encoder, so that its step (or the joint step) trains it on the field's loss.
      auto fresh = model_.net->encoder->forward(batch_of(unique_src));
      if (alternate_)
        remember_embeddings(unique_src, fresh.detach());
      embedding = shared ? fresh.index_select(0, to_device_async(torch::tensor(slot, torch::kLong), dev)) : fresh;
    } else if (alternate_) {
      // Detached embeddings from the cache; blocks not embedded yet are embedded now.
      std::vector<int64_t> missing;
      for (int64_t b : unique_src)
        if (!cached_[b]) missing.push_back(b);
      if (!missing.empty()) {
        torch::NoGradGuard no_grad;
        auto fresh = model_.net->encoder->forward(batch_of(missing));
        remember_embeddings(missing, fresh);
      }
      embedding = embeddings_.index_select(0, to_device_async(torch::tensor(src, torch::kLong), dev));
    }
    // After this draw's graphs are in the cache: the next draw builds only what is missing.
    launch_next(step);
    // All populations' rows are drawn on the CPU, written straight into one
    // host buffer (no operator call per population) and moved in one
    // transfer; with independent coupling the whole batch then takes one path sample.
    const int64_t n_rows = n_chosen * n_cells;
    auto rows = torch::empty({2, n_rows}, torch::kLong);
    int64_t* const rows0 = rows.data_ptr<int64_t>();
    int64_t* const rows1 = rows0 + n_rows;
    draw_rows_into(chosen, rows0, rows1, rng);
    torch::Tensor x0, x1;
    if (data_.on_disk()) {
      // Rows are positions within their blocks, copied on the host into one buffer and moved in one transfer.
      auto both = torch::empty({2, n_rows, data_.dim()}, torch::kFloat);
      copy_cells(chosen, rows0, rows1, in, both.data_ptr<float>());
      both = to_device_async(both, dev);
      x0 = both[0];
      x1 = both[1];
    } else {
      rows = to_device_async(rows, dev);
      x0 = x_all_.index_select(0, rows[0]);
      x1 = x_all_.index_select(0, rows[1]);
    }
    if (repairs(model_.config.coupling.kind)) {
      std::vector<torch::Tensor> paired0, paired1;
      for (int64_t i = 0; i < n_chosen; ++i) {
        auto pair = couple(model_.config.coupling, x0.narrow(0, i * n_cells, n_cells),
                           x1.narrow(0, i * n_cells, n_cells), reg_default_, rng);
        paired0.push_back(pair.x0);
        paired1.push_back(pair.x1);
      }
      x0 = torch::cat(paired0);
      x1 = torch::cat(paired1);
    }
    report_graph_cache();
    torch::Tensor chosen_index;
    if (labels_.defined() || covariates_.defined())
      chosen_index = to_device_async(torch::tensor(chosen, torch::kLong), dev);
    return finish(embedding, chosen_index, x0, x1, n_cells);
  }

  // On disk: the chosen populations' blocks (read ahead, or now).
  void read_blocks(const std::vector<int64_t>& chosen, StepInput& in) {
    if (!data_.on_disk()) return;
    for (int64_t p : chosen)
      for (int64_t b : {data_.source_block(p), data_.target_block(p)})
        if (!in.cells.count(b)) {
          in.cells[b] = data_.block_cells(b);
          count_read();
        }
  }

  // Each chosen population's n_cells source and target rows, drawn on the
  // host straight into rows0 and rows1 (no operator call per population):
  // in memory rows of all cells, on disk positions within the blocks.
  void draw_rows_into(const std::vector<int64_t>& chosen, int64_t* rows0, int64_t* rows1, std::mt19937_64& rng) const {
    const int64_t n_cells = model_.population.cells_per_population;
    const auto put = [n_cells](const torch::Tensor& drawn, int64_t* out) {
      std::copy_n(drawn.data_ptr<int64_t>(), n_cells, out);
    };
    std::vector<int64_t> scratch0, scratch1;
    for (size_t i = 0; i < chosen.size(); ++i) {
      const int64_t p = chosen[i];
      const auto& pool0 = pool(data_.source_block(p), scratch0);
      const auto& pool1 = pool(data_.target_block(p), scratch1);
      const int64_t at = static_cast<int64_t>(i) * n_cells;
      if (paired_) {
        const PairedRows drawn = draw_paired_rows(pool0, pool1, n_cells, rng);
        put(drawn.source, rows0 + at);
        put(drawn.target, rows1 + at);
      } else {
        put(draw_rows(pool0, n_cells, rng), rows0 + at);
        put(draw_rows(pool1, n_cells, rng), rows1 + at);
      }
    }
  }

  // On disk: the drawn cells of both sides into `out` ([2, rows, dim]), from the blocks in `in`.
  void copy_cells(const std::vector<int64_t>& chosen, const int64_t* rows0, const int64_t* rows1, const StepInput& in,
                  float* out) const {
    const int64_t dim = data_.dim(), n_cells = model_.population.cells_per_population;
    for (int side = 0; side < 2; ++side) {
      const int64_t* drawn = side == 0 ? rows0 : rows1;
      for (size_t i = 0; i < chosen.size(); ++i) {
        const int64_t b = side == 0 ? data_.source_block(chosen[i]) : data_.target_block(chosen[i]);
        const torch::Tensor cells = in.cells.at(b).contiguous();
        if (cells.scalar_type() != torch::kFloat || cells.size(0) != data_.block_size(b) || cells.size(1) != dim)
          throw std::runtime_error("population store: block " + std::to_string(b) + " was read with the wrong shape");
        const float* from = cells.data_ptr<float>();
        for (int64_t j = 0; j < n_cells; ++j, out += dim)
          std::copy_n(from + drawn[static_cast<int64_t>(i) * n_cells + j] * dim, dim, out);
      }
    }
  }

  // Staged steps: the graphs of `blocks` (sorted) in the first of `slots`
  // graph slots of the padded batch, built on the host and moved in two
  // transfers; nothing when the last step staged the same blocks. The
  // padding edges sit in a block of r x r positions among r padding rows of
  // their own (r^2 >= the edge capacity), so that they never repeat a position.
  bool stage_graphs(const std::vector<int64_t>& blocks, int64_t slots, StepInput& in) {
    if (blocks == staged_.blocks && slots == staged_.graphs.slots) return true;
    std::vector<GraphCache::Graph> batch;  // this step's graphs, whatever the cache evicts
    int64_t nodes = 0, edges = 0;
    bool propagate = false;
    for (int64_t b : blocks) {
      batch.push_back(cached_graph(host_graphs_, b, in, torch::kCPU));
      nodes += batch.back()->nodes();
      edges += batch.back()->src.size(0);
      propagate = propagate || batch.back()->src.size(0) != batch.back()->nodes();  // not self-loops only
    }
    const auto dev = model_.device;
    const int64_t dim = model_.config.network.dim;
    PaddedGraphBatch& g = staged_.graphs;
    const bool kept = staged_.graph_floats.defined() && nodes <= staged_.node_capacity &&
                      edges <= staged_.edge_capacity && slots == g.slots && propagate == g.adjacency.defined();
    if (!kept) {
      // Room to spare, unless every step draws every population (the same batch each time).
      const bool same_every_step = slots == static_cast<int64_t>(usable_.size());
      staged_.node_capacity = std::max(staged_.node_capacity, nodes + (same_every_step ? 0 : nodes / 4 + 1));
      staged_.edge_capacity = std::max(staged_.edge_capacity, edges + (same_every_step ? 0 : edges / 4 + 1));
    }
    const int64_t ec = staged_.edge_capacity;
    auto r = static_cast<int64_t>(std::sqrt(static_cast<double>(ec)));
    while (r * r < ec) ++r;
    const int64_t nr = staged_.node_capacity, nc = nr + r;  // rows for cells, then the padding block's
    const int64_t n_floats = nc * dim + ec + slots + 1, n_longs = 2 * ec + nc;
    if (!kept) {
      staged_.graph_floats = torch::empty({n_floats}, fopt_);
      staged_.graph_longs = torch::empty({n_longs}, fopt_.dtype(torch::kLong));
      g.x = staged_.graph_floats.narrow(0, 0, nc * dim).view({nc, dim});
      g.weight = staged_.graph_floats.narrow(0, nc * dim, ec);
      g.counts = staged_.graph_floats.narrow(0, nc * dim + ec, slots + 1).unsqueeze(1);
      g.src = staged_.graph_longs.narrow(0, 0, ec);
      g.dst = staged_.graph_longs.narrow(0, ec, ec);
      g.graph_of = staged_.graph_longs.narrow(0, 2 * ec, nc);
      g.slots = slots;
      g.scatter = how_.scatter_propagation;
      g.adjacency = torch::Tensor();
      if (propagate) {
        // Over the same storage, which each step's copies below update (and which holds nothing yet:
        // unchecked, and a check would read the indices back on a GPU).
        g.adjacency = at::_sparse_coo_tensor_unsafe(staged_.graph_longs.narrow(0, 0, 2 * ec).view({2, ec}), g.weight,
                                                    {nc, nc});
        g.adjacency._coalesced_(true);  // row-major, every position once
      }
    }
    const bool pinned = dev.is_cuda();
    auto floats = staging_tensor({n_floats}, torch::kFloat, dev).zero_();
    auto longs = staging_tensor({n_longs}, torch::kLong, dev);
    float* x = floats.data_ptr<float>();
    float* weight = x + nc * dim;
    float* counts = weight + ec;
    int64_t* src = longs.data_ptr<int64_t>();
    int64_t* dst = src + ec;
    int64_t* graph_of = dst + ec;
    int64_t node = 0, edge = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const PopulationGraph& one = *batch[i];
      const int64_t m = one.nodes(), e = one.src.size(0);
      std::copy_n(one.x.data_ptr<float>(), m * dim, x + node * dim);
      std::copy_n(one.weight.data_ptr<float>(), e, weight + edge);
      const int64_t* from_src = one.src.data_ptr<int64_t>();
      const int64_t* from_dst = one.dst.data_ptr<int64_t>();
      for (int64_t j = 0; j < e; ++j) {
        src[edge + j] = from_src[j] + node;
        dst[edge + j] = from_dst[j] + node;
      }
      std::fill_n(graph_of + node, m, static_cast<int64_t>(i));
      counts[i] = static_cast<float>(m);
      node += m;
      edge += e;
    }
    // Padding edges (weight 0) in the padding block, row-major.
    for (int64_t k = 0; edge + k < ec; ++k) {
      src[edge + k] = nr + k / r;
      dst[edge + k] = nr + k % r;
    }
    // Empty slots and the padding rows: counts of at least 1 (zero means, not 0 / 0).
    for (int64_t i = static_cast<int64_t>(batch.size()); i < slots; ++i) counts[i] = 1;
    counts[slots] = static_cast<float>(nc - node);
    std::fill(graph_of + node, graph_of + nc, slots);
    staged_.graph_floats.copy_(floats, /*non_blocking=*/pinned);
    staged_.graph_longs.copy_(longs, pinned);
    staged_.blocks = blocks;
    return kept;
  }

  // The cache the step's graphs come from: on the host for staged steps, else on the device.
  const GraphCache& graph_cache() const { return staging_ ? host_graphs_ : graphs_; }

  bool has_graph(int64_t b) const { return graph_cache().contains(b); }

  void report_graph_cache() {
    if (!stats_) return;
    stats_->graph_evictions = graph_cache().evictions();
    stats_->graph_cache_peak_bytes = graph_cache().peak_bytes();
  }

  // What a step needs besides its draws: blocks read and graphs built ahead.
  struct StepInput {
    std::unordered_map<int64_t, torch::Tensor> cells;
    std::unordered_map<int64_t, std::shared_ptr<PopulationGraph>> graphs;  // on the CPU
  };

  // The step's populations: the first draws of its generator.
  std::vector<int64_t> choose(std::mt19937_64& rng) const {
    std::vector<int64_t> chosen = usable_;
    std::shuffle(chosen.begin(), chosen.end(), rng);
    chosen.resize(std::min<size_t>(chosen.size(), model_.population.populations_per_step));
    return chosen;
  }

  // A block's rows to draw from: in memory its rows of all cells, on disk its positions.
  const std::vector<int64_t>& pool(int64_t b, std::vector<int64_t>& scratch) const {
    if (const auto* rows = data_.block_rows()) return (*rows)[b];
    scratch.resize(static_cast<size_t>(data_.block_size(b)));
    std::iota(scratch.begin(), scratch.end(), 0);
    return scratch;
  }

  PopulationGraph make_graph(int64_t b, const torch::Tensor& cells) const {
    const uint64_t seed = model_.population.graph_seed + static_cast<uint64_t>(b);
    return build_graph(cells, model_.population.graph_k(), model_.population.max_cells, seed);
  }

  // The graph of source block b on `device`: from `cache` (the device's for
  // eager steps, the host's for staged ones), else built ahead or now, and kept there.
  GraphCache::Graph cached_graph(GraphCache& cache, int64_t b, StepInput& in, const torch::Device& device) {
    if (auto g = cache.find(b)) return g;
    GraphCache::Graph g = built_graph(b, in);
    if (g->x.device() != device) g = std::make_shared<const PopulationGraph>(graph_on(*g, device));
    cache.insert(b, g);
    return g;
  }

  // Source block b's graph on the host: the one built ahead, or one built now (counted either way).
  std::shared_ptr<PopulationGraph> built_graph(int64_t b, StepInput& in) {
    std::shared_ptr<PopulationGraph> g;
    auto ahead = in.graphs.find(b);
    if (ahead != in.graphs.end()) {
      g = ahead->second;
      in.graphs.erase(ahead);
    } else {
      g = std::make_shared<PopulationGraph>(make_graph(b, in.cells.count(b) ? in.cells.at(b) : data_.block_cells(b)));
    }
    if (stats_) ++stats_->graphs_built;
    return g;
  }

  StepInput take(int64_t step) {
    if (!pending_.valid()) return {};
    StepInput in = pending_.get();  // rethrows what the background read threw
    if (pending_step_ != step || pending_draw_ != draw_) return {};
    if (stats_) stats_->blocks_read += static_cast<int64_t>(in.cells.size());
    return in;
  }

  void count_read() {
    if (!stats_) return;
    ++stats_->blocks_read;
    ++stats_->blocks_read_in_step;
  }

  // Reads ahead for this process's next draw: the next of this step's draws, or the next step's first.
  void launch_next(int64_t step) {
    if (draw_ + 1 < first_draw_ + draws_) launch(step, draw_ + 1);
    else launch(step + 1, first_draw_);
  }

  // Reads the blocks of draw `draw` of step `next` and builds its missing graphs in the background.
  void launch(int64_t next, int64_t draw) {
    if (!how_.prefetch || next > last_step_ || pending_.valid()) return;
    std::mt19937_64 rng(draw_seed(seed_, next, draw));
    const std::vector<int64_t> chosen = choose(rng);
    std::vector<int64_t> read, build;
    const auto add = [](std::vector<int64_t>& v, int64_t b) {
      if (std::find(v.begin(), v.end(), b) == v.end()) v.push_back(b);
    };
    if (data_.on_disk())
      for (int64_t p : chosen) {
        add(read, data_.source_block(p));
        add(read, data_.target_block(p));
      }
    const bool needs_graphs =
        model_.population.use_encoder && (!alternate_ || encoder_step(next));
    for (int64_t p : chosen) {
      const int64_t b = data_.source_block(p);
      if (model_.population.use_encoder && !has_graph(b) && (needs_graphs || !cached_[b])) add(build, b);
    }
    if (read.empty() && build.empty()) return;
    pending_step_ = next;
    pending_draw_ = draw;
    pending_ = std::async(std::launch::async, [this, read, build] {
      StepInput in;
      for (int64_t b : read) in.cells[b] = data_.block_cells(b);
      for (int64_t b : build) {
        auto cells = in.cells.count(b) ? in.cells.at(b) : data_.block_cells(b);
        in.graphs[b] = std::make_shared<PopulationGraph>(make_graph(b, cells));
      }
      return in;
    });
  }

  // Populations with source and target cells take part.
  void index_populations() {
    const int64_t n_pop = data_.populations();
    paired_ = model_.config.coupling.kind == CouplingKind::Paired;
    for (int64_t p = 0; p < n_pop; ++p) {
      const int64_t n0 = data_.block_size(data_.source_block(p)), n1 = data_.block_size(data_.target_block(p));
      if (paired_ && n0 != n1)
        throw std::invalid_argument("paired coupling: population " + std::to_string(p) + " has " + std::to_string(n0) +
                                    " source and " + std::to_string(n1) + " target cells; paired cells come in equal " +
                                    "numbers, the k-th source cell of a population paired with its k-th target cell");
      if (n0 > 0 && n1 > 0) usable_.push_back(p);
    }
    if (usable_.empty())
      throw std::invalid_argument("no population has both source and target cells; nothing to learn");
  }

  void make_optimisers(const AdamSettings& adam) {
    const PopulationConfig& population = model_.population;
    // A fixed encoder (kernel mean embedding) has nothing to alternate with.
    alternate_ = population.use_encoder && population.alternating && !model_.net->encoder->parameters().empty();
    cached_.assign(static_cast<size_t>(data_.blocks()), false);
    if (!alternate_) {
      opt_ = std::make_unique<FlatAdam>(*model_.net, adam);
      return;
    }
    // The field and the label embeddings without the encoder: what the field steps optimise.
    field_parts_ = std::make_shared<torch::nn::Module>();
    field_parts_->register_module("field", model_.net->field);
    field_parts_->register_module("labels", model_.net->label_embeddings);
    opt_ = std::make_unique<FlatAdam>(*field_parts_, adam);
    AdamSettings encoder_adam = adam;
    if (population.encoder_lr > 0) encoder_adam.lr = population.encoder_lr;
    encoder_opt_ = std::make_unique<FlatAdam>(*model_.net->encoder, encoder_adam);
  }

  bool encoder_step(int64_t step) const { return alternate_ && step % 2 == 0; }

  // Alternating: keeps rows of `fresh` (detached) as the embeddings of `blocks`.
  void remember_embeddings(const std::vector<int64_t>& blocks, const torch::Tensor& fresh) {
    if (!embeddings_.defined()) embeddings_ = torch::zeros({data_.blocks(), fresh.size(1)}, fresh.options());
    embeddings_.index_copy_(0, to_device_async(torch::tensor(blocks, torch::kLong), fresh.device()), fresh);
    for (int64_t b : blocks) cached_[b] = true;
  }

  PopulationModel& model_;
  PopulationData& data_;
  PopulationTraining how_;
  PopulationTrainingStats* stats_;
  GraphCache graphs_;
  uint64_t seed_ = 0;
  int64_t last_step_ = 0, pending_step_ = -1, pending_draw_ = 0;
  int64_t draw_ = 0, first_draw_ = 0, draws_ = 1;  // this draw, and the draws this process makes a step
  std::future<StepInput> pending_;
  torch::TensorOptions fopt_;
  torch::Tensor x_all_;                // in memory: all cells, on the model's device
  torch::Tensor labels_, covariates_;  // on the model's device
  std::vector<int64_t> usable_;
  double reg_default_ = 0;
  bool alternate_ = false, paired_ = false;
  std::shared_ptr<torch::nn::Module> field_parts_;
  std::unique_ptr<FlatAdam> opt_, encoder_opt_;
  // Alternating: the detached embedding of each source block (a row of one
  // tensor, written and read with one call a step, whatever the populations).
  torch::Tensor embeddings_;
  std::vector<bool> cached_;
  // Staged steps (TrainConfig::step_graph): the buffers every step reads, and
  // every drawn source block's graph on the host (no byte cap: staged fits
  // have populations in the hundreds, not the tens of thousands).
  struct Staged {
    // [2 rows + 2 P] long: source rows, target rows, each population's graph slot, the populations
    torch::Tensor draws;
    torch::Tensor cells;  // from a store: [2, rows, dim], the drawn cells
    torch::Tensor graph_floats, graph_longs;  // the padded batch's storage (views in `graphs`)
    PaddedGraphBatch graphs;
    int64_t n_chosen = 0, node_capacity = 0, edge_capacity = 0;
    std::vector<int64_t> blocks;  // the source blocks in the graph slots, sorted
  } staged_;
  bool staging_ = false;
  GraphCache host_graphs_;  // staged steps' graphs, on the host
};

TrainResult train_blocks(PopulationModel& model, PopulationData& data, const TrainConfig& config,
                         const TrainCallbacks& callbacks, const PopulationTraining& how,
                         PopulationTrainingStats* stats) {
  if (stats) *stats = {};
  PopulationObjective objective(model, data, how, stats);
  return run_training(objective, config, callbacks, model.train_state);
}

}  // namespace

std::unique_ptr<PopulationData> store_population_data(std::shared_ptr<const PopulationStore> store,
                                                      torch::Tensor labels, torch::Tensor covariates) {
  return std::make_unique<StorePopulationData>(std::move(store), std::move(labels), std::move(covariates));
}

TrainResult train_population_model(PopulationModel& model, const PopulationSet& data, const TrainConfig& config,
                                   const TrainCallbacks& callbacks, const PopulationTraining& how,
                                   PopulationTrainingStats* stats) {
  std::string problem = validate_population_set(model, data);
  if (!problem.empty()) throw std::invalid_argument(problem);
  MemoryPopulationData blocks(data);
  return train_blocks(model, blocks, config, callbacks, how, stats);
}

TrainResult train_population_model(PopulationModel& model, PopulationData& data, const TrainConfig& config,
                                   const TrainCallbacks& callbacks, const PopulationTraining& how,
                                   PopulationTrainingStats* stats) {
  std::string problem = validate_population_data(model, data);
  if (!problem.empty()) throw std::invalid_argument(problem);
  return train_blocks(model, data, config, callbacks, how, stats);
}

torch::Tensor embed_populations(PopulationModel& model, const std::vector<torch::Tensor>& sources) {
  if (!model.population.use_encoder) throw std::invalid_argument("this model has no population encoder (CGFM)");
  const int64_t k = model.population.graph_k();
  std::vector<PopulationGraph> graphs;
  for (size_t p = 0; p < sources.size(); ++p) {
    const auto& x = sources[p];
    if (x.dim() != 2 || x.size(1) != model.config.network.dim)
      throw std::invalid_argument("population cells have the wrong number of features");
    if (x.size(0) < 1) throw std::invalid_argument("a population has no source cells");
    graphs.push_back(build_graph(x, k, model.population.max_cells, model.population.graph_seed + static_cast<uint64_t>(p)));
  }
  std::vector<const PopulationGraph*> batch;
  for (const auto& g : graphs) batch.push_back(&g);
  torch::NoGradGuard no_grad;
  model.net->eval();
  return model.net->encoder->forward(batch_graphs(batch, model.device)).to(torch::kCPU);
}

torch::Tensor population_condition(PopulationModel& model, const std::vector<torch::Tensor>& sources,
                                   const torch::Tensor& labels, const torch::Tensor& covariates) {
  const auto n_pop = static_cast<int64_t>(sources.size());
  if (n_pop < 1) throw std::invalid_argument("no populations given");
  PopulationSet check;  // reuse the training checks for labels and covariates
  check.population = {n_pop - 1};
  check.x = torch::zeros({1, model.config.network.dim});
  check.side = {0};
  check.labels = labels;
  check.covariates = covariates;
  std::string problem = validate_population_set(model, check);
  if (!problem.empty()) throw std::invalid_argument(problem);
  torch::Tensor embedding;
  if (model.population.use_encoder) embedding = embed_populations(model, sources).to(model.device);
  auto all = torch::arange(n_pop, torch::kLong).to(model.device);
  torch::NoGradGuard no_grad;
  return model.net
      ->condition(embedding, rows_on(labels, all, model.device, torch::kLong),
                  rows_on(covariates, all, model.device, torch::kFloat))
      .to(torch::kCPU);
}

std::string save_population_model(const PopulationModel& model, const std::string& metadata) {
  std::vector<std::string> blocks{flow_config_to_text(model.config), population_config_to_text(model.population),
                                  module_bytes(*model.net.ptr(), model.device), metadata};
  if (model.train_state.step > 0) blocks.push_back(train_state_to_bytes(model.train_state));
  return pack_model_file(kPopulationModelKind, blocks);
}

std::shared_ptr<PopulationModel> load_population_model(const std::string& bytes, const std::string& device,
                                           std::string* metadata) {
  std::string kind;
  std::vector<std::string> blocks = unpack_model_file(bytes, &kind);
  if (kind != kPopulationModelKind)
    throw std::runtime_error("model file holds a '" + kind + "', not a popflow population (MFM/CGFM) model");
  if (blocks.size() < 4) throw std::runtime_error("model file is truncated");
  if (blocks.size() > 5) throw std::runtime_error("model file has trailing bytes");
  FlowConfig config = flow_config_from_text(blocks[0]);
  PopulationConfig population = population_config_from_text(blocks[1]);
  auto model = build_from_model_file([&] {
    auto m = make_population_model(config, population, "cpu");
    if (m->config.network.cond_dim != config.network.cond_dim)
      throw std::runtime_error("model file configurations disagree on the conditioning width");
    load_module_bytes(*m->net, blocks[2]);
    return m;
  });
  if (metadata) *metadata = std::move(blocks[3]);
  if (blocks.size() == 5) model->train_state = train_state_from_bytes(blocks[4], parameter_count(*model->net));
  model->device = parse_device(device);
  model->net->to(model->device);
  model->net->eval();
  return model;
}

}  // namespace popflow

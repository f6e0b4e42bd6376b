#include "population_model.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>

#include "config_text.h"
#include "coupling.h"
#include "device.h"
#include "model_file.h"
#include "optimizer.h"
#include "paths.h"

namespace popflow {

PopulationNetImpl::PopulationNetImpl(const NetworkConfig& network, const PopulationConfig& population) {
  field = register_module("field", VectorField(network));
  if (population.use_encoder) encoder = register_module("encoder", PopulationEncoder(population.encoder));
  for (int64_t levels : population.label_levels) label_embeddings->push_back(torch::nn::Embedding(levels, population.label_dim));
  register_module("labels", label_embeddings);
}

torch::Tensor PopulationNetImpl::condition(const torch::Tensor& embedding, const torch::Tensor& labels,
                                     const torch::Tensor& covariates) {
  std::vector<torch::Tensor> parts;
  if (encoder) parts.push_back(embedding);
  for (size_t j = 0; j < label_embeddings->size(); ++j) {
    auto table = label_embeddings[j]->as<torch::nn::Embedding>();
    auto codes = labels.select(1, j);
    auto unseen = codes.lt(0);
    auto rows = table->forward(codes.clamp_min(0));
    // The mean embedding is what averaging one-hot conditions over the training values gives.
    if (unseen.any().item<bool>())
      rows = torch::where(unseen.unsqueeze(1), table->weight.mean(0).unsqueeze(0).expand_as(rows), rows);
    parts.push_back(rows);
  }
  if (covariates.defined() && covariates.size(1) > 0) parts.push_back(covariates);
  if (parts.empty()) throw std::invalid_argument("population model: no conditioning (no encoder, labels or covariates)");
  return torch::cat(parts, 1);
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

// Detached embeddings [chosen, E] from the cache; populations not embedded yet are embedded now.
torch::Tensor cached_embeddings(PopulationModel& model, const std::vector<PopulationGraph>& graphs,
                                const std::vector<int64_t>& chosen, std::vector<torch::Tensor>& cached,
                                const torch::Device& dev) {
  std::vector<int64_t> missing;
  std::vector<const PopulationGraph*> batch;
  for (int64_t p : chosen)
    if (!cached[p].defined()) {
      missing.push_back(p);
      batch.push_back(&graphs[p]);
    }
  if (!missing.empty()) {
    torch::NoGradGuard no_grad;
    auto fresh = model.net->encoder->forward(batch_graphs(batch, dev));
    for (size_t i = 0; i < missing.size(); ++i) cached[missing[i]] = fresh[static_cast<int64_t>(i)];
  }
  std::vector<torch::Tensor> rows;
  for (int64_t p : chosen) rows.push_back(cached[p]);
  return torch::stack(rows);
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

// Algorithm 1's objective for population models. With the alternating
// schedule, odd steps update the field and label embeddings (the primary
// optimiser) on cached, detached embeddings, even steps only the encoder.
class PopulationObjective : public TrainingObjective {
 public:
  PopulationObjective(PopulationModel& model, const PopulationSet& data) : model_(model), data_(data) {}

  void prepare(const TrainConfig& config) override {
    const PopulationConfig& population = model_.population;
    for (auto [name, value] : {std::make_pair("cells_per_population", population.cells_per_population),
                               std::make_pair("populations_per_step", population.populations_per_step)})
      if (value < 1)
        throw std::invalid_argument(std::string(name) + " must be >= 1, not " + std::to_string(value) +
                                    " (a model file written before it was recorded holds 0: set it before training)");
    if (data_.labels.defined() && data_.labels.numel() > 0 && data_.labels.min().item<int64_t>() < 0)
      throw std::invalid_argument("label codes out of range (unseen values exist only at prediction)");
    fopt_ = torch::TensorOptions().dtype(torch::kFloat).device(model_.device);
    x_all_ = data_.x.to(fopt_);
    // On the device once: rows_on() then selects without a copy from the host each step.
    labels_ = data_.labels.defined() ? data_.labels.to(model_.device, torch::kLong) : torch::Tensor();
    covariates_ = data_.covariates.defined() ? data_.covariates.to(fopt_) : torch::Tensor();
    index_cells();
    if (population.use_encoder) build_graphs();
    reg_default_ = std::max(2 * model_.config.path.sigma * model_.config.path.sigma, 1e-3);
    make_optimisers(adam_settings(config));
  }

  torch::nn::Module& network() override { return *model_.net; }

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
    const Regression r = regression(step, rng);
    optimiser.zero_grad();
    torch::Tensor cond_grad;
    const bool trained_cond = r.cond.requires_grad();
    auto loss = model_.net->field->mse_with_gradient(r.xt, r.t, expand_rows(r.cond.detach(), r.n_cells), r.ut,
                                                     trained_cond ? &cond_grad : nullptr);
    if (trained_cond) r.cond.backward(cond_grad.view({r.cond.size(0), r.n_cells, -1}).sum(1));
    return loss;
  }

 private:
  // One step's regression: points x_t at times t, the path's velocity there,
  // and each chosen population's conditioning row ([P, cond_dim], with its
  // graph when the encoder or label embeddings train on this step).
  struct Regression {
    torch::Tensor xt, t, ut, cond;
    int64_t n_cells;
  };

  // Each population's condition for its n_cells rows (expand: no sync, unlike repeat_interleave on a GPU).
  static torch::Tensor expand_rows(const torch::Tensor& cond, int64_t n_cells) {
    return cond.unsqueeze(1).expand({cond.size(0), n_cells, cond.size(1)}).reshape({-1, cond.size(1)});
  }

  Regression regression(int64_t step, std::mt19937_64& rng) {
    const auto dev = model_.device;
    const int64_t n_cells = model_.population.cells_per_population;
    std::vector<int64_t> chosen = usable_;
    std::shuffle(chosen.begin(), chosen.end(), rng);
    chosen.resize(std::min<size_t>(chosen.size(), model_.population.populations_per_step));
    auto chosen_index = to_device_async(torch::tensor(chosen, torch::kLong), dev);

    torch::Tensor embedding;
    if (model_.population.use_encoder && (!alternate_ || encoder_step(step))) {
      std::vector<const PopulationGraph*> batch;
      for (int64_t p : chosen) batch.push_back(&graphs_[p]);
      // Through the encoder, so that its step (or the joint step) trains it on the field's loss.
      embedding = model_.net->encoder->forward(batch_graphs(batch, dev));
      if (alternate_)
        for (size_t i = 0; i < chosen.size(); ++i) cached_[chosen[i]] = embedding[static_cast<int64_t>(i)].detach();
    } else if (alternate_) {
      embedding = cached_embeddings(model_, graphs_, chosen, cached_, dev);
    }
    auto cond_pop = model_.net->condition(embedding, rows_on(labels_, chosen_index, dev, torch::kLong),
                                          rows_on(covariates_, chosen_index, dev, torch::kFloat));

    // All populations' rows are drawn on the CPU and moved in one transfer;
    // with independent coupling the whole batch then takes one path sample.
    const int64_t n_chosen = static_cast<int64_t>(chosen.size());
    auto rows0 = torch::empty({n_chosen, n_cells}, torch::kLong), rows1 = torch::empty_like(rows0);
    for (int64_t i = 0; i < n_chosen; ++i) {
      const int64_t p = chosen[i];
      if (paired_) {
        const PairedRows rows = draw_paired_rows(sources_[p], targets_[p], n_cells, rng);
        rows0[i].copy_(rows.source);
        rows1[i].copy_(rows.target);
      } else {
        rows0[i].copy_(draw_rows(sources_[p], n_cells, rng));
        rows1[i].copy_(draw_rows(targets_[p], n_cells, rng));
      }
    }
    auto rows = to_device_async(torch::stack({rows0.view(-1), rows1.view(-1)}), dev);
    auto x0 = x_all_.index_select(0, rows[0]);
    auto x1 = x_all_.index_select(0, rows[1]);
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
    auto t = torch::rand({n_chosen * n_cells}, fopt_);
    auto ps = sample_path(model_.config.path, x0, x1, t);
    return {ps.xt, t, ps.ut, cond_pop, n_cells};
  }

  // Source and target cells of each population; only those with both take part.
  // Paired coupling pairs sources_[p][j] with targets_[p][j].
  void index_cells() {
    const int64_t n_pop = population_count(data_);
    sources_.assign(n_pop, {});
    targets_.assign(n_pop, {});
    for (size_t i = 0; i < data_.population.size(); ++i)
      (data_.side[i] == 0 ? sources_ : targets_)[data_.population[i]].push_back(static_cast<int64_t>(i));
    paired_ = model_.config.coupling.kind == CouplingKind::Paired;
    if (paired_) check_paired_counts(sources_, targets_, "population");
    for (int64_t p = 0; p < n_pop; ++p)
      if (!sources_[p].empty() && !targets_[p].empty()) usable_.push_back(p);
    if (usable_.empty())
      throw std::invalid_argument("no population has both source and target cells; nothing to learn");
  }

  // The graphs are fixed for the whole run: built once, before the first step.
  void build_graphs() {
    const PopulationConfig& population = model_.population;
    const int64_t k = population.graph_k();
    auto x_cpu = data_.x.to(torch::kCPU, torch::kFloat);
    graphs_.assign(sources_.size(), {});
    for (int64_t p : usable_) {
      auto cells = x_cpu.index_select(0, torch::tensor(sources_[p], torch::kLong));
      const uint64_t seed = population.graph_seed + static_cast<uint64_t>(p);
      graphs_[p] = graph_on(build_graph(cells, k, population.max_cells, seed), model_.device);
    }
  }

  void make_optimisers(const AdamSettings& adam) {
    const PopulationConfig& population = model_.population;
    // A fixed encoder (kernel mean embedding) has nothing to alternate with.
    alternate_ = population.use_encoder && population.alternating && !model_.net->encoder->parameters().empty();
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
    cached_.assign(sources_.size(), torch::Tensor());
  }

  bool encoder_step(int64_t step) const { return alternate_ && step % 2 == 0; }

  PopulationModel& model_;
  const PopulationSet& data_;
  torch::TensorOptions fopt_;
  torch::Tensor x_all_;
  torch::Tensor labels_, covariates_;  // data_'s, on the model's device
  std::vector<std::vector<int64_t>> sources_, targets_;
  std::vector<int64_t> usable_;
  std::vector<PopulationGraph> graphs_;
  double reg_default_ = 0;
  bool alternate_ = false, paired_ = false;
  std::shared_ptr<torch::nn::Module> field_parts_;
  std::unique_ptr<FlatAdam> opt_, encoder_opt_;
  std::vector<torch::Tensor> cached_;  // alternating: detached embedding per population
};

}  // namespace

TrainResult train_population_model(PopulationModel& model, const PopulationSet& data, const TrainConfig& config,
                                   const TrainCallbacks& callbacks) {
  std::string problem = validate_population_set(model, data);
  if (!problem.empty()) throw std::invalid_argument(problem);
  PopulationObjective objective(model, data);
  return run_training(objective, config, callbacks, model.train_state);
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

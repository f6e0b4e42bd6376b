// Rcpp glue for population models (MFM, CGFM): fitting, embedding, prediction
// and the "popflow-meta" model file. The R side (R/meta.R) checks arguments
// and turns population ids and labels into 0-based codes.
#include "r_glue.h"

#include "core/population_model.h"
#include "core/transport.h"
#include "core/threads.h"

using namespace popflow;
using popflow_r::from_raw;
using popflow_r::get_or;
using popflow_r::to_matrix;
using popflow_r::to_raw;
using popflow_r::to_tensor;

namespace {

PopulationConfig meta_config(const Rcpp::List& m, const Rcpp::IntegerVector& label_levels, int64_t covariates) {
  PopulationConfig c;
  const auto encoder = get_or<std::string>(m, "encoder", "gcn");
  c.use_encoder = encoder != "none";
  if (c.use_encoder) c.encoder.kind = method_value<EncoderKind>(encoder);
  c.encoder.layers = get_or<int>(m, "layers", 3);
  c.encoder.width = get_or<int>(m, "width", 64);
  c.encoder.bandwidth = get_or<double>(m, "bandwidth", 1.0);
  c.k = get_or<int>(m, "k", 50);
  c.max_cells = static_cast<int64_t>(get_or<double>(m, "max_cells", 2000));
  c.graph_seed = static_cast<uint64_t>(get_or<double>(m, "graph_seed", 1));
  c.label_dim = get_or<int>(m, "label_dim", 8);
  c.label_levels.assign(label_levels.begin(), label_levels.end());
  c.covariates = covariates;
  c.alternating = get_or<std::string>(m, "schedule", "joint") == "alternating";
  c.encoder_lr = get_or<double>(m, "encoder_lr", 0.0);
  return c;
}

torch::Tensor long_matrix(const Rcpp::Nullable<Rcpp::IntegerMatrix>& m) {
  if (m.isNull()) return torch::Tensor();
  Rcpp::IntegerMatrix im(m.get());
  auto view = torch::from_blob(im.begin(), {im.ncol(), im.nrow()}, torch::kInt);
  return view.t().to(torch::kLong).contiguous();
}

torch::Tensor float_matrix(const Rcpp::Nullable<Rcpp::NumericMatrix>& m) {
  return m.isNull() ? torch::Tensor() : to_tensor(Rcpp::NumericMatrix(m.get()));
}

// Cells of each population (codes 0 .. n_pop - 1), in the order given.
std::vector<torch::Tensor> split_populations(const torch::Tensor& x, const Rcpp::IntegerVector& population,
                                             int n_pop) {
  std::vector<std::vector<int64_t>> rows(n_pop);
  for (R_xlen_t i = 0; i < population.size(); ++i) rows.at(population[i]).push_back(i);
  std::vector<torch::Tensor> out;
  for (const auto& r : rows) out.push_back(x.index_select(0, torch::tensor(r, torch::kLong)));
  return out;
}

void finalize_meta(std::shared_ptr<PopulationModel>* p) { delete p; }
using MetaPtr = Rcpp::XPtr<std::shared_ptr<PopulationModel>, Rcpp::PreserveStorage, finalize_meta>;

std::shared_ptr<PopulationModel> meta_from(SEXP handle) {
  MetaPtr ptr(handle);
  if (ptr.get() == nullptr) throw std::invalid_argument("model handle is empty; reload the model");
  return *ptr;
}

}  // namespace

// `resume` and `metadata` as for pf_fit().
// [[Rcpp::export]]
Rcpp::List pf_meta_fit(Rcpp::NumericMatrix x, Rcpp::IntegerVector side, Rcpp::IntegerVector population,
                       Rcpp::Nullable<Rcpp::IntegerMatrix> labels, Rcpp::IntegerVector label_levels,
                       Rcpp::Nullable<Rcpp::NumericMatrix> covariates, Rcpp::List config, Rcpp::List meta,
                       Rcpp::Nullable<Rcpp::Function> progress, int progress_every,
                       Rcpp::Nullable<Rcpp::RawVector> resume, Rcpp::RawVector metadata) {
  PF_GUARD_BEGIN
  PopulationSet data;
  data.x = to_tensor(x);
  data.side.assign(side.begin(), side.end());
  data.population.assign(population.begin(), population.end());
  data.labels = long_matrix(labels);
  data.covariates = float_matrix(covariates);
  const int64_t n_cov = data.covariates.defined() ? data.covariates.size(1) : 0;
  TrainConfig tc = popflow_r::train_config(config);
  torch::set_num_threads(tc.threads);
  const FlowConfig flow = popflow_r::flow_config(config, Rcpp::NumericVector::create(0, 1), x.ncol(), 0);
  PopulationConfig asked = meta_config(meta, label_levels, n_cov);
  // The R side passes the population sampling sizes as the batch settings.
  asked.cells_per_population = tc.batch_size;
  asked.populations_per_step = tc.groups_per_step;
  std::shared_ptr<PopulationModel> model;
  if (resume.isNotNull()) {
    model = load_population_model(from_raw(Rcpp::RawVector(resume.get())), tc.device);
    // Sampling sizes may change on resuming (older files hold 0 for them).
    model->population.cells_per_population = asked.cells_per_population;
    model->population.populations_per_step = asked.populations_per_step;
    // cond_dim follows the meta configuration, so compare the field's settings without it.
    FlowConfig saved_flow = model->config;
    saved_flow.network.cond_dim = 0;
    popflow_r::check_resume_config(flow_config_to_text(saved_flow) + population_config_to_text(model->population),
                                   flow_config_to_text(flow) + population_config_to_text(asked));
    tc.resume = true;
  } else {
    torch::manual_seed(tc.seed);  // weight initialisation is part of the seeded run
    model = make_population_model(flow, asked, tc.device);
  }
  bool user_interrupt = false;
  auto callbacks = popflow_r::r_callbacks(progress, progress_every, tc.steps, &user_interrupt);
  const std::string saved_meta = from_raw(metadata);
  popflow_r::add_checkpoints(callbacks, config, [&](const TrainState& state) {
    model->train_state = state;
    return save_population_model(*model, saved_meta);
  });
  TrainResult res = train_population_model(*model, data, tc, callbacks);
  return popflow_r::fit_result(save_population_model(*model), res, user_interrupt);
  PF_GUARD_END
  return R_NilValue;
}

// [[Rcpp::export]]
SEXP pf_meta_load(Rcpp::RawVector bytes, std::string device) {
  PF_GUARD_BEGIN
  return MetaPtr(new std::shared_ptr<PopulationModel>(load_population_model(from_raw(bytes), device)), true);
  PF_GUARD_END
  return R_NilValue;
}

// The kind written in a model file's header ("popflow-flow", "popflow-meta").
// [[Rcpp::export]]
std::string pf_model_kind(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  std::string kind;
  unpack_model_file(from_raw(bytes), &kind);
  return kind;
  PF_GUARD_END
  return "";
}

// [[Rcpp::export]]
Rcpp::RawVector pf_meta_with_metadata(Rcpp::RawVector bytes, Rcpp::RawVector metadata, bool keep_state) {
  PF_GUARD_BEGIN
  auto model = load_population_model(from_raw(bytes), "cpu");
  if (!keep_state) model->train_state = TrainState();
  return to_raw(save_population_model(*model, from_raw(metadata)));
  PF_GUARD_END
  return Rcpp::RawVector();
}

// [[Rcpp::export]]
Rcpp::RawVector pf_meta_metadata(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  std::string meta;
  load_population_model(from_raw(bytes), "cpu", &meta);
  return to_raw(meta);
  PF_GUARD_END
  return Rcpp::RawVector();
}

// [[Rcpp::export]]
std::string pf_meta_config(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  auto model = load_population_model(from_raw(bytes), "cpu");
  return flow_config_to_text(model->config) + population_config_to_text(model->population);
  PF_GUARD_END
  return "";
}

// [[Rcpp::export]]
Rcpp::NumericMatrix pf_meta_embed(SEXP handle, Rcpp::NumericMatrix x, Rcpp::IntegerVector population, int n_pop,
                                  int threads) {
  PF_GUARD_BEGIN
  auto model = meta_from(handle);
  ThreadScope scope(threads);
  return to_matrix(embed_populations(*model, split_populations(to_tensor(x), population, n_pop)));
  PF_GUARD_END
  return Rcpp::NumericMatrix();
}

// Algorithm 2: embed each population's cells once, then integrate every cell
// with its population's conditioning row.
// [[Rcpp::export]]
Rcpp::List pf_meta_transport(SEXP handle, Rcpp::NumericMatrix x, Rcpp::IntegerVector population, int n_pop,
                             Rcpp::Nullable<Rcpp::IntegerMatrix> labels,
                             Rcpp::Nullable<Rcpp::NumericMatrix> covariates, Rcpp::NumericVector times,
                             Rcpp::List solver, int threads) {
  PF_GUARD_BEGIN
  auto model = meta_from(handle);
  auto cells = to_tensor(x);
  torch::Tensor cond;
  {
    ThreadScope scope(threads);
    auto pop_cond = population_condition(*model, split_populations(cells, population, n_pop), long_matrix(labels),
                                         float_matrix(covariates));
    auto index = torch::tensor(std::vector<int64_t>(population.begin(), population.end()), torch::kLong);
    cond = pop_cond.index_select(0, index);
  }
  OdeStats stats;
  auto states = transport(model->flow(), cells, Rcpp::as<std::vector<double>>(times), cond,
                          popflow_r::solver_config(solver), threads, &stats);
  Rcpp::List out(states.size());
  for (size_t i = 0; i < states.size(); ++i) out[i] = to_matrix(states[i]);
  return Rcpp::List::create(Rcpp::Named("states") = out,
                            Rcpp::Named("evaluations") = static_cast<double>(stats.evaluations));
  PF_GUARD_END
  return R_NilValue;
}

// Rcpp glue for population models (MFM, CGFM): fitting, embedding and
// prediction (their model files are read by r_model.cpp). The R side
// (R/populations.R) checks arguments and turns population ids and labels into
// 0-based codes.
#include "r_glue.h"

#include "core/population_model.h"
#include "core/population_store.h"
#include "core/transport.h"
#include "core/threads.h"
#include "core/validation.h"

using namespace popflow;
using popflow_r::from_raw;
using popflow_r::to_matrix;
using popflow_r::to_tensor;

namespace {

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

}  // namespace

// `config`: the sections "flow", "population", "training" and "checkpoint";
// `resume` and `metadata` as for pf_fit(); `validation`: NULL, or the
// settings and held-out `sets` of popflow_r::add_validation_schedule() and
// popflow_r::population_holdouts(). `store`: NULL, or the path of a
// population store whose cells the engine reads itself (`x`, `side` and
// `population` are then empty; labels and covariates have one row per store
// population). `graph_cache_mb`: the cap on the kNN graphs kept (<= 0: none).
// The fit's graph statistics come back as the attribute "graph_stats".
// `parallel`: NULL, or this process's rank of a data-parallel fit (popflow_r::join_from_r()).
// [[Rcpp::export]]
Rcpp::List pf_population_fit(Rcpp::NumericMatrix x, Rcpp::IntegerVector side, Rcpp::IntegerVector population,
                             Rcpp::Nullable<Rcpp::IntegerMatrix> labels, Rcpp::Nullable<Rcpp::NumericMatrix> covariates,
                             Rcpp::List config, Rcpp::Nullable<Rcpp::Function> progress, int progress_every,
                             Rcpp::Nullable<Rcpp::RawVector> resume, Rcpp::RawVector metadata,
                             Rcpp::Nullable<Rcpp::List> validation = R_NilValue,
                             Rcpp::Nullable<Rcpp::CharacterVector> store = R_NilValue, double graph_cache_mb = 1024,
                             bool prefetch = true, SEXP parallel = R_NilValue) {
  PF_GUARD_BEGIN
  PopulationSet data;
  std::unique_ptr<PopulationData> blocks;
  std::shared_ptr<const PopulationStore> opened;
  if (store.isNotNull()) {
    opened = std::make_shared<const PopulationStore>(Rcpp::as<std::string>(Rcpp::CharacterVector(store.get())[0]));
    blocks = store_population_data(opened, long_matrix(labels), float_matrix(covariates));
  } else {
    data.x = to_tensor(x);
    data.side.assign(side.begin(), side.end());
    data.population.assign(population.begin(), population.end());
    data.labels = long_matrix(labels);
    data.covariates = float_matrix(covariates);
  }
  PopulationTraining how;
  how.graph_cache_bytes = static_cast<int64_t>(graph_cache_mb * 1048576.0);
  how.prefetch = prefetch;
  PopulationTrainingStats stats;
  TrainConfig tc = popflow_r::train_config(config);
  torch::set_num_threads(tc.threads);
  const FlowConfig flow = popflow_r::flow_config(config);
  const PopulationConfig asked = popflow_r::population_config(config);
  std::shared_ptr<PopulationModel> model;
  if (resume.isNotNull()) {
    model = load_population_model(from_raw(Rcpp::RawVector(resume.get())), tc.device);
    // Sampling sizes may change on resuming (files written before they were recorded hold 0).
    model->population.cells_per_population = asked.cells_per_population;
    model->population.populations_per_step = asked.populations_per_step;
    // cond_dim follows the population configuration, so compare the field's settings without it.
    FlowConfig saved_flow = model->config;
    saved_flow.network.cond_dim = 0;
    popflow_r::check_resume_config(flow_config_to_text(saved_flow) + population_config_to_text(model->population),
                                   flow_config_to_text(flow) + population_config_to_text(asked));
    tc.resume = true;
  } else {
    torch::manual_seed(tc.seed);  // weight initialisation is part of the seeded run
    model = make_population_model(flow, asked, tc.device);
  }
  Rcpp::List out = popflow_r::train_for_r(
      *model, config, tc.steps, progress, progress_every, metadata,
      [](const PopulationModel& m, const std::string& fields) { return save_population_model(m, fields); },
      [&](TrainCallbacks callbacks) {
        if (validation.isNotNull()) {
          const Rcpp::List v(validation.get());
          const ValidationConfig vc = popflow_r::add_validation_schedule(callbacks, v, tc.threads);
          callbacks.validate = population_validator(*model, popflow_r::population_holdouts(v["sets"]), vc);
        }
        return blocks ? train_population_model(*model, *blocks, tc, callbacks, how, &stats)
                      : train_population_model(*model, data, tc, callbacks, how, &stats);
      },
      parallel);
  const PopulationStore::ReadStats reads = opened ? opened->read_stats() : PopulationStore::ReadStats{};
  out.attr("graph_stats") = Rcpp::NumericVector::create(
      Rcpp::Named("graphs_built") = static_cast<double>(stats.graphs_built),
      Rcpp::Named("evictions") = static_cast<double>(stats.graph_evictions),
      Rcpp::Named("cache_peak_bytes") = static_cast<double>(stats.graph_cache_peak_bytes),
      Rcpp::Named("blocks_read") = static_cast<double>(stats.blocks_read),
      Rcpp::Named("blocks_read_in_step") = static_cast<double>(stats.blocks_read_in_step),
      Rcpp::Named("read_seconds") = reads.seconds, Rcpp::Named("read_bytes") = static_cast<double>(reads.bytes));
  return out;
  PF_GUARD_END
  return R_NilValue;
}

// [[Rcpp::export]]
Rcpp::NumericMatrix pf_population_embed(SEXP handle, Rcpp::NumericMatrix x, Rcpp::IntegerVector population, int n_pop,
                                        int threads) {
  PF_GUARD_BEGIN
  auto model = popflow_r::population_of(handle);
  ThreadScope scope(threads);
  return to_matrix(embed_populations(*model, split_populations(to_tensor(x), population, n_pop)));
  PF_GUARD_END
  return Rcpp::NumericMatrix();
}

// Algorithm 2: embed each population's cells once, then integrate every cell
// with its population's conditioning row. `solver`: a list with the section
// "solver"; `progress(fraction)`: see r_ode_progress().
// [[Rcpp::export]]
Rcpp::List pf_population_transport(SEXP handle, Rcpp::NumericMatrix x, Rcpp::IntegerVector population, int n_pop,
                                   Rcpp::Nullable<Rcpp::IntegerMatrix> labels,
                                   Rcpp::Nullable<Rcpp::NumericMatrix> covariates, Rcpp::NumericVector times,
                                   Rcpp::List solver, int threads,
                                   Rcpp::Nullable<Rcpp::Function> progress = R_NilValue) {
  PF_GUARD_BEGIN
  auto model = popflow_r::population_of(handle);
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
                          popflow_r::solver_config(solver), threads, &stats,
                          popflow_r::r_ode_progress(progress));
  return popflow_r::transport_result(states, stats);
  PF_GUARD_END
  return R_NilValue;
}

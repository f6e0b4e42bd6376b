// Rcpp glue for flows: fitting and integrating. Thin by design: the R side
// validates arguments and builds the configuration (R/params.R, R/fit.R);
// this file converts types and maps errors.
#include "r_glue.h"

#include "core/metric_path.h"
#include "core/coupling.h"
#include "core/distributed.h"
#include "core/model.h"
#include "core/transport.h"
#include "core/trainer.h"
#include "core/validation.h"

using namespace popflow;
using popflow_r::from_raw;
using popflow_r::to_matrix;
using popflow_r::to_tensor;

// `config`: the sections "flow", "training" and "checkpoint" (see section_text()).
// `resume`: bytes of a model with a training state to continue, or NULL.
// `metadata`: R's fields, stored in checkpoint files.
// `validation`: NULL, or the settings and held-out `sets` of
// popflow_r::add_validation_schedule() and popflow_r::flow_holdouts().
// `parallel`: NULL, or this process's rank of a data-parallel fit (popflow_r::join_from_r()).
// [[Rcpp::export]]
Rcpp::List pf_fit(Rcpp::NumericMatrix x, Rcpp::IntegerVector time_index, Rcpp::IntegerVector group,
                  Rcpp::Nullable<Rcpp::NumericMatrix> group_cond, Rcpp::List config,
                  Rcpp::Nullable<Rcpp::Function> progress, int progress_every, Rcpp::Nullable<Rcpp::RawVector> resume,
                  Rcpp::RawVector metadata, Rcpp::Nullable<Rcpp::List> validation = R_NilValue, SEXP parallel = R_NilValue) {
  PF_GUARD_BEGIN
  TrainingData data;
  data.x = to_tensor(x);
  data.time_index.assign(time_index.begin(), time_index.end());
  data.group.assign(group.begin(), group.end());
  if (group_cond.isNotNull()) data.group_cond = to_tensor(Rcpp::NumericMatrix(group_cond.get()));
  TrainConfig tc = popflow_r::train_config(config);
  torch::set_num_threads(tc.threads);
  const FlowConfig asked = popflow_r::flow_config(config);
  std::shared_ptr<FlowModel> model;
  if (resume.isNotNull()) {
    model = load_model(from_raw(Rcpp::RawVector(resume.get())), tc.device);
    popflow_r::check_resume_config(flow_config_to_text(model->config), flow_config_to_text(asked));
    tc.resume = true;
  } else {
    torch::manual_seed(tc.seed);  // weight initialisation is part of the seeded run
    model = make_model(asked, tc.device);
  }
  return popflow_r::train_for_r(
      *model, config, tc.steps, progress, progress_every, metadata,
      [](const FlowModel& m, const std::string& fields) { return save_model(m, fields); },
      [&](TrainCallbacks callbacks) {
        if (validation.isNotNull()) {
          const Rcpp::List v(validation.get());
          const ValidationConfig vc = popflow_r::add_validation_schedule(callbacks, v, tc.threads);
          callbacks.validate = flow_validator(*model, popflow_r::flow_holdouts(v["sets"]), vc);
        }
        return train(*model, data, tc, callbacks);
      },
      parallel);
  PF_GUARD_END
  return R_NilValue;
}

// The backends of data-parallel training this build has ("gloo", "nccl").
// [[Rcpp::export]]
Rcpp::CharacterVector pf_distributed_backends() { return Rcpp::wrap(distributed_backends()); }

// `solver`: a list with the section "solver"; `progress(fraction)`: see r_ode_progress().
// [[Rcpp::export]]
Rcpp::List pf_transport(SEXP handle, Rcpp::NumericMatrix x, Rcpp::NumericVector times,
                        Rcpp::Nullable<Rcpp::NumericMatrix> cond, Rcpp::List solver, int threads,
                        Rcpp::Nullable<Rcpp::Function> progress = R_NilValue) {
  PF_GUARD_BEGIN
  auto model = popflow_r::flow_of(handle);
  torch::Tensor c = cond.isNotNull() ? to_tensor(Rcpp::NumericMatrix(cond.get())) : torch::Tensor();
  OdeStats stats;
  // An unbalanced flow's cells come with their log-masses.
  std::vector<torch::Tensor> log_mass;
  const bool growth = model->net->has_growth();
  auto states = transport(*model, to_tensor(x), Rcpp::as<std::vector<double>>(times), c,
                          popflow_r::solver_config(solver), threads, &stats,
                          popflow_r::r_ode_progress(progress), growth ? &log_mass : nullptr);
  Rcpp::List out = popflow_r::transport_result(states, stats);
  if (growth) {
    Rcpp::List lm(log_mass.size());
    for (size_t i = 0; i < log_mass.size(); ++i)
      lm[i] = Rcpp::NumericVector(log_mass[i].data_ptr<double>(), log_mass[i].data_ptr<double>() + log_mass[i].numel());
    out.push_back(lm, "log_mass");
  }
  return out;
  PF_GUARD_END
  return R_NilValue;
}

// The unbalanced entropic OT plan of source cells (mass 1) and target cells
// (mass `target_mass`), with absolute reg and reg_m (coupling.h), for tests and users.
// [[Rcpp::export]]
Rcpp::NumericMatrix pf_unbalanced_plan(Rcpp::NumericMatrix x0, Rcpp::NumericMatrix x1, double target_mass, double reg,
                                       double reg_m, int iters) {
  PF_GUARD_BEGIN
  return to_matrix(unbalanced_sinkhorn_plan(to_tensor(x0), to_tensor(x1), target_mass, reg, reg_m, iters));
  PF_GUARD_END
  return Rcpp::NumericMatrix(0, 0);
}

// Log-density of each cell under a generative flow (transport.h). `solver`:
// the section "solver"; `density`: the section "density".
// [[Rcpp::export]]
Rcpp::List pf_log_density(SEXP handle, Rcpp::NumericMatrix x, Rcpp::List solver, Rcpp::List density, int threads) {
  PF_GUARD_BEGIN
  auto model = popflow_r::flow_of(handle);
  const DensityConfig dc = popflow_r::density_config(density);
  OdeStats stats;
  LogDensity res = log_density(*model, to_tensor(x), popflow_r::solver_config(solver), dc, threads, &stats);
  return Rcpp::List::create(
      Rcpp::Named("log_density") = Rcpp::NumericVector(res.log_density.data_ptr<double>(),
                                                       res.log_density.data_ptr<double>() + res.log_density.numel()),
      Rcpp::Named("source") = to_matrix(res.source),
      Rcpp::Named("exact") = exact_divergence(dc, model->config.network.dim),
      Rcpp::Named("evaluations") = static_cast<double>(stats.evaluations),
      Rcpp::Named("parameters") = static_cast<double>(parameter_count(*model->net)));
  PF_GUARD_END
  return R_NilValue;
}

// n cells from a generative flow's source: of a fitted model (`handle`), or
// of the configuration of a fit to come (`config`, as for pf_fit) when
// `handle` is NULL. Seeded: the same seed gives the same cells.
// [[Rcpp::export]]
Rcpp::NumericMatrix pf_draw_source(SEXP handle, Rcpp::Nullable<Rcpp::List> config, int n, double seed) {
  PF_GUARD_BEGIN
  const FlowConfig cfg =
      Rf_isNull(handle) ? popflow_r::flow_config(Rcpp::List(config.get())) : popflow_r::flow_of(handle)->config;
  return to_matrix(draw_source(cfg, n, static_cast<uint64_t>(seed)));
  PF_GUARD_END
  return Rcpp::NumericMatrix(0, 0);
}

// The inverse LAND metric's diagonal (metric flow matching) at the rows of x,
// for tests and for users who want to see where the metric is cheap.
// [[Rcpp::export]]
Rcpp::NumericMatrix pf_land_metric(Rcpp::NumericMatrix x, Rcpp::NumericMatrix reference, double bandwidth,
                                   double eps) {
  PF_GUARD_BEGIN
  torch::NoGradGuard no_grad;
  return to_matrix(land_inverse_metric(to_tensor(x), to_tensor(reference), bandwidth, eps));
  PF_GUARD_END
  return R_NilValue;
}

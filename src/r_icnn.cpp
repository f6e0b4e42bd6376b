// Rcpp glue for the ICNN baseline (CellOT): fitting, the gradient map and the
// potential. Thin by design: R/icnn.R checks arguments and builds the configuration.
#include "r_glue.h"

#include "core/icnn.h"

using namespace popflow;
using popflow_r::to_matrix;
using popflow_r::to_tensor;

// `config`: the sections "icnn", "training" and "checkpoint" (see section_text()).
// [[Rcpp::export]]
Rcpp::List pf_icnn_fit(Rcpp::NumericMatrix source, Rcpp::NumericMatrix target, Rcpp::List config,
                       Rcpp::Nullable<Rcpp::Function> progress, int progress_every, Rcpp::RawVector metadata) {
  PF_GUARD_BEGIN
  const TrainConfig tc = popflow_r::train_config(config);
  const IcnnConfig ic = icnn_config_from_text(popflow_r::section_text(config, "icnn"));
  torch::set_num_threads(tc.threads);
  torch::manual_seed(tc.seed);  // weight initialisation is part of the seeded run
  auto model = make_icnn_model(ic, tc.device);
  const torch::Tensor x = to_tensor(source), y = to_tensor(target);
  return popflow_r::train_for_r(
      *model, config, tc.steps, progress, progress_every, metadata,
      [](const IcnnModel& m, const std::string& fields) { return save_icnn_model(m, fields); },
      [&](TrainCallbacks callbacks) { return train_icnn(*model, x, y, tc, callbacks); });
  PF_GUARD_END
  return R_NilValue;
}

// grad g(x) (type "cells") or g(x) (type "potential", a one-column matrix).
// [[Rcpp::export]]
Rcpp::NumericMatrix pf_icnn_transport(SEXP handle, Rcpp::NumericMatrix x, std::string type, int chunk_size,
                                      int threads) {
  PF_GUARD_BEGIN
  auto model = popflow_r::icnn_of(handle);
  if (type == "potential") return to_matrix(icnn_potential(*model, to_tensor(x), chunk_size, threads).unsqueeze(1));
  return to_matrix(icnn_transport(*model, to_tensor(x), chunk_size, threads));
  PF_GUARD_END
  return Rcpp::NumericMatrix();
}

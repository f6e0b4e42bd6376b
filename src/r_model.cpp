// Rcpp glue for fitted models of either kind: handles, model files (the kind
// is read from the file header) and what the build offers.
#include "r_glue.h"

#include "core/blas_kernels.h"

using namespace popflow;
using popflow_r::from_raw;
using popflow_r::HandlePtr;
using popflow_r::load_handle;
using popflow_r::ModelHandle;
using popflow_r::to_raw;

// [[Rcpp::export]]
SEXP pf_load(Rcpp::RawVector bytes, std::string device) {
  PF_GUARD_BEGIN
  return HandlePtr(new ModelHandle(load_handle(from_raw(bytes), device)), true);
  PF_GUARD_END
  return R_NilValue;
}

// [[Rcpp::export]]
bool pf_handle_valid(SEXP handle) {
  return TYPEOF(handle) == EXTPTRSXP && R_ExternalPtrAddr(handle) != nullptr;
}

// Re-saves a model's bytes with an opaque metadata block (R's own fields),
// with or without its training state.
// [[Rcpp::export]]
Rcpp::RawVector pf_with_metadata(Rcpp::RawVector bytes, Rcpp::RawVector metadata, bool keep_state) {
  PF_GUARD_BEGIN
  ModelHandle model = load_handle(from_raw(bytes), "cpu");
  if (!keep_state) model.train_state() = TrainState();
  return to_raw(model.save(from_raw(metadata)));
  PF_GUARD_END
  return Rcpp::RawVector();
}

// Validates a whole model file and returns its metadata block.
// [[Rcpp::export]]
Rcpp::RawVector pf_metadata(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  std::string fields;
  load_handle(from_raw(bytes), "cpu", &fields);
  return to_raw(fields);
  PF_GUARD_END
  return Rcpp::RawVector();
}

// The engine's settings of a model, as "key=value" lines.
// [[Rcpp::export]]
std::string pf_model_config(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  return load_handle(from_raw(bytes), "cpu").config_text();
  PF_GUARD_END
  return "";
}

// Completed steps and loss history of a model's training state (steps 0 when it has none).
// [[Rcpp::export]]
Rcpp::List pf_training_state(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  ModelHandle model = load_handle(from_raw(bytes), "cpu");
  const TrainState& state = model.train_state();
  return Rcpp::List::create(Rcpp::Named("steps") = static_cast<double>(state.step),
                            Rcpp::Named("loss") = Rcpp::wrap(state.loss));
  PF_GUARD_END
  return R_NilValue;
}

// [[Rcpp::export]]
bool pf_cuda_available() { return cuda_available(); }

// [[Rcpp::export]]
bool pf_cuda_built() { return cuda_built(); }

// [[Rcpp::export]]
std::string pf_torch_version() { return TORCH_VERSION; }

// [[Rcpp::export]]
Rcpp::List pf_blas_kernels() {
  const BlasKernels k = blas_kernels();
  return Rcpp::List::create(Rcpp::Named("library") = k.library, Rcpp::Named("config") = k.config,
                            Rcpp::Named("core") = k.core, Rcpp::Named("cpu_isa") = k.cpu_isa,
                            Rcpp::Named("suggested_coretype") = k.suggested_coretype);
}

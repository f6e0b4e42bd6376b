// Rcpp glue for fitting, loading and integrating flows. Thin by design: the
// R side validates arguments; this file converts types and maps errors.
#include "r_glue.h"

#include "core/population_model.h"
#include "core/model.h"
#include "core/transport.h"
#include "core/trainer.h"

using namespace popflow;
using popflow_r::flow_config;
using popflow_r::from_raw;
using popflow_r::solver_config;
using popflow_r::to_matrix;
using popflow_r::to_raw;
using popflow_r::to_tensor;
using popflow_r::train_config;

namespace {

void finalize_model(std::shared_ptr<FlowModel>* p) { delete p; }
using ModelPtr = Rcpp::XPtr<std::shared_ptr<FlowModel>, Rcpp::PreserveStorage, finalize_model>;

std::shared_ptr<FlowModel> model_from(SEXP handle) {
  ModelPtr ptr(handle);
  if (ptr.get() == nullptr) throw std::invalid_argument("model handle is empty; reload the model");
  return *ptr;
}

}  // namespace

// `resume`: bytes of a model with a training state to continue, or NULL.
// `metadata`: R's fields, stored in checkpoint files.
// [[Rcpp::export]]
Rcpp::List pf_fit(Rcpp::NumericMatrix x, Rcpp::IntegerVector time_index, Rcpp::NumericVector times,
                  Rcpp::IntegerVector group, Rcpp::Nullable<Rcpp::NumericMatrix> group_cond,
                  Rcpp::List config, Rcpp::Nullable<Rcpp::Function> progress, int progress_every,
                  Rcpp::Nullable<Rcpp::RawVector> resume, Rcpp::RawVector metadata) {
  PF_GUARD_BEGIN
  TrainingData data;
  data.x = to_tensor(x);
  data.time_index.assign(time_index.begin(), time_index.end());
  data.group.assign(group.begin(), group.end());
  int64_t cond_dim = 0;
  if (group_cond.isNotNull()) {
    data.group_cond = to_tensor(Rcpp::NumericMatrix(group_cond.get()));
    cond_dim = data.group_cond.size(1);
  }
  TrainConfig tc = train_config(config);
  torch::set_num_threads(tc.threads);
  const FlowConfig asked = flow_config(config, times, x.ncol(), cond_dim);
  std::shared_ptr<FlowModel> model;
  if (resume.isNotNull()) {
    model = load_model(from_raw(Rcpp::RawVector(resume.get())), tc.device);
    popflow_r::check_resume_config(flow_config_to_text(model->config), flow_config_to_text(asked));
    tc.resume = true;
  } else {
    torch::manual_seed(tc.seed);  // weight initialisation is part of the seeded run
    model = make_model(asked, tc.device);
  }

  bool user_interrupt = false;
  auto callbacks = popflow_r::r_callbacks(progress, progress_every, tc.steps, &user_interrupt);
  const std::string meta = from_raw(metadata);
  popflow_r::add_checkpoints(callbacks, config, [&](const TrainState& state) {
    model->train_state = state;
    return save_model(*model, meta);
  });
  TrainResult res = train(*model, data, tc, callbacks);
  return popflow_r::fit_result(save_model(*model), res, user_interrupt);
  PF_GUARD_END
  return R_NilValue;
}

// [[Rcpp::export]]
SEXP pf_load(Rcpp::RawVector bytes, std::string device) {
  PF_GUARD_BEGIN
  auto model = load_model(from_raw(bytes), device);
  return ModelPtr(new std::shared_ptr<FlowModel>(model), true);
  PF_GUARD_END
  return R_NilValue;
}

// Re-saves a model's bytes with an opaque metadata block (R's own fields),
// with or without its training state.
// [[Rcpp::export]]
Rcpp::RawVector pf_with_metadata(Rcpp::RawVector bytes, Rcpp::RawVector metadata, bool keep_state) {
  PF_GUARD_BEGIN
  auto model = load_model(from_raw(bytes), "cpu");
  if (!keep_state) model->train_state = TrainState();
  return to_raw(save_model(*model, from_raw(metadata)));
  PF_GUARD_END
  return Rcpp::RawVector();
}

// Validates a whole model file and returns its metadata block.
// [[Rcpp::export]]
Rcpp::RawVector pf_metadata(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  std::string meta;
  load_model(from_raw(bytes), "cpu", &meta);
  return to_raw(meta);
  PF_GUARD_END
  return Rcpp::RawVector();
}

// Completed steps and loss history of a model's training state (steps 0 when it has none).
// [[Rcpp::export]]
Rcpp::List pf_training_state(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  std::string kind;
  unpack_model_file(from_raw(bytes), &kind);
  const TrainState state = kind == kPopulationModelKind ? load_population_model(from_raw(bytes), "cpu")->train_state
                                                   : load_model(from_raw(bytes), "cpu")->train_state;
  return Rcpp::List::create(Rcpp::Named("steps") = static_cast<double>(state.step),
                            Rcpp::Named("loss") = Rcpp::wrap(state.loss));
  PF_GUARD_END
  return R_NilValue;
}

// [[Rcpp::export]]
bool pf_handle_valid(SEXP handle) {
  return TYPEOF(handle) == EXTPTRSXP && R_ExternalPtrAddr(handle) != nullptr;
}

// [[Rcpp::export]]
std::string pf_model_config(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  return flow_config_to_text(load_model(from_raw(bytes), "cpu")->config);
  PF_GUARD_END
  return "";
}

// [[Rcpp::export]]
Rcpp::List pf_transport(SEXP handle, Rcpp::NumericMatrix x, Rcpp::NumericVector times,
                        Rcpp::Nullable<Rcpp::NumericMatrix> cond, Rcpp::List solver, int threads) {
  PF_GUARD_BEGIN
  auto model = model_from(handle);
  torch::Tensor c = cond.isNotNull() ? to_tensor(Rcpp::NumericMatrix(cond.get())) : torch::Tensor();
  OdeStats stats;
  auto states = transport(*model, to_tensor(x), Rcpp::as<std::vector<double>>(times), c, solver_config(solver),
                          threads, &stats);
  Rcpp::List out(states.size());
  for (size_t i = 0; i < states.size(); ++i) out[i] = to_matrix(states[i]);
  return Rcpp::List::create(Rcpp::Named("states") = out,
                            Rcpp::Named("evaluations") = static_cast<double>(stats.evaluations),
                            Rcpp::Named("accepted") = static_cast<double>(stats.accepted),
                            Rcpp::Named("rejected") = static_cast<double>(stats.rejected));
  PF_GUARD_END
  return R_NilValue;
}

// [[Rcpp::export]]
bool pf_cuda_available() { return cuda_available(); }

// [[Rcpp::export]]
std::string pf_torch_version() { return TORCH_VERSION; }

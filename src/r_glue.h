// Shared by the Rcpp glue: conversions between R matrices and tensors, the
// R configuration sections read by the engine's text readers, the handle of a
// fitted model of either kind, the training run with R's callbacks, and a
// guard that turns engine exceptions into plain R errors (no C++ backtrace).
#pragma once
#include <torch/torch.h>
#include <Rcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <sstream>
#include <string>

#include "core/config.h"
#include "core/config_text.h"
#include "core/distributed.h"
#include "core/icnn.h"
#include "core/model.h"
#include "core/model_file.h"
#include "core/ode.h"
#include "core/population_model.h"
#include "core/trainer.h"
#include "core/validation.h"

#define PF_GUARD_BEGIN try {
#define PF_GUARD_END                                             \
  }                                                              \
  catch (const c10::Error& e) {                                  \
    Rcpp::stop(popflow_r::engine_message(e.what_without_backtrace())); \
  }                                                              \
  catch (const popflow::Interrupted&) {                          \
    throw Rcpp::internal::InterruptedException();                \
  }                                                              \
  catch (const Rcpp::internal::InterruptedException&) {          \
    throw;                                                       \
  }                                                              \
  catch (const std::bad_alloc&) {                                \
    Rcpp::stop(popflow_r::engine_message("can't allocate memory")); \
  }                                                              \
  catch (const std::exception& e) {                              \
    Rcpp::stop(std::string(e.what()));                           \
  }

namespace popflow_r {

// An engine error for R: an allocation LibTorch (or the C++ library) could
// not make becomes popflow's message with the settings that size memory; the
// allocator's own text is kept as the detail.
inline std::string engine_message(const std::string& what) {
  const bool memory = what.find("can't allocate memory") != std::string::npos ||
                      what.find("out of memory") != std::string::npos ||
                      what.find("CUDA error: out of memory") != std::string::npos;
  if (!memory) return what;
  std::string detail = what.substr(0, what.find('\n'));
  return "popflow ran out of memory (" + detail +
         ")\n  Fix: lower what sizes the work: batch_size in TrainingParam(), width or depth in NetworkParam(), "
         "cells_per_population in MFMParam()/CGFMParam(), or chunk_size in SolverParam() for predictions";
}

// R's column-major cells x features matrix -> [n, d] float32 tensor (a copy).
inline torch::Tensor to_tensor(const Rcpp::NumericMatrix& m) {
  auto view = torch::from_blob(const_cast<double*>(m.begin()), {m.ncol(), m.nrow()}, torch::kDouble);
  return view.t().to(torch::kFloat).contiguous();
}

// [n, d] tensor -> R matrix.
inline Rcpp::NumericMatrix to_matrix(const torch::Tensor& t) {
  auto cm = t.to(torch::kCPU, torch::kDouble).t().contiguous();
  Rcpp::NumericMatrix out(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)));
  std::copy(cm.data_ptr<double>(), cm.data_ptr<double>() + cm.numel(), out.begin());
  return out;
}

// One section of a configuration list built by the R side (engine_config()
// in R/params.R, merged by the fit verb) as the engine's "key=value" text:
// every entry, numbers at full precision and numeric vectors joined by ",",
// logicals as 1/0, strings as they are. The engine's readers reject a missing
// or unknown key, so no setting has a default here.
inline std::string section_text(const Rcpp::List& config, const std::string& section) {
  if (!config.containsElementNamed(section.c_str()))
    throw std::invalid_argument("the configuration has no '" + section + "' section");
  const Rcpp::List keys = config[section];
  const SEXP names = keys.names();
  if (keys.size() > 0 && Rf_isNull(names))
    throw std::invalid_argument("the '" + section + "' section has unnamed entries");
  std::ostringstream os;
  os.precision(17);
  for (R_xlen_t i = 0; i < keys.size(); ++i) {
    const std::string key = CHAR(STRING_ELT(names, i));
    const SEXP v = keys[i];
    os << key << "=";
    if (TYPEOF(v) == REALSXP || TYPEOF(v) == INTSXP) {
      const Rcpp::NumericVector n(v);
      for (R_xlen_t j = 0; j < n.size(); ++j) os << (j ? "," : "") << n[j];
    } else if (TYPEOF(v) == LGLSXP && Rf_length(v) == 1 && LOGICAL(v)[0] != NA_LOGICAL) {
      os << (LOGICAL(v)[0] ? 1 : 0);
    } else if (TYPEOF(v) == STRSXP && Rf_length(v) == 1 && STRING_ELT(v, 0) != NA_STRING) {
      os << CHAR(STRING_ELT(v, 0));
    } else {
      throw std::invalid_argument("'" + key + "' in the '" + section + "' section has no usable value");
    }
    os << "\n";
  }
  return os.str();
}

// The source's values (config.h SourceConfig, row-major) are no key of the
// text: R gives them as the entry "source_values" beside the sections.
inline popflow::FlowConfig flow_config(const Rcpp::List& config) {
  popflow::FlowConfig c = popflow::flow_config_from_text(section_text(config, "flow"));
  if (config.containsElementNamed("source_values"))
    c.source.values = Rcpp::as<std::vector<double>>(config["source_values"]);
  return c;
}

inline popflow::TrainConfig train_config(const Rcpp::List& config) {
  return popflow::train_config_from_text(section_text(config, "training"));
}

inline popflow::SolverConfig solver_config(const Rcpp::List& config) {
  return popflow::solver_config_from_text(section_text(config, "solver"));
}

inline popflow::DensityConfig density_config(const Rcpp::List& config) {
  return popflow::density_config_from_text(section_text(config, "density"));
}

inline popflow::PopulationConfig population_config(const Rcpp::List& config) {
  return popflow::population_config_from_text(section_text(config, "population"));
}

// A fitted model of any kind, as R holds it: the header of its file says
// which ("popflow-flow", "popflow-meta" or "popflow-icnn"); exactly one pointer is set.
struct ModelHandle {
  std::shared_ptr<popflow::FlowModel> flow;
  std::shared_ptr<popflow::PopulationModel> population;
  std::shared_ptr<popflow::IcnnModel> icnn;

  popflow::TrainState& train_state() {
    return flow ? flow->train_state : population ? population->train_state : icnn->train_state;
  }
  std::string save(const std::string& metadata) const {
    if (icnn) return popflow::save_icnn_model(*icnn, metadata);
    return flow ? popflow::save_model(*flow, metadata) : popflow::save_population_model(*population, metadata);
  }
  // The engine's settings as text (a population model: the field's, then the population's).
  std::string config_text() const {
    if (icnn) return popflow::icnn_config_to_text(icnn->config);
    return flow ? popflow::flow_config_to_text(flow->config)
                : popflow::flow_config_to_text(population->config) +
                      popflow::population_config_to_text(population->population);
  }
};

// Validates a whole model file of any kind and loads it; fills `metadata` when given.
inline ModelHandle load_handle(const std::string& bytes, const std::string& device, std::string* metadata = nullptr) {
  std::string kind;
  popflow::unpack_model_file(bytes, &kind);
  ModelHandle h;
  if (kind == popflow::kPopulationModelKind) {
    h.population = popflow::load_population_model(bytes, device, metadata);
  } else if (kind == popflow::kIcnnModelKind) {
    h.icnn = popflow::load_icnn_model(bytes, device, metadata);
  } else {
    h.flow = popflow::load_model(bytes, device, metadata);
  }
  return h;
}

inline void finalize_handle(ModelHandle* p) { delete p; }
using HandlePtr = Rcpp::XPtr<ModelHandle, Rcpp::PreserveStorage, finalize_handle>;

inline ModelHandle& handle_of(SEXP handle) {
  HandlePtr ptr(handle);
  if (ptr.get() == nullptr) throw std::invalid_argument("model handle is empty; reload the model");
  return *ptr;
}

inline std::shared_ptr<popflow::FlowModel> flow_of(SEXP handle) {
  auto& h = handle_of(handle);
  if (h.icnn) throw std::invalid_argument("the model is an ICNN map (CellOT), not a flow");
  if (!h.flow) throw std::invalid_argument("the model is a population model (MFM/CGFM), not a flow");
  return h.flow;
}

inline std::shared_ptr<popflow::PopulationModel> population_of(SEXP handle) {
  auto& h = handle_of(handle);
  if (!h.population) throw std::invalid_argument("the model is not a population model (MFM/CGFM)");
  return h.population;
}

inline std::shared_ptr<popflow::IcnnModel> icnn_of(SEXP handle) {
  auto& h = handle_of(handle);
  if (!h.icnn) throw std::invalid_argument("the model is not an ICNN map (CellOT)");
  return h.icnn;
}

inline Rcpp::RawVector to_raw(const std::string& s) {
  Rcpp::RawVector out(s.size());
  std::copy(s.begin(), s.end(), out.begin());
  return out;
}

inline std::string from_raw(const Rcpp::RawVector& r) { return std::string(r.begin(), r.end()); }

// Training callbacks: Ctrl-C stops training cleanly (sets *interrupted) and
// `progress(step, loss)` is called every `every` steps and at the last one.
inline popflow::TrainCallbacks r_callbacks(const Rcpp::Nullable<Rcpp::Function>& progress, int every,
                                           int64_t steps, bool* interrupted) {
  popflow::TrainCallbacks cb;
  cb.every = 1;
  cb.progress = [=](int64_t step, double loss) {
    try {
      Rcpp::checkUserInterrupt();
    } catch (const Rcpp::internal::InterruptedException&) {
      *interrupted = true;
      return false;
    }
    // The R callback returns FALSE to stop (it turns a Ctrl-C during its own
    // evaluation into FALSE, so no R error unwinds through the training loop).
    if (progress.isNotNull() && (step % std::max(every, 1) == 0 || step == steps)) {
      SEXP keep_going = Rcpp::Function(progress.get())(static_cast<double>(step), loss);
      if (Rf_isLogical(keep_going) && Rf_length(keep_going) == 1 && LOGICAL(keep_going)[0] == FALSE) {
        *interrupted = true;
        return false;
      }
    }
    return true;
  };
  return cb;
}

// Prediction's hook into the ODE solver (OdeProgress): at most every 0.1 s,
// Ctrl-C stops the integration (the engine throws Interrupted, which the
// guard turns into R's interrupt) and `progress(fraction)` is called; it
// returns FALSE to stop as well.
inline popflow::OdeProgress r_ode_progress(const Rcpp::Nullable<Rcpp::Function>& progress) {
  using clock = std::chrono::steady_clock;
  auto last = std::make_shared<clock::time_point>(clock::now());
  return [=](double fraction) {
    const auto now = clock::now();
    if (fraction < 1 && now - *last < std::chrono::milliseconds(100)) return true;
    *last = now;
    try {
      Rcpp::checkUserInterrupt();
      if (progress.isNotNull()) {
        SEXP keep_going = Rcpp::Function(progress.get())(fraction);
        if (Rf_isLogical(keep_going) && Rf_length(keep_going) == 1 && LOGICAL(keep_going)[0] == FALSE) return false;
      }
    } catch (const Rcpp::internal::InterruptedException&) {
      return false;
    }
    return true;
  };
}

// Resuming: the saved model must have the configuration this fit asks for
// (the R side checks first, with friendlier messages; this is the backstop).
inline void check_resume_config(const std::string& saved, const std::string& asked) {
  if (saved == asked) return;
  std::istringstream a(saved), b(asked);
  std::string la, lb;
  while (std::getline(a, la) && std::getline(b, lb) && la == lb) {
  }
  throw std::invalid_argument("`resume` holds a model fitted with other settings (" + la + " there, " + lb +
                              " here)\n  Fix: resume with the method, network and features the model was fitted "
                              "with, or fit a new model without `resume`");
}

// Checkpoints every `every` steps to `file` (the "checkpoint" section; every
// 0 = never), atomically: a reader never sees a half-written file. `save`
// turns a state into model bytes.
inline void add_checkpoints(popflow::TrainCallbacks& cb, const Rcpp::List& config,
                            std::function<std::string(const popflow::TrainState&)> save) {
  const popflow::ConfigText checkpoint(section_text(config, "checkpoint"), "checkpoint settings");
  const auto every = checkpoint.count("every", 0, 1e15);
  const std::string path = checkpoint.value("file");
  checkpoint.reject_unknown_keys();
  if (every == 0) return;
  if (path.empty()) throw std::invalid_argument("checkpoint settings: 'every' is set but 'file' is empty");
  cb.checkpoint_every = every;
  cb.checkpoint = [path, save](int64_t, const popflow::TrainState& state) {
    popflow::write_file_atomic(path, save(state));
  };
}

// Validation from R (fitFlow(validation = ) with held-out data): `v` holds
// the sections "validation" (metric, every, patience, keep_best, max_cells,
// seed) and "solver" of ValidationParam(), and `sets`, the held-out sets that
// make_validator() turns into the engine's. Sets the loop's schedule in `cb`
// and returns the scorer's configuration.
inline popflow::ValidationConfig add_validation_schedule(popflow::TrainCallbacks& cb, const Rcpp::List& v,
                                                         int threads) {
  const popflow::ConfigText text(section_text(v, "validation"), "validation settings");
  popflow::ValidationConfig config;
  config.metric = text.method<popflow::DistanceMetric>("metric");
  config.max_cells = text.count("max_cells", 0, 1e15);
  config.seed = text.seed("seed");
  config.threads = threads;
  config.solver = solver_config(v);
  cb.validate_every = text.count("every", 1, 1e15);
  cb.patience = text.count("patience", 0, 1e15);
  cb.keep_best = text.flag("keep_best");
  text.reject_unknown_keys();
  return config;
}

inline torch::Tensor optional_tensor(SEXP x, torch::ScalarType type) {
  if (Rf_isNull(x)) return torch::Tensor();
  const Rcpp::NumericVector v(x);
  return torch::tensor(std::vector<double>(v.begin(), v.end()), torch::kDouble).to(type);
}

// Held-out sets of a flow: each a list of `source`, `target` (matrices) and
// the times `t0`, `t1` to transport between.
inline std::vector<popflow::FlowHoldout> flow_holdouts(const Rcpp::List& sets) {
  std::vector<popflow::FlowHoldout> out;
  for (R_xlen_t i = 0; i < sets.size(); ++i) {
    const Rcpp::List s = sets[i];
    popflow::FlowHoldout h;
    h.source = to_tensor(Rcpp::NumericMatrix(s["source"]));
    h.target = to_tensor(Rcpp::NumericMatrix(s["target"]));
    h.t0 = Rcpp::as<double>(s["t0"]);
    h.t1 = Rcpp::as<double>(s["t1"]);
    out.push_back(h);
  }
  return out;
}

// Held-out populations: each a list of `source`, `target` (matrices),
// `labels` (0-based codes, -1 for an unseen value, or NULL) and `covariates`
// (or NULL).
inline std::vector<popflow::PopulationHoldout> population_holdouts(const Rcpp::List& sets) {
  std::vector<popflow::PopulationHoldout> out;
  for (R_xlen_t i = 0; i < sets.size(); ++i) {
    const Rcpp::List s = sets[i];
    popflow::PopulationHoldout h;
    h.source = to_tensor(Rcpp::NumericMatrix(s["source"]));
    h.target = to_tensor(Rcpp::NumericMatrix(s["target"]));
    h.labels = optional_tensor(s["labels"], torch::kLong);
    h.covariates = optional_tensor(s["covariates"], torch::kFloat);
    out.push_back(h);
  }
  return out;
}

// Integrated states (a list of matrices, one per time) and the solver's counts.
inline Rcpp::List transport_result(const std::vector<torch::Tensor>& states, const popflow::OdeStats& stats) {
  Rcpp::List out(states.size());
  for (size_t i = 0; i < states.size(); ++i) out[i] = to_matrix(states[i]);
  return Rcpp::List::create(Rcpp::Named("states") = out,
                            Rcpp::Named("evaluations") = static_cast<double>(stats.evaluations),
                            Rcpp::Named("accepted") = static_cast<double>(stats.accepted),
                            Rcpp::Named("rejected") = static_cast<double>(stats.rejected));
}

// Data-parallel training from R (R/parallel.R): NULL, or a list of backend,
// rank, world_size, address, port, timeout and version (distributed.h).
inline std::unique_ptr<popflow::GradientSync> join_from_r(SEXP parallel) {
  if (Rf_isNull(parallel)) return nullptr;
  const Rcpp::List p(parallel);
  popflow::DistributedConfig c;
  c.backend = Rcpp::as<std::string>(p["backend"]);
  c.rank = static_cast<int64_t>(Rcpp::as<double>(p["rank"]));
  c.world_size = static_cast<int64_t>(Rcpp::as<double>(p["world_size"]));
  c.address = Rcpp::as<std::string>(p["address"]);
  c.port = static_cast<int64_t>(Rcpp::as<double>(p["port"]));
  c.timeout_s = Rcpp::as<double>(p["timeout"]);
  c.version = Rcpp::as<std::string>(p["version"]);
  return popflow::join_process_group(c);
}

// Trains a model of either kind with R's progress callback and the
// checkpoints of `config`, and returns the fit for R: `save(model, metadata)`
// writes the model's bytes, `train(callbacks)` runs the engine's training
// (adding its validator, if any), and the validation record comes back too.
// With `parallel` (join_from_r()), this process is one rank of a data-parallel
// fit: only rank 0 writes checkpoints.
template <typename Model, typename Save, typename Train>
Rcpp::List train_for_r(Model& model, const Rcpp::List& config, int64_t steps,
                        const Rcpp::Nullable<Rcpp::Function>& progress, int progress_every,
                        const Rcpp::RawVector& metadata, Save save, Train train, SEXP parallel = R_NilValue) {
  bool user_interrupt = false;
  auto callbacks = r_callbacks(progress, progress_every, steps, &user_interrupt);
  const std::string fields = from_raw(metadata);
  const std::unique_ptr<popflow::GradientSync> sync = join_from_r(parallel);
  callbacks.sync = sync.get();
  if (!sync || sync->rank() == 0)
    add_checkpoints(callbacks, config, [&](const popflow::TrainState& state) {
      model.train_state = state;
      return save(model, fields);
    });
  const popflow::TrainResult res = train(callbacks);
  const std::vector<double> validation_steps(res.validation_steps.begin(), res.validation_steps.end());
  return Rcpp::List::create(Rcpp::Named("bytes") = to_raw(save(model, "")), Rcpp::Named("loss") = Rcpp::wrap(res.loss),
                            Rcpp::Named("steps_done") = static_cast<double>(res.steps_done),
                            Rcpp::Named("status") = res.status, Rcpp::Named("user_interrupt") = user_interrupt,
                            Rcpp::Named("seconds") = res.seconds,
                            Rcpp::Named("validation_steps") = Rcpp::wrap(validation_steps),
                            Rcpp::Named("validation_scores") = Rcpp::wrap(res.validation_scores),
                            Rcpp::Named("best_step") = static_cast<double>(res.best_step),
                            Rcpp::Named("best_score") = res.best_score, Rcpp::Named("step_graph") = res.step_graph);
}

}  // namespace popflow_r

// Rcpp glue for fitting, loading and integrating flows. Thin by design: the
// R side validates arguments; this file converts types and maps errors.
#include "r_glue.h"

#include "core/model.h"
#include "core/sampler.h"
#include "core/trainer.h"

using namespace popflow;
using popflow_r::to_matrix;
using popflow_r::to_tensor;

namespace {

template <typename T>
T get_or(const Rcpp::List& l, const char* key, T fallback) {
  return l.containsElementNamed(key) && !Rf_isNull(l[key]) ? Rcpp::as<T>(l[key]) : fallback;
}

FlowConfig flow_config(const Rcpp::List& cfg, const Rcpp::NumericVector& times, int64_t dim, int64_t cond_dim) {
  // The text form is the single parser of method names, shared with model files.
  std::ostringstream os;
  os.precision(17);
  os << "path=" << get_or<std::string>(cfg, "path", "icfm") << "\n"
     << "sigma=" << get_or<double>(cfg, "sigma", 0.1) << "\n"
     << "sigma_min=" << get_or<double>(cfg, "sigma_min", 1e-4) << "\n"
     << "coupling=" << get_or<std::string>(cfg, "coupling", "independent") << "\n"
     << "ot_mode=" << get_or<std::string>(cfg, "ot_mode", "resample") << "\n"
     << "sinkhorn_reg=" << get_or<double>(cfg, "sinkhorn_reg", 0.0) << "\n"
     << "sinkhorn_iters=" << get_or<int>(cfg, "sinkhorn_iters", 200) << "\n"
     << "dim=" << dim << "\n"
     << "cond_dim=" << cond_dim << "\n"
     << "width=" << get_or<int>(cfg, "width", 64) << "\n"
     << "depth=" << get_or<int>(cfg, "depth", 3) << "\n"
     << "residual=" << (get_or<bool>(cfg, "residual", false) ? 1 : 0) << "\n"
     << "activation=" << get_or<std::string>(cfg, "activation", "selu") << "\n"
     << "time_dim=" << get_or<int>(cfg, "time_dim", 16) << "\n"
     << "fourier_features=" << get_or<int>(cfg, "fourier_features", 0) << "\n"
     << "fourier_scale=" << get_or<double>(cfg, "fourier_scale", 1.0) << "\n"
     << "times=";
  for (R_xlen_t i = 0; i < times.size(); ++i) os << (i ? "," : "") << times[i];
  os << "\n";
  return config_from_text(os.str());
}

TrainConfig train_config(const Rcpp::List& cfg) {
  TrainConfig t;
  t.steps = get_or<double>(cfg, "steps", 1000);
  t.batch_size = get_or<double>(cfg, "batch_size", 256);
  t.groups_per_step = get_or<double>(cfg, "groups_per_step", 1);
  t.lr = get_or<double>(cfg, "lr", 1e-3);
  t.weight_decay = get_or<double>(cfg, "weight_decay", 0.0);
  t.clip_norm = get_or<double>(cfg, "clip_norm", 0.0);
  t.ema_decay = get_or<double>(cfg, "ema_decay", 0.0);
  t.seed = static_cast<uint64_t>(get_or<double>(cfg, "seed", 1));
  t.threads = get_or<int>(cfg, "threads", 1);
  t.device = get_or<std::string>(cfg, "device", "cpu");
  t.time_limit_s = get_or<double>(cfg, "time_limit", 0.0);
  return t;
}

SolverConfig solver_config(const Rcpp::List& cfg) {
  static const std::map<std::string, SolverKind> kinds{{"euler", SolverKind::Euler},
                                                       {"heun", SolverKind::Heun},
                                                       {"midpoint", SolverKind::Midpoint},
                                                       {"rk4", SolverKind::RK4},
                                                       {"dopri5", SolverKind::Dopri5}};
  SolverConfig s;
  auto name = get_or<std::string>(cfg, "method", "dopri5");
  auto it = kinds.find(name);
  if (it == kinds.end()) throw std::invalid_argument("unknown solver '" + name + "'");
  s.kind = it->second;
  s.steps = get_or<double>(cfg, "steps", 20);
  s.atol = get_or<double>(cfg, "atol", 1e-5);
  s.rtol = get_or<double>(cfg, "rtol", 1e-5);
  s.max_steps = get_or<double>(cfg, "max_steps", 100000);
  s.chunk_size = get_or<double>(cfg, "chunk_size", 65536);
  return s;
}

Rcpp::RawVector to_raw(const std::string& s) {
  Rcpp::RawVector out(s.size());
  std::copy(s.begin(), s.end(), out.begin());
  return out;
}

std::string from_raw(const Rcpp::RawVector& r) { return std::string(r.begin(), r.end()); }

void finalize_model(std::shared_ptr<FlowModel>* p) { delete p; }
using ModelPtr = Rcpp::XPtr<std::shared_ptr<FlowModel>, Rcpp::PreserveStorage, finalize_model>;

std::shared_ptr<FlowModel> model_from(SEXP handle) {
  ModelPtr ptr(handle);
  if (ptr.get() == nullptr) throw std::invalid_argument("model handle is empty; reload the model");
  return *ptr;
}

}  // namespace

// [[Rcpp::export]]
Rcpp::List pf_fit(Rcpp::NumericMatrix x, Rcpp::IntegerVector time_index, Rcpp::NumericVector times,
                  Rcpp::IntegerVector group, Rcpp::Nullable<Rcpp::NumericMatrix> group_cond,
                  Rcpp::List config, Rcpp::Nullable<Rcpp::Function> progress, int progress_every) {
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
  torch::manual_seed(tc.seed);  // weight initialisation is part of the seeded run
  auto model = make_model(flow_config(config, times, x.ncol(), cond_dim), tc.device);

  bool user_interrupt = false;
  TrainCallbacks cb;
  cb.every = 1;
  cb.progress = [&](int64_t step, double loss) {
    try {
      Rcpp::checkUserInterrupt();
    } catch (const Rcpp::internal::InterruptedException&) {
      user_interrupt = true;
      return false;
    }
    // The R callback returns FALSE to stop (it turns a Ctrl-C during its own
    // evaluation into FALSE, so no R error unwinds through the training loop).
    if (progress.isNotNull() && (step % std::max(progress_every, 1) == 0 || step == tc.steps)) {
      SEXP keep_going = Rcpp::Function(progress.get())(static_cast<double>(step), loss);
      if (Rf_isLogical(keep_going) && Rf_length(keep_going) == 1 && LOGICAL(keep_going)[0] == FALSE) {
        user_interrupt = true;
        return false;
      }
    }
    return true;
  };
  TrainResult res = train(*model, data, tc, cb);
  return Rcpp::List::create(Rcpp::Named("bytes") = to_raw(save_model(*model)),
                            Rcpp::Named("loss") = Rcpp::wrap(res.loss),
                            Rcpp::Named("steps_done") = static_cast<double>(res.steps_done),
                            Rcpp::Named("status") = res.status,
                            Rcpp::Named("user_interrupt") = user_interrupt,
                            Rcpp::Named("seconds") = res.seconds);
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

// Re-saves a model's bytes with an opaque metadata block (R's own fields).
// [[Rcpp::export]]
Rcpp::RawVector pf_with_metadata(Rcpp::RawVector bytes, Rcpp::RawVector metadata) {
  PF_GUARD_BEGIN
  auto model = load_model(from_raw(bytes), "cpu");
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

// [[Rcpp::export]]
bool pf_handle_valid(SEXP handle) {
  return TYPEOF(handle) == EXTPTRSXP && R_ExternalPtrAddr(handle) != nullptr;
}

// [[Rcpp::export]]
std::string pf_model_config(Rcpp::RawVector bytes) {
  PF_GUARD_BEGIN
  return config_to_text(load_model(from_raw(bytes), "cpu")->config);
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

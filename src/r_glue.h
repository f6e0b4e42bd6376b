// Shared by the Rcpp glue: conversions between R matrices and tensors, and
// a guard that turns engine exceptions into plain R errors (no C++ backtrace).
#pragma once
#include <torch/torch.h>
#include <Rcpp.h>

#include <functional>
#include <map>
#include <sstream>
#include <string>

#include "core/config.h"
#include "core/config_text.h"
#include "core/model.h"
#include "core/model_file.h"
#include "core/trainer.h"

#define PF_GUARD_BEGIN try {
#define PF_GUARD_END                                             \
  }                                                              \
  catch (const c10::Error& e) {                                  \
    Rcpp::stop(std::string(e.what_without_backtrace()));         \
  }                                                              \
  catch (const Rcpp::internal::InterruptedException&) {          \
    throw;                                                       \
  }                                                              \
  catch (const std::exception& e) {                              \
    Rcpp::stop(std::string(e.what()));                           \
  }

namespace popflow_r {

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

// R list entries with fallbacks, and the engine configurations they describe.
template <typename T>
T get_or(const Rcpp::List& l, const char* key, T fallback) {
  return l.containsElementNamed(key) && !Rf_isNull(l[key]) ? Rcpp::as<T>(l[key]) : fallback;
}

inline popflow::FlowConfig flow_config(const Rcpp::List& cfg, const Rcpp::NumericVector& times, int64_t dim,
                                       int64_t cond_dim) {
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
  return popflow::flow_config_from_text(os.str());
}

inline popflow::TrainConfig train_config(const Rcpp::List& cfg) {
  popflow::TrainConfig t;
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

inline popflow::SolverConfig solver_config(const Rcpp::List& cfg) {
  using popflow::SolverKind;
  static const std::map<std::string, SolverKind> kinds{{"euler", SolverKind::Euler},
                                                       {"heun", SolverKind::Heun},
                                                       {"midpoint", SolverKind::Midpoint},
                                                       {"rk4", SolverKind::RK4},
                                                       {"dopri5", SolverKind::Dopri5}};
  popflow::SolverConfig s;
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

// Checkpoints every `checkpoint_every` steps to `checkpoint_file` (atomically:
// a reader never sees a half-written file); `save` turns a state into model bytes.
inline void add_checkpoints(popflow::TrainCallbacks& cb, const Rcpp::List& config,
                            std::function<std::string(const popflow::TrainState&)> save) {
  const auto path = get_or<std::string>(config, "checkpoint_file", "");
  const auto every = static_cast<int64_t>(get_or<double>(config, "checkpoint_every", 0));
  if (path.empty() || every <= 0) return;
  cb.checkpoint_every = every;
  cb.checkpoint = [path, save](int64_t, const popflow::TrainState& state) {
    popflow::write_file_atomic(path, save(state));
  };
}

inline Rcpp::List fit_result(const std::string& bytes, const popflow::TrainResult& res, bool interrupted) {
  return Rcpp::List::create(Rcpp::Named("bytes") = to_raw(bytes), Rcpp::Named("loss") = Rcpp::wrap(res.loss),
                            Rcpp::Named("steps_done") = static_cast<double>(res.steps_done),
                            Rcpp::Named("status") = res.status, Rcpp::Named("user_interrupt") = interrupted,
                            Rcpp::Named("seconds") = res.seconds);
}

}  // namespace popflow_r

#include "config_text.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <utility>

namespace popflow {
namespace {

// The names of one enum's values; `what` is also the key that holds it.
template <typename E>
struct MethodNames {
  const char* what;
  std::vector<std::pair<E, const char*>> names;
};

const MethodNames<PathKind>& method_names(PathKind) {
  static const MethodNames<PathKind> t{"path",
                                       {{PathKind::ICFM, "icfm"},
                                        {PathKind::SBCFM, "sbcfm"},
                                        {PathKind::TargetFM, "targetfm"},
                                        {PathKind::VPCosine, "vp_cosine"},
                                        {PathKind::VPLinear, "vp_linear"}}};
  return t;
}
const MethodNames<SourceKind>& method_names(SourceKind) {
  static const MethodNames<SourceKind> t{
      "source", {{SourceKind::Gaussian, "gaussian"}, {SourceKind::ZINB, "zinb"}, {SourceKind::Empirical, "empirical"}}};
  return t;
}
const MethodNames<CouplingKind>& method_names(CouplingKind) {
  static const MethodNames<CouplingKind> t{"coupling",
                                           {{CouplingKind::Independent, "independent"},
                                            {CouplingKind::ExactOT, "exact"},
                                            {CouplingKind::Sinkhorn, "sinkhorn"},
                                            {CouplingKind::Paired, "paired"},
                                            {CouplingKind::Unbalanced, "unbalanced"}}};
  return t;
}
const MethodNames<OTMode>& method_names(OTMode) {
  static const MethodNames<OTMode> t{"ot_mode", {{OTMode::Resample, "resample"}, {OTMode::Permutation, "permutation"}}};
  return t;
}
const MethodNames<OTSolver>& method_names(OTSolver) {
  static const MethodNames<OTSolver> t{"ot_solver", {{OTSolver::Exact, "exact"}, {OTSolver::Auction, "auction"}}};
  return t;
}
const MethodNames<Activation>& method_names(Activation) {
  static const MethodNames<Activation> t{"activation", {{Activation::SELU, "selu"}, {Activation::SiLU, "silu"}}};
  return t;
}
const MethodNames<SolverKind>& method_names(SolverKind) {
  static const MethodNames<SolverKind> t{"solver",
                                         {{SolverKind::Euler, "euler"},
                                          {SolverKind::Heun, "heun"},
                                          {SolverKind::Midpoint, "midpoint"},
                                          {SolverKind::RK4, "rk4"},
                                          {SolverKind::Dopri5, "dopri5"}}};
  return t;
}
const MethodNames<EncoderKind>& method_names(EncoderKind) {
  static const MethodNames<EncoderKind> t{
      "encoder", {{EncoderKind::GCN, "gcn"}, {EncoderKind::Mean, "mean"}, {EncoderKind::KME, "kme"}}};
  return t;
}
const MethodNames<DivergenceKind>& method_names(DivergenceKind) {
  static const MethodNames<DivergenceKind> t{
      "divergence",
      {{DivergenceKind::Auto, "auto"}, {DivergenceKind::Exact, "exact"}, {DivergenceKind::Hutchinson, "hutchinson"}}};
  return t;
}

const MethodNames<DistanceMetric>& method_names(DistanceMetric) {
  static const MethodNames<DistanceMetric> t{"metric",
                                             {{DistanceMetric::W1, "W1"},
                                              {DistanceMetric::W2, "W2"},
                                              {DistanceMetric::MMD, "MMD"},
                                              {DistanceMetric::Energy, "energy"}}};
  return t;
}

// "1,2.5,3" (values printed to round-trip doubles exactly).
template <typename T>
std::string joined(const std::vector<T>& values) {
  std::ostringstream os;
  os.precision(17);
  for (size_t i = 0; i < values.size(); ++i) os << (i ? "," : "") << values[i];
  return os.str();
}

}  // namespace

template <typename E>
const char* method_name(E value) {
  for (const auto& [v, name] : method_names(value).names)
    if (v == value) return name;
  throw std::invalid_argument(std::string("no name for this ") + method_names(value).what);
}

template <typename E>
E method_value(const std::string& name) {
  const auto& table = method_names(E{});
  std::string known;
  for (const auto& [v, n] : table.names) {
    if (name == n) return v;
    known += (known.empty() ? "" : ", ") + std::string(n);
  }
  throw std::invalid_argument(std::string("unknown ") + table.what + " '" + name + "' (one of " + known + ")");
}

#define POPFLOW_METHOD_NAMES(E)                  \
  template const char* method_name<E>(E value); \
  template E method_value<E>(const std::string& name);
POPFLOW_METHOD_NAMES(PathKind)
POPFLOW_METHOD_NAMES(SourceKind)
POPFLOW_METHOD_NAMES(CouplingKind)
POPFLOW_METHOD_NAMES(OTMode)
POPFLOW_METHOD_NAMES(OTSolver)
POPFLOW_METHOD_NAMES(Activation)
POPFLOW_METHOD_NAMES(SolverKind)
POPFLOW_METHOD_NAMES(EncoderKind)
POPFLOW_METHOD_NAMES(DivergenceKind)
POPFLOW_METHOD_NAMES(DistanceMetric)
#undef POPFLOW_METHOD_NAMES

// ---------------------------------------------------------------- ConfigText

ConfigText::ConfigText(const std::string& text, std::string what) : what_(std::move(what)) {
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos) throw std::runtime_error(what_ + ": malformed line '" + line + "'");
    const std::string key = line.substr(0, eq);
    if (!values_.emplace(key, line.substr(eq + 1)).second) throw error(key, "given twice");
  }
}

std::runtime_error ConfigText::error(const std::string& key, const std::string& problem) const {
  return std::runtime_error(what_ + ": '" + key + "' " + problem);
}

bool ConfigText::has(const std::string& key) const { return values_.count(key) > 0; }

const std::string& ConfigText::value(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw std::runtime_error(what_ + ": missing '" + key + "'");
  read_.insert(key);
  return it->second;
}

double ConfigText::parse_number(const std::string& text, const std::string& key) const {
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument("trailing characters");
    return v;
  } catch (const std::logic_error&) {
    throw std::runtime_error(what_ + ": bad number for '" + key + "'");
  }
}

double ConfigText::number(const std::string& key) const { return parse_number(value(key), key); }

int64_t ConfigText::count(const std::string& key, double lo, double hi) const {
  double v = number(key);
  if (!(v >= lo && v <= hi)) throw error(key, "out of range");
  return static_cast<int64_t>(v);
}

bool ConfigText::flag(const std::string& key) const { return count(key, 0, 1) == 1; }

uint64_t ConfigText::seed(const std::string& key) const {
  const std::string& text = value(key);
  // Digits only: read exactly (a double holds whole numbers up to 2^53 only).
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    errno = 0;
    const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
    if (errno == ERANGE) throw error(key, "out of range");
    return static_cast<uint64_t>(v);
  }
  const double v = parse_number(text, key);
  if (!(v >= 0 && v < 18446744073709551616.0) || v != static_cast<double>(static_cast<uint64_t>(v)))
    throw error(key, "must be a whole number >= 0");
  return static_cast<uint64_t>(v);
}

std::vector<double> ConfigText::numbers(const std::string& key) const {
  std::vector<double> out;
  std::istringstream items(value(key));
  std::string item;
  while (std::getline(items, item, ',')) out.push_back(parse_number(item, key));
  return out;
}

void ConfigText::reject_unknown_keys() const {
  for (const auto& kv : values_)
    if (!read_.count(kv.first)) throw error(kv.first, "is not a known setting");
}

// ---------------------------------------------------------------- FlowConfig

std::string flow_config_to_text(const FlowConfig& c) {
  TextWriter text;
  text
      .put("path", method_name(c.path.kind))
      .put("sigma", c.path.sigma)
      .put("sigma_min", c.path.sigma_min)
      .put("coupling", method_name(c.coupling.kind))
      .put("ot_mode", method_name(c.coupling.mode))
      .put("sinkhorn_reg", c.coupling.sinkhorn_reg)
      .put("sinkhorn_iters", c.coupling.sinkhorn_iters)
      .put("dim", c.network.dim)
      .put("cond_dim", c.network.cond_dim)
      .put("width", c.network.width)
      .put("depth", c.network.depth)
      .put("residual", c.network.residual ? 1 : 0)
      .put("activation", method_name(c.network.activation))
      .put("time_dim", c.network.time_dim)
      .put("fourier_features", c.network.fourier_features)
      .put("fourier_scale", c.network.fourier_scale)
      .put("times", joined(c.times));
  // A Gaussian source writes no keys: the text of such models is what it always was.
  if (c.source.kind != SourceKind::Gaussian)
    text.put("source", method_name(c.source.kind))
        .put("source_rows", c.source.rows)
        .put("source_size_factor", c.source.size_factor)
        .put("source_log_base", c.source.log_base);
  // Only the non-default OT solver is written, so other models' text is what it always was.
  if (c.coupling.solver != OTSolver::Exact) text.put("ot_solver", method_name(c.coupling.solver));
  // Only metric FM writes its keys, so other fits' text is what it always was.
  if (c.metric.enabled)
    text.put("metric", "land")
        .put("metric_bandwidth", c.metric.bandwidth)
        .put("metric_eps", c.metric.eps)
        .put("metric_cells", c.metric.cells)
        .put("interpolant_steps", c.metric.interpolant_steps);
  // Only unbalanced flows write these, so other models' text is what it always was.
  if (c.coupling.kind == CouplingKind::Unbalanced)
    text.put("unbalanced_reg", c.coupling.unbalanced_reg)
        .put("unbalanced_reg_m", c.coupling.unbalanced_reg_m)
        .put("growth_weight", c.coupling.growth_weight)
        .put("masses", joined(c.masses));
  return text.str();
}

FlowConfig flow_config_from_text(const std::string& text) {
  const ConfigText cfg(text, "model configuration");
  FlowConfig c;
  c.path.kind = cfg.method<PathKind>("path");
  c.path.sigma = cfg.number("sigma");
  c.path.sigma_min = cfg.number("sigma_min");
  c.coupling.kind = cfg.method<CouplingKind>("coupling");
  c.coupling.mode = cfg.method<OTMode>("ot_mode");
  if (cfg.has("ot_solver")) c.coupling.solver = cfg.method<OTSolver>("ot_solver");
  c.coupling.sinkhorn_reg = cfg.number("sinkhorn_reg");
  c.coupling.sinkhorn_iters = static_cast<int>(cfg.count("sinkhorn_iters", 1, 1e7));
  c.network.dim = cfg.count("dim", 1, 1e6);
  c.network.cond_dim = cfg.count("cond_dim", 0, 1e6);
  c.network.width = cfg.count("width", 1, 1e6);
  c.network.depth = cfg.count("depth", 1, 1e4);
  c.network.residual = cfg.flag("residual");
  c.network.activation = cfg.method<Activation>("activation");
  c.network.time_dim = cfg.count("time_dim", 0, 1e5);
  c.network.fourier_features = cfg.count("fourier_features", 0, 1e6);
  c.network.fourier_scale = cfg.number("fourier_scale");
  c.times = cfg.numbers("times");
  if (c.times.size() < 2) throw std::runtime_error("model configuration: fewer than two snapshot times");
  if (cfg.has("source")) {
    c.source.kind = cfg.method<SourceKind>("source");
    c.source.rows = cfg.count("source_rows", 0, 1e12);
    c.source.size_factor = cfg.number("source_size_factor");
    c.source.log_base = cfg.number("source_log_base");
  }
  if (cfg.has("metric")) {
    if (cfg.value("metric") != "land")
      throw std::runtime_error("model configuration: unknown metric '" + cfg.value("metric") + "'");
    c.metric.enabled = true;
    c.metric.bandwidth = cfg.number("metric_bandwidth");
    c.metric.eps = cfg.number("metric_eps");
    c.metric.cells = cfg.count("metric_cells", 0, 1e12);
    c.metric.interpolant_steps = cfg.count("interpolant_steps", 0, 1e12);
    if (!(c.metric.bandwidth >= 0) || !(c.metric.eps > 0))
      throw std::runtime_error("model configuration: metric_bandwidth must be >= 0 and metric_eps > 0");
  }
  if (c.coupling.kind == CouplingKind::Unbalanced) {
    c.coupling.unbalanced_reg = cfg.number("unbalanced_reg");
    c.coupling.unbalanced_reg_m = cfg.number("unbalanced_reg_m");
    c.coupling.growth_weight = cfg.number("growth_weight");
    c.masses = cfg.numbers("masses");
    if (!(c.coupling.unbalanced_reg > 0) || !(c.coupling.unbalanced_reg_m > 0) || !(c.coupling.growth_weight >= 0))
      throw std::runtime_error("model configuration: unbalanced_reg and unbalanced_reg_m must be > 0, "
                               "growth_weight >= 0");
    if (c.masses.size() != c.times.size())
      throw std::runtime_error("model configuration: one mass per snapshot time is needed");
    for (double m : c.masses)
      if (!(m > 0) || !std::isfinite(m)) throw std::runtime_error("model configuration: masses must be > 0");
  }
  c.network.growth = c.coupling.kind == CouplingKind::Unbalanced;
  cfg.reject_unknown_keys();
  return c;
}

// ---------------------------------------------------------------- PopulationConfig

std::string population_config_to_text(const PopulationConfig& c) {
  return TextWriter()
      .put("encoder", c.use_encoder ? method_name(c.encoder.kind) : "none")
      .put("layers", c.encoder.layers)
      .put("encoder_width", c.encoder.width)
      .put("bandwidth", c.encoder.bandwidth)
      .put("k", c.k)
      .put("max_cells", c.max_cells)
      .put("graph_seed", c.graph_seed)
      .put("label_levels", joined(c.label_levels))
      .put("label_dim", c.label_dim)
      .put("covariates", c.covariates)
      .put("schedule", c.alternating ? "alternating" : "joint")
      .put("encoder_lr", c.encoder_lr)
      .put("cells_per_population", c.cells_per_population)
      .put("populations_per_step", c.populations_per_step)
      .str();
}

PopulationConfig population_config_from_text(const std::string& text) {
  const ConfigText cfg(text, "population configuration");
  PopulationConfig c;
  c.use_encoder = cfg.value("encoder") != "none";
  if (c.use_encoder) c.encoder.kind = cfg.method<EncoderKind>("encoder");
  c.encoder.layers = cfg.count("layers", 1, 1e4);
  c.encoder.width = cfg.count("encoder_width", 1, 1e6);
  c.encoder.bandwidth = cfg.number("bandwidth");
  c.k = cfg.count("k", 0, 1e6);
  c.max_cells = cfg.count("max_cells", 0, 1e12);
  c.graph_seed = cfg.seed("graph_seed");
  for (double v : cfg.numbers("label_levels")) {
    if (!(v >= 1 && v <= 1e9)) throw cfg.error("label_levels", "out of range");
    c.label_levels.push_back(static_cast<int64_t>(v));
  }
  c.label_dim = cfg.count("label_dim", 1, 1e5);
  c.covariates = cfg.count("covariates", 0, 1e6);
  // Keys added later: files written before they existed lack them.
  const std::string schedule = cfg.has("schedule") ? cfg.value("schedule") : "joint";
  if (schedule != "joint" && schedule != "alternating")
    throw std::runtime_error("population configuration: unknown schedule '" + schedule + "'");
  c.alternating = schedule == "alternating";
  const double encoder_lr = cfg.has("encoder_lr") ? cfg.number("encoder_lr") : 0.0;
  if (c.alternating) c.encoder_lr = encoder_lr;  // a joint fit has no encoder rate of its own
  c.cells_per_population = cfg.has("cells_per_population") ? cfg.count("cells_per_population", 0, 1e12) : 0;
  c.populations_per_step = cfg.has("populations_per_step") ? cfg.count("populations_per_step", 0, 1e12) : 0;
  cfg.reject_unknown_keys();
  return c;
}

// ---------------------------------------------------------------- TrainConfig

std::string train_config_to_text(const TrainConfig& c) {
  return TextWriter()
      .put("steps", c.steps)
      .put("batch_size", c.batch_size)
      .put("groups_per_step", c.groups_per_step)
      .put("lr", c.lr)
      .put("weight_decay", c.weight_decay)
      .put("clip_norm", c.clip_norm)
      .put("ema_decay", c.ema_decay)
      .put("seed", c.seed)
      .put("threads", c.threads)
      .put("device", c.device)
      .put("time_limit", c.time_limit_s)
      .put("tf32", c.tf32 ? 1 : 0)
      .put("sync_every", c.sync_every)
      .put("accumulate", c.accumulate)
      .put("step_graph", c.step_graph ? 1 : 0)
      .str();
}

// Counts are checked for their type only (whole, >= 0); train() checks what they mean.
TrainConfig train_config_from_text(const std::string& text) {
  const ConfigText cfg(text, "training configuration");
  TrainConfig c;
  c.steps = cfg.count("steps", 0, 1e15);
  c.batch_size = cfg.count("batch_size", 0, 1e12);
  c.groups_per_step = cfg.count("groups_per_step", 0, 1e12);
  c.lr = cfg.number("lr");
  c.weight_decay = cfg.number("weight_decay");
  c.clip_norm = cfg.number("clip_norm");
  c.ema_decay = cfg.number("ema_decay");
  c.seed = cfg.seed("seed");
  c.threads = static_cast<int>(cfg.count("threads", 0, 1e6));
  c.device = cfg.value("device");
  c.time_limit_s = cfg.number("time_limit");
  c.tf32 = cfg.flag("tf32");
  c.sync_every = cfg.count("sync_every", 0, 1e12);
  c.accumulate = cfg.count("accumulate", 1, 1e6);
  c.step_graph = cfg.flag("step_graph");
  cfg.reject_unknown_keys();
  return c;
}

// ---------------------------------------------------------------- SolverConfig

std::string solver_config_to_text(const SolverConfig& c) {
  return TextWriter()
      .put("solver", method_name(c.kind))
      .put("steps", c.steps)
      .put("atol", c.atol)
      .put("rtol", c.rtol)
      .put("max_steps", c.max_steps)
      .put("chunk_size", c.chunk_size)
      .str();
}

SolverConfig solver_config_from_text(const std::string& text) {
  const ConfigText cfg(text, "solver configuration");
  SolverConfig c;
  c.kind = cfg.method<SolverKind>("solver");
  c.steps = cfg.count("steps", 0, 1e12);
  c.atol = cfg.number("atol");
  c.rtol = cfg.number("rtol");
  c.max_steps = cfg.count("max_steps", 0, 1e15);
  c.chunk_size = cfg.count("chunk_size", 0, 1e15);
  cfg.reject_unknown_keys();
  return c;
}

// ---------------------------------------------------------------- DensityConfig

std::string density_config_to_text(const DensityConfig& c) {
  return TextWriter().put("divergence", method_name(c.divergence)).put("probes", c.probes).put("seed", c.seed).str();
}

DensityConfig density_config_from_text(const std::string& text) {
  const ConfigText cfg(text, "density configuration");
  DensityConfig c;
  c.divergence = cfg.method<DivergenceKind>("divergence");
  c.probes = cfg.count("probes", 1, 1e6);
  c.seed = cfg.seed("seed");
  cfg.reject_unknown_keys();
  return c;
}

}  // namespace popflow

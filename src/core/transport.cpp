#include "transport.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "config_text.h"
#include "paths.h"
#include "threads.h"

namespace popflow {

std::vector<torch::Tensor> transport(const FlowModel& model, const torch::Tensor& x,
                                     const std::vector<double>& times, const torch::Tensor& cond,
                                     const SolverConfig& solver, int threads, OdeStats* stats,
                                     const OdeProgress& progress, std::vector<torch::Tensor>* log_mass) {
  const auto& net_cfg = model.config.network;
  if (x.dim() != 2 || x.size(1) != net_cfg.dim)
    throw std::invalid_argument("cells have " + std::to_string(x.dim() == 2 ? x.size(1) : -1) +
                                " features, the model expects " + std::to_string(net_cfg.dim));
  if (net_cfg.cond_dim > 0 && (!cond.defined() || cond.size(0) != x.size(0)))
    throw std::invalid_argument("the model needs one conditioning row per cell");
  ThreadScope thread_scope(threads);
  torch::NoGradGuard no_grad;
  VectorField net = model.net;  // a non-const handle on the shared module
  net->eval();
  const auto fopt = torch::TensorOptions().dtype(torch::kFloat).device(model.device);
  auto xd = x.to(fopt);
  auto cd = cond.defined() ? cond.to(fopt) : torch::Tensor();
  std::vector<double> model_times;
  for (double t : times) model_times.push_back(model.model_time(t));
  if (log_mass && !net->has_growth())
    throw std::invalid_argument("this flow has no growth rate: masses come only from unbalanced flows");
  const bool with_mass = log_mass != nullptr;
  const int64_t d = net_cfg.dim;
  // With masses, the state is [x, log m]: the solver integrates both.
  auto chunk_fn = [&](int64_t begin, int64_t end) -> VelocityFn {
    torch::Tensor c = cd.defined() ? cd.slice(0, begin, end) : torch::Tensor();
    return [net, c, with_mass, d](const torch::Tensor& xc, double t) mutable {
      auto tt = torch::full({xc.size(0)}, t, xc.options());
      if (!with_mass) return net->forward(xc, tt, c);
      auto cells = xc.slice(1, 0, d);
      return torch::cat({net->forward(cells, tt, c), net->growth(cells, tt, c).unsqueeze(1)}, 1);
    };
  };
  if (with_mass) xd = torch::cat({xd, torch::zeros({xd.size(0), 1}, fopt)}, 1);
  auto states = integrate(chunk_fn, xd, model_times, solver, stats, progress);
  if (with_mass) log_mass->clear();
  for (auto& s : states) {
    s = s.to(torch::kCPU, torch::kDouble);
    if (with_mass) {
      log_mass->push_back(s.select(1, d).contiguous());
      s = s.slice(1, 0, d).contiguous();
    }
  }
  return states;
}

LogDensity log_density(const FlowModel& model, const torch::Tensor& x, const SolverConfig& solver,
                       const DensityConfig& density, int threads, OdeStats* stats) {
  const auto& cfg = model.config;
  if (!gaussian_source(cfg.path.kind))
    throw std::invalid_argument(std::string("log-densities need a flow from a Gaussian source (targetfm, vp_cosine, "
                                            "vp_linear); this model's path is '") +
                                method_name(cfg.path.kind) + "', whose source density is not known");
  if (cfg.source.kind != SourceKind::Gaussian)
    throw std::invalid_argument(std::string("log-densities need a flow from a Gaussian source; this model's source is '") +
                                method_name(cfg.source.kind) + "', which has no density of continuous cells");
  if (cfg.times.size() != 2)
    throw std::invalid_argument("log-densities need a flow with one interval (noise to cells); this one has " +
                                std::to_string(cfg.times.size()) + " snapshot times");
  if (cfg.network.cond_dim > 0) throw std::invalid_argument("log-densities of conditioned flows are not supported");
  if (x.dim() != 2 || x.size(1) != cfg.network.dim)
    throw std::invalid_argument("cells have " + std::to_string(x.dim() == 2 ? x.size(1) : -1) +
                                " features, the model expects " + std::to_string(cfg.network.dim));
  ThreadScope thread_scope(threads);
  VectorField net = model.net;
  net->eval();
  const auto fopt = torch::TensorOptions().dtype(torch::kFloat).device(model.device);
  auto chunk_fn = [&](int64_t, int64_t) -> VelocityFn {
    return [net](const torch::Tensor& xc, double t) mutable {
      return net->forward(xc, torch::full({xc.size(0)}, t, xc.options()));
    };
  };
  // Cells sit at model time 1, the Gaussian source at 0.
  auto path = integrate_divergence(chunk_fn, x.to(fopt), 1.0, 0.0, solver, density, stats);
  auto x0 = path.x.to(torch::kCPU, torch::kDouble);
  auto div = path.divergence.to(torch::kCPU, torch::kDouble);
  const double d = static_cast<double>(cfg.network.dim);
  auto log_source = -0.5 * x0.pow(2).sum(1) - 0.5 * d * std::log(2 * M_PI);
  return {log_source + div, x0, div};
}

torch::Tensor draw_source(const FlowConfig& config, int64_t n, uint64_t seed) {
  if (!gaussian_source(config.path.kind))
    throw std::invalid_argument(std::string("only generative flows have a source to draw from; this model's path is '") +
                                method_name(config.path.kind) + "'");
  const std::string problem = source_problem(config.source, config.path.kind, config.network.dim);
  if (!problem.empty()) throw std::invalid_argument(problem);
  torch::manual_seed(seed);
  const auto opt = torch::TensorOptions().dtype(torch::kFloat).device(torch::kCPU);
  return SourceSampler(config.source, config.network.dim, opt).draw(n).to(torch::kDouble);
}

}  // namespace popflow

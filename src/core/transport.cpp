#include "transport.h"

#include <stdexcept>

#include "threads.h"

namespace popflow {

std::vector<torch::Tensor> transport(const FlowModel& model, const torch::Tensor& x,
                                     const std::vector<double>& times, const torch::Tensor& cond,
                                     const SolverConfig& solver, int threads, OdeStats* stats,
                                     const OdeProgress& progress) {
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
  auto chunk_fn = [&](int64_t begin, int64_t end) -> VelocityFn {
    torch::Tensor c = cd.defined() ? cd.slice(0, begin, end) : torch::Tensor();
    return [net, c](const torch::Tensor& xc, double t) mutable {
      auto tt = torch::full({xc.size(0)}, t, xc.options());
      return net->forward(xc, tt, c);
    };
  };
  auto states = integrate(chunk_fn, xd, model_times, solver, stats, progress);
  for (auto& s : states) s = s.to(torch::kCPU, torch::kDouble);
  return states;
}

}  // namespace popflow

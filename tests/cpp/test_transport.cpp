// Transport and log-densities of flow models (transport.h).
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "check.h"
#include "fixtures.h"
#include "model.h"
#include "transport.h"

using namespace popflow;
using namespace fixtures;

namespace {

std::shared_ptr<FlowModel> random_flow(int64_t dim, PathKind path, uint64_t seed) {
  torch::manual_seed(seed);
  FlowConfig cfg = small_flow(dim);
  cfg.network.width = 32;
  cfg.path.kind = path;
  return make_model(cfg, "cpu");
}

}  // namespace

TEST_CASE("log_density: the density of a 1-d flow integrates to one") {
  // A flow with random weights is still a diffeomorphism carrying N(0, 1) to
  // some density; its log-density on a fine grid must integrate to 1, and a
  // sign error in the divergence term would not.
  for (auto path : {PathKind::TargetFM, PathKind::VPCosine}) {
    auto model = random_flow(1, path, 17);
    const int64_t m = 4001;
    const double lo = -12, hi = 12, h = (hi - lo) / (m - 1);
    auto grid = torch::linspace(lo, hi, m, kD).unsqueeze(1);
    auto res = log_density(*model, grid, solver(SolverKind::Dopri5, 0, 1e-6), DensityConfig());
    const double mass = (res.log_density.exp().sum() * h).item<double>();
    PF_CHECK_NEAR(mass, 1.0, 2e-3);
    // The density is not the source's: the flow moved it.
    PF_CHECK(max_abs(res.log_density - (-0.5 * grid.squeeze(1).pow(2) - 0.5 * std::log(2 * M_PI))) > 0.05);
  }
}

TEST_CASE("log_density: the source point, the divergence and the flow agree") {
  auto model = random_flow(3, PathKind::TargetFM, 18);
  torch::manual_seed(19);
  auto x = torch::randn({200, 3}, kD) * 1.5;
  const SolverConfig tight = solver(SolverKind::Dopri5, 0, 1e-6);
  auto res = log_density(*model, x, tight, DensityConfig());
  PF_CHECK(res.log_density.size(0) == 200 && res.source.sizes() == x.sizes());
  auto log_source = -0.5 * res.source.pow(2).sum(1) - 1.5 * std::log(2 * M_PI);
  PF_CHECK_NEAR(max_abs(res.log_density - log_source - res.divergence), 0.0, 1e-9);
  // Carried forward from its source point, each cell comes back.
  auto forward = transport(*model, res.source, {0.0, 1.0}, torch::Tensor(), tight);
  PF_CHECK_NEAR(max_abs(forward[1] - x), 0.0, 1e-3);  // float32, two adaptive solves
  // Hutchinson's estimate agrees with the exact divergence on average, and closely with many probes.
  DensityConfig hutch;
  hutch.divergence = DivergenceKind::Hutchinson;
  hutch.probes = 2;
  auto few = log_density(*model, x, tight, hutch);
  const double spread = (few.log_density - res.log_density).std().item<double>();
  PF_CHECK(spread > 1e-4);  // an estimate, not the exact value
  PF_CHECK_NEAR((few.log_density - res.log_density).mean().item<double>(), 0.0, 4 * spread / std::sqrt(200.0));
  hutch.probes = 64;
  auto many = log_density(*model, x, tight, hutch);
  PF_CHECK_LE((many.log_density - res.log_density).std().item<double>(), 0.4 * spread);
  // "auto" with at least 3 probes is the exact divergence.
  DensityConfig automatic;
  automatic.probes = 3;
  PF_CHECK_NEAR(max_abs(log_density(*model, x, tight, automatic).log_density - res.log_density), 0.0, 1e-9);
}

TEST_CASE("log_density: refuses flows without a Gaussian source or with several intervals") {
  auto x = torch::randn({5, 2}, kD);
  auto icfm = random_flow(2, PathKind::ICFM, 20);
  std::string msg = thrown_message([&] { log_density(*icfm, x, solver(SolverKind::RK4), DensityConfig()); });
  PF_CHECK_MSG(msg.find("path is 'icfm'") != std::string::npos, msg);
  auto three = random_flow(2, PathKind::TargetFM, 21);
  three->config.times = {0.0, 1.0, 2.0};
  msg = thrown_message([&] { log_density(*three, x, solver(SolverKind::RK4), DensityConfig()); });
  PF_CHECK_MSG(msg.find("3 snapshot times") != std::string::npos, msg);
  auto model = random_flow(2, PathKind::VPLinear, 22);
  msg = thrown_message([&] {
    log_density(*model, torch::randn({5, 3}, kD), solver(SolverKind::RK4), DensityConfig());
  });
  PF_CHECK_MSG(msg.find("3 features, the model expects 2") != std::string::npos, msg);
}

// Plain configuration structs shared by the engine. No torch, no R.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace popflow {

// Probability path and regression target (DESIGN.md, "The methods").
enum class PathKind { ICFM, SBCFM, TargetFM };
// How (x0, x1) pairs are formed within a minibatch.
enum class CouplingKind { Independent, ExactOT, Sinkhorn };
// Exact OT: draw pairs from the plan, or use the plan as a permutation.
enum class OTMode { Resample, Permutation };
enum class Activation { SELU, SiLU };
enum class SolverKind { Euler, Heun, Midpoint, RK4, Dopri5 };

struct PathConfig {
  PathKind kind = PathKind::ICFM;
  double sigma = 0.1;       // noise level (ICFM constant, SBCFM bridge scale)
  double sigma_min = 1e-4;  // TargetFM end-point width
};

struct CouplingConfig {
  CouplingKind kind = CouplingKind::Independent;
  OTMode mode = OTMode::Resample;
  double sinkhorn_reg = 0.0;  // 0 = use 2 sigma^2 (the SB-CFM choice)
  int sinkhorn_iters = 200;
};

struct NetworkConfig {
  int64_t dim = 2;            // feature dimension of cells
  int64_t cond_dim = 0;       // extra conditioning inputs appended
  int64_t width = 64;
  int64_t depth = 3;          // hidden layers (MLP) or residual blocks
  bool residual = false;
  Activation activation = Activation::SELU;
  int64_t time_dim = 16;      // sinusoidal time embedding size (even); 0 = raw t
  int64_t fourier_features = 0;  // random Fourier features of x (even); 0 = none
  double fourier_scale = 1.0;
};

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 256;      // cells per (interval, group) block
  int64_t groups_per_step = 1;   // groups drawn per interval and step
  double lr = 1e-3;
  double weight_decay = 0.0;
  double clip_norm = 0.0;        // 0 = no clipping
  double ema_decay = 0.0;        // 0 = no moving average
  uint64_t seed = 1;
  int threads = 1;
  std::string device = "cpu";
  double time_limit_s = 0.0;     // 0 = none
  bool resume = false;           // continue from the model's saved training state
};

struct SolverConfig {
  SolverKind kind = SolverKind::Dopri5;
  int64_t steps = 20;            // fixed-step solvers: steps over [t0, t1]
  double atol = 1e-5;
  double rtol = 1e-5;
  int64_t max_steps = 100000;    // adaptive solver safeguard
  int64_t chunk_size = 65536;    // cells integrated at once
};

struct FlowConfig {
  PathConfig path;
  CouplingConfig coupling;
  NetworkConfig network;
  std::vector<double> times{0.0, 1.0};  // snapshot times (model time = normalised)
};

}  // namespace popflow

// Plain configuration structs shared by the engine. No torch, no R.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace popflow {

// Probability path and regression target (paths.h; docs/architecture.md).
// TargetFM and the variance-preserving (diffusion) paths start from a
// standard Gaussian at t = 0; VPCosine and VPLinear differ in noise schedule.
enum class PathKind { ICFM, SBCFM, TargetFM, VPCosine, VPLinear };
// How (x0, x1) pairs are formed within a minibatch. Paired: source row i and
// target row i are the same cell or particle (denoising, simulations, lineage
// tracing), so a minibatch takes the same row positions on both sides.
// Unbalanced: entropic OT with KL-relaxed marginals between snapshots of
// different mass (cells proliferate and die); the flow also learns a growth rate.
enum class CouplingKind { Independent, ExactOT, Sinkhorn, Paired, Unbalanced };
// Exact OT: draw pairs from the plan, or use the plan as a permutation.
enum class OTMode { Resample, Permutation };
// Exact OT between equal batches (an assignment): Exact, on the CPU (an
// epsilon-scaling auction for the prices, then Jonker-Volgenant to the exact
// optimum); Auction, in tensor ops on the batch's device (Jacobi auction with
// epsilon scaling; its mean cost per cell is within 1e-3 x the mean pairwise
// cost of the optimum). Unequal batches always use the exact network simplex.
enum class OTSolver { Exact, Auction };
enum class Activation { SELU, SiLU };
enum class SolverKind { Euler, Heun, Midpoint, RK4, Dopri5 };
// Population encoders (encoders.h).
enum class EncoderKind { GCN, Mean, KME };
// Divergence of the velocity field in log-densities (ode.h): exact (one
// vector-Jacobian product per dimension), Hutchinson's estimator (one per
// probe), or Auto: exact when the dimension is at most the number of probes.
enum class DivergenceKind { Auto, Exact, Hutchinson };
// Distances between cell sets (metrics.h), as validation scores them (validation.h).
enum class DistanceMetric { W1, W2, MMD, Energy };

// Where a generative path (TargetFM, VP) draws its x0 (paths.h SourceSampler):
// a standard Gaussian, a zero-inflated negative binomial per feature whose
// counts c become log(c / size_factor + 1) / log(log_base) (log_base 0: c /
// size_factor), or given cells drawn with replacement.
enum class SourceKind { Gaussian, ZINB, Empirical };

struct SourceConfig {
  SourceKind kind = SourceKind::Gaussian;
  // rows x dim, row-major: ZINB 3 rows (mu, theta, pi per feature), empirical
  // one row per cell. Saved as a block of the model file, not as text.
  int64_t rows = 0;
  std::vector<double> values;
  double size_factor = 1.0;
  double log_base = 0.0;
};

struct PathConfig {
  PathKind kind = PathKind::ICFM;
  double sigma = 0.1;       // noise level (ICFM constant, SBCFM bridge scale)
  double sigma_min = 1e-4;  // TargetFM end-point width
};

struct CouplingConfig {
  CouplingKind kind = CouplingKind::Independent;
  OTMode mode = OTMode::Resample;
  OTSolver solver = OTSolver::Exact;
  double sinkhorn_reg = 0.0;  // 0 = use 2 sigma^2 (the SB-CFM choice)
  int sinkhorn_iters = 200;
  // Unbalanced coupling: entropic and marginal-relaxation strengths, both in
  // units of the minibatch's mean squared distance (so they do not depend on
  // the data's scale), and the weight of the growth-rate loss.
  double unbalanced_reg = 0.05;
  double unbalanced_reg_m = 1.0;
  double growth_weight = 1.0;
};

// Metric flow matching (Kapusniak et al. 2024; metric_path.h): the path
// bends towards the data by a learnt interpolant phi, trained for the first
// interpolant_steps steps to minimise the kinetic energy under the LAND
// metric of each interval's cells (`cells` of them at most; 0: all); the
// remaining steps regress the velocity along it. bandwidth 0: from the data;
// eps: relative to the metric's typical value on the cells (land_scale()).
struct MetricConfig {
  bool enabled = false;
  double bandwidth = 0.0;
  double eps = 1e-2;
  int64_t cells = 2000;
  int64_t interpolant_steps = 500;
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
  bool growth = false;        // a growth-rate head g(x, t | c) beside the velocity (unbalanced flows)
};

struct TrainConfig {
  int64_t steps = 1000;
  // Flow models only; population models sample by their PopulationConfig.
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
  // TF32 matrix products on the GPU (device.h); no effect on CPU.
  bool tf32 = false;
  // Steps between the host's reads of the loss and finiteness checks: 1 =
  // every step; more lets a GPU run ahead of the host (the checks then run on
  // the device, and a non-finite step is undone as it would be at once);
  // 0 = automatic (1 on CPU, 25 on a GPU).
  int64_t sync_every = 0;
  // Steps from buffers that keep their storage, on a GPU captured once as a
  // CUDA graph and replayed (step_graph.h): for objectives that can stage
  // their draws (population models with the joint schedule), with
  // sync_every > 1, one process and no accumulation; elsewhere, or when
  // capture fails, steps run as usual (TrainResult::step_graph says which).
  bool step_graph = false;
  bool resume = false;           // continue from the model's saved training state
  // Minibatches drawn per step (per process, in data-parallel training) whose
  // gradients are averaged: a larger batch in the memory of one (trainer.h).
  int64_t accumulate = 1;
};

struct SolverConfig {
  SolverKind kind = SolverKind::Dopri5;
  int64_t steps = 20;            // fixed-step solvers: steps over [t0, t1]
  double atol = 1e-5;
  double rtol = 1e-5;
  int64_t max_steps = 100000;    // adaptive solver safeguard
  int64_t chunk_size = 65536;    // cells integrated at once
};

// Log-densities by the instantaneous change of variables (ode.h, transport.h).
struct DensityConfig {
  DivergenceKind divergence = DivergenceKind::Auto;
  int64_t probes = 16;  // Hutchinson: Rademacher probes, fixed along each trajectory
  uint64_t seed = 1;    // of the probes
};

struct FlowConfig {
  PathConfig path;
  CouplingConfig coupling;
  NetworkConfig network;
  std::vector<double> times{0.0, 1.0};  // snapshot times (model time = normalised)
  SourceConfig source;                  // generative paths only
  MetricConfig metric;                  // metric FM only (enabled = false otherwise)
  // Unbalanced flows: the relative mass of each snapshot (one per time; empty
  // otherwise). A snapshot's mass is spread evenly over its cells.
  std::vector<double> masses;
};

struct EncoderConfig {
  EncoderKind kind = EncoderKind::GCN;
  int64_t dim = 2;         // cell features
  int64_t layers = 3;      // GCN / mean: linear layers
  int64_t width = 64;      // GCN / mean: layer width; KME: random features (even)
  double bandwidth = 1.0;  // KME: RBF kernel length scale
  int64_t output_size() const { return width; }
};

// Population models (population_model.h): MFM conditions the field on an
// embedding of the source population, CGFM on the population's labels.
struct PopulationConfig {
  bool use_encoder = true;            // false: CGFM (labels only)
  EncoderConfig encoder;              // encoder.dim follows the cells' dimension
  int64_t k = 50;                     // kNN graph (GCN only; mean and KME use none)
  int64_t max_cells = 2000;           // cells per population used for its embedding; 0 = all
  uint64_t graph_seed = 1;            // subsample of populations larger than max_cells
  std::vector<int64_t> label_levels;  // per categorical label: number of values
  int64_t label_dim = 8;              // embedding size of each categorical label
  int64_t covariates = 0;             // numeric labels, used as they are
  // "joint": field and encoder take one optimiser step together. "alternating"
  // (the reference's letters training): odd steps update the field and label
  // embeddings on cached, detached population embeddings; even steps update
  // only the encoder, with its own Adam (learning rate encoder_lr; 0 = the
  // training rate), and refresh the cache.
  bool alternating = false;
  double encoder_lr = 0;
  // Each training step draws populations_per_step populations and
  // cells_per_population source and target cells from each (0 in a model
  // file written before they were recorded: set them before training).
  int64_t cells_per_population = 700;
  int64_t populations_per_step = 10;
  // Width of the field's conditioning input.
  int64_t cond_dim() const {
    return (use_encoder ? encoder.output_size() : 0) + static_cast<int64_t>(label_levels.size()) * label_dim +
           covariates;
  }
  // The graph degree actually used (0 for encoders that ignore the graph).
  int64_t graph_k() const { return use_encoder && encoder.kind == EncoderKind::GCN ? k : 0; }
};

}  // namespace popflow

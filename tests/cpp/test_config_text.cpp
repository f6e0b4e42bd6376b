// The "key=value" configuration text (config_text.h): round trips, method
// names, and the readers' refusal of missing, unknown and repeated keys.
#include <algorithm>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "check.h"
#include "config_text.h"

using namespace popflow;
using check::thrown_message;

namespace {

// The keys of a text block, in order.
std::vector<std::string> keys_of(const std::string& text) {
  std::vector<std::string> keys;
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line)) keys.push_back(line.substr(0, line.find('=')));
  return keys;
}

// `text` without the line of `key`.
std::string without_key(const std::string& text, const std::string& key) {
  std::string out;
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line))
    if (line.rfind(key + "=", 0) != 0) out += line + "\n";
  return out;
}

TrainConfig unusual_training() {
  TrainConfig c;
  c.steps = 1234;
  c.batch_size = 77;
  c.groups_per_step = 3;
  c.lr = 0.000123456789012345;
  c.weight_decay = 1e-5;
  c.clip_norm = 2.5;
  c.ema_decay = 0.999;
  c.seed = std::numeric_limits<uint64_t>::max();  // beyond a double's whole numbers
  c.threads = 4;
  c.device = "cuda:1";
  c.time_limit_s = 36.5;
  c.tf32 = true;
  c.sync_every = 7;
  c.accumulate = 3;
  c.step_graph = true;
  return c;
}

// What a model file of the current format holds (written by popflow before
// the population sampling sizes were recorded).
const char* kFlowText =
    "path=sbcfm\nsigma=0.37\nsigma_min=0.0001\ncoupling=exact\not_mode=permutation\nsinkhorn_reg=0\n"
    "sinkhorn_iters=200\ndim=3\ncond_dim=0\nwidth=16\ndepth=2\nresidual=1\nactivation=silu\ntime_dim=16\n"
    "fourier_features=4\nfourier_scale=0.69999999999999996\ntimes=0,1.5,2.25\n";
const char* kPopulationText =
    "encoder=gcn\nlayers=2\nencoder_width=16\nbandwidth=1\nk=10\nmax_cells=2000\ngraph_seed=1\nlabel_levels=2,3\n"
    "label_dim=8\ncovariates=1\nschedule=alternating\nencoder_lr=0.002\n";

}  // namespace

TEST_CASE("config_text: training settings round-trip under their documented keys") {
  const TrainConfig c = unusual_training();
  const std::string text = train_config_to_text(c);
  PF_CHECK((keys_of(text) == std::vector<std::string>{"steps", "batch_size", "groups_per_step", "lr", "weight_decay",
                                                       "clip_norm", "ema_decay", "seed", "threads", "device",
                                                       "time_limit", "tf32", "sync_every", "accumulate",
                                                       "step_graph"}));
  const TrainConfig back = train_config_from_text(text);
  PF_CHECK(back.steps == c.steps && back.batch_size == c.batch_size && back.groups_per_step == c.groups_per_step);
  PF_CHECK(back.lr == c.lr && back.weight_decay == c.weight_decay && back.clip_norm == c.clip_norm);
  PF_CHECK(back.ema_decay == c.ema_decay && back.seed == c.seed && back.threads == c.threads);
  PF_CHECK(back.device == c.device && back.time_limit_s == c.time_limit_s && !back.resume);
  PF_CHECK(back.tf32 == c.tf32 && back.sync_every == c.sync_every && back.accumulate == c.accumulate);
  PF_CHECK(back.step_graph == c.step_graph);
  PF_CHECK(train_config_to_text(back) == text);
  // A seed as R formats a large double reads too.
  PF_CHECK(train_config_from_text(without_key(text, "seed") + "seed=1e+06\n").seed == 1000000u);
  PF_CHECK_THROWS_AS(train_config_from_text(without_key(text, "seed") + "seed=1.5\n"), std::runtime_error);
  PF_CHECK_THROWS_AS(train_config_from_text(without_key(text, "seed") + "seed=-1\n"), std::runtime_error);
}

TEST_CASE("config_text: solver settings round-trip under their documented keys, every solver") {
  for (auto kind : {SolverKind::Euler, SolverKind::Heun, SolverKind::Midpoint, SolverKind::RK4, SolverKind::Dopri5}) {
    SolverConfig c;
    c.kind = kind;
    c.steps = 17;
    c.atol = 1.5e-7;
    c.rtol = 2.5e-6;
    c.max_steps = 4321;
    c.chunk_size = 999;
    const std::string text = solver_config_to_text(c);
    PF_CHECK((keys_of(text) ==
              std::vector<std::string>{"solver", "steps", "atol", "rtol", "max_steps", "chunk_size"}));
    const SolverConfig back = solver_config_from_text(text);
    PF_CHECK(back.kind == c.kind && back.steps == c.steps && back.atol == c.atol && back.rtol == c.rtol);
    PF_CHECK(back.max_steps == c.max_steps && back.chunk_size == c.chunk_size);
    PF_CHECK(solver_config_to_text(back) == text);
  }
  PF_CHECK(solver_config_to_text(SolverConfig()).rfind("solver=dopri5\n", 0) == 0);
  const std::string msg = thrown_message([] {
    solver_config_from_text("solver=rk5\nsteps=1\natol=1\nrtol=1\nmax_steps=1\nchunk_size=1\n");
  });
  PF_CHECK_MSG(msg.find("rk5") != std::string::npos && msg.find("dopri5") != std::string::npos, msg);
}

TEST_CASE("config_text: a missing key is refused, naming the key and the block") {
  struct Block {
    std::string text, what;
    std::function<void(const std::string&)> read;
    std::vector<std::string> optional;  // keys older model files lack
  };
  const std::vector<Block> blocks{
      {flow_config_to_text(FlowConfig()), "model configuration", [](const std::string& t) { flow_config_from_text(t); }, {}},
      {population_config_to_text(PopulationConfig()), "population configuration",
       [](const std::string& t) { population_config_from_text(t); },
       {"schedule", "encoder_lr", "cells_per_population", "populations_per_step"}},
      {train_config_to_text(TrainConfig()), "training configuration",
       [](const std::string& t) { train_config_from_text(t); }, {}},
      {solver_config_to_text(SolverConfig()), "solver configuration",
       [](const std::string& t) { solver_config_from_text(t); }, {}}};
  for (const auto& b : blocks) {
    b.read(b.text);  // complete: reads
    for (const std::string& key : keys_of(b.text)) {
      const std::string msg = thrown_message([&] { b.read(without_key(b.text, key)); });
      if (std::find(b.optional.begin(), b.optional.end(), key) != b.optional.end()) {
        PF_CHECK_MSG(msg.empty(), key << ": " << msg);
        continue;
      }
      PF_CHECK_MSG(msg.find("missing '" + key + "'") != std::string::npos && msg.find(b.what) != std::string::npos,
                   key << ": " << msg);
      PF_CHECK_THROWS_AS(b.read(without_key(b.text, key)), std::runtime_error);
    }
  }
}

TEST_CASE("config_text: an unknown or repeated key is refused, naming the key and the block") {
  const std::string train = train_config_to_text(TrainConfig());
  std::string msg = thrown_message([&] { train_config_from_text(train + "stpes=10\n"); });
  PF_CHECK_MSG(msg.find("'stpes'") != std::string::npos && msg.find("training configuration") != std::string::npos,
               msg);
  PF_CHECK_THROWS_AS(train_config_from_text(train + "stpes=10\n"), std::runtime_error);
  msg = thrown_message([&] { solver_config_from_text(solver_config_to_text(SolverConfig()) + "method=rk4\n"); });
  PF_CHECK_MSG(msg.find("'method'") != std::string::npos && msg.find("solver configuration") != std::string::npos,
               msg);
  msg = thrown_message([] { flow_config_from_text(flow_config_to_text(FlowConfig()) + "widht=8\n"); });
  PF_CHECK_MSG(msg.find("'widht'") != std::string::npos && msg.find("model configuration") != std::string::npos, msg);
  msg = thrown_message([] { population_config_from_text(population_config_to_text(PopulationConfig()) + "kk=3\n"); });
  PF_CHECK_MSG(msg.find("'kk'") != std::string::npos && msg.find("population configuration") != std::string::npos,
               msg);
  msg = thrown_message([&] { train_config_from_text(train + "lr=0.1\n"); });
  PF_CHECK_MSG(msg.find("'lr'") != std::string::npos && msg.find("twice") != std::string::npos, msg);
  PF_CHECK_THROWS_AS(train_config_from_text(train + "no equals sign\n"), std::runtime_error);
  msg = thrown_message([&] { train_config_from_text(without_key(train, "steps") + "steps=ten\n"); });
  PF_CHECK_MSG(msg.find("'steps'") != std::string::npos, msg);
}

TEST_CASE("config_text: today's model-file configuration text still reads") {
  const FlowConfig flow = flow_config_from_text(kFlowText);
  PF_CHECK(flow.path.kind == PathKind::SBCFM && flow.coupling.kind == CouplingKind::ExactOT);
  PF_CHECK(flow.coupling.mode == OTMode::Permutation && flow.network.activation == Activation::SiLU);
  PF_CHECK(flow.network.residual && flow.network.fourier_scale == 0.7);
  PF_CHECK((flow.times == std::vector<double>{0.0, 1.5, 2.25}));
  PF_CHECK(flow_config_to_text(flow) == kFlowText);
  // Without the population sampling sizes: read as 0 ("not recorded").
  const PopulationConfig population = population_config_from_text(kPopulationText);
  PF_CHECK(population.use_encoder && population.encoder.kind == EncoderKind::GCN);
  PF_CHECK(population.encoder.layers == 2 && population.encoder.width == 16 && population.k == 10);
  PF_CHECK((population.label_levels == std::vector<int64_t>{2, 3}) && population.covariates == 1);
  PF_CHECK(population.alternating && population.encoder_lr == 0.002);
  PF_CHECK(population.cells_per_population == 0 && population.populations_per_step == 0);
  PF_CHECK(population_config_to_text(population).rfind(kPopulationText, 0) == 0);
  // The sizes round-trip once recorded.
  PopulationConfig sized = population;
  sized.cells_per_population = 64;
  sized.populations_per_step = 4;
  const PopulationConfig back = population_config_from_text(population_config_to_text(sized));
  PF_CHECK(back.cells_per_population == 64 && back.populations_per_step == 4);
  // A CGFM configuration ("none") and an older file without the schedule keys.
  const std::string cgfm = without_key(without_key(kPopulationText, "schedule"), "encoder_lr");
  PopulationConfig labels_only = population_config_from_text("encoder=none" + cgfm.substr(cgfm.find('\n')));
  PF_CHECK(!labels_only.use_encoder && !labels_only.alternating && labels_only.encoder_lr == 0);
}

TEST_CASE("config_text: the OT solver is written only when not the default, and round-trips") {
  FlowConfig flow = flow_config_from_text(kFlowText);
  PF_CHECK(flow.coupling.solver == OTSolver::Exact);
  flow.coupling.solver = OTSolver::Auction;
  const std::string text = flow_config_to_text(flow);
  PF_CHECK_MSG(text.find("ot_solver=auction\n") != std::string::npos, text);
  PF_CHECK(flow_config_from_text(text).coupling.solver == OTSolver::Auction);
  PF_CHECK(flow_config_from_text(std::string(kFlowText) + "ot_solver=exact\n").coupling.solver == OTSolver::Exact);
  const std::string msg = thrown_message([] { flow_config_from_text(std::string(kFlowText) + "ot_solver=simplex\n"); });
  PF_CHECK_MSG(msg.find("'simplex'") != std::string::npos && msg.find("exact, auction") != std::string::npos, msg);
}

TEST_CASE("config_text: method names map both ways, unknown names list the known ones") {
  for (auto v : {PathKind::ICFM, PathKind::SBCFM, PathKind::TargetFM, PathKind::VPCosine, PathKind::VPLinear})
    PF_CHECK(method_value<PathKind>(method_name(v)) == v);
  for (auto v : {DivergenceKind::Auto, DivergenceKind::Exact, DivergenceKind::Hutchinson})
    PF_CHECK(method_value<DivergenceKind>(method_name(v)) == v);
  for (auto v : {CouplingKind::Independent, CouplingKind::ExactOT, CouplingKind::Sinkhorn, CouplingKind::Paired})
    PF_CHECK(method_value<CouplingKind>(method_name(v)) == v);
  for (auto v : {OTMode::Resample, OTMode::Permutation}) PF_CHECK(method_value<OTMode>(method_name(v)) == v);
  for (auto v : {OTSolver::Exact, OTSolver::Auction}) PF_CHECK(method_value<OTSolver>(method_name(v)) == v);
  for (auto v : {Activation::SELU, Activation::SiLU}) PF_CHECK(method_value<Activation>(method_name(v)) == v);
  for (auto v : {SolverKind::Euler, SolverKind::Heun, SolverKind::Midpoint, SolverKind::RK4, SolverKind::Dopri5})
    PF_CHECK(method_value<SolverKind>(method_name(v)) == v);
  for (auto v : {EncoderKind::GCN, EncoderKind::Mean, EncoderKind::KME})
    PF_CHECK(method_value<EncoderKind>(method_name(v)) == v);
  for (auto v : {DistanceMetric::W1, DistanceMetric::W2, DistanceMetric::MMD, DistanceMetric::Energy})
    PF_CHECK(method_value<DistanceMetric>(method_name(v)) == v);
  PF_CHECK(std::string(method_name(CouplingKind::Paired)) == "paired");
  PF_CHECK(std::string(method_name(CouplingKind::ExactOT)) == "exact");
  const std::string msg = thrown_message([] { method_value<EncoderKind>("gnn"); });
  PF_CHECK_MSG(msg.find("'gnn'") != std::string::npos && msg.find("gcn, mean, kme") != std::string::npos, msg);
  PF_CHECK_THROWS_AS(method_value<PathKind>("ICFM"), std::invalid_argument);
  const std::string metric = thrown_message([] { method_value<DistanceMetric>("W3"); });
  PF_CHECK_MSG(metric.find("unknown metric 'W3'") != std::string::npos &&
                   metric.find("W1, W2, MMD, energy") != std::string::npos,
               metric);
}

TEST_CASE("config_text: density settings round-trip; missing, unknown and bad keys are errors") {
  DensityConfig c;
  c.divergence = DivergenceKind::Hutchinson;
  c.probes = 7;
  c.seed = 12345678901234ULL;
  const std::string text = density_config_to_text(c);
  PF_CHECK(text == "divergence=hutchinson\nprobes=7\nseed=12345678901234\n");
  const DensityConfig back = density_config_from_text(text);
  PF_CHECK(back.divergence == c.divergence && back.probes == 7 && back.seed == c.seed);
  PF_CHECK(thrown_message([] { density_config_from_text("divergence=exact\nprobes=4\n"); }).find("missing 'seed'") !=
           std::string::npos);
  PF_CHECK(thrown_message([] {
             density_config_from_text("divergence=exact\nprobes=4\nseed=1\nprobe=2\n");
           }).find("'probe' is not a known setting") != std::string::npos);
  PF_CHECK(thrown_message([] {
             density_config_from_text("divergence=exact\nprobes=0\nseed=1\n");
           }).find("'probes' out of range") != std::string::npos);
  const std::string msg = thrown_message([] { density_config_from_text("divergence=trace\nprobes=4\nseed=1\n"); });
  PF_CHECK_MSG(msg.find("auto, exact, hutchinson") != std::string::npos, msg);
}

// popflow_letters: the letters benchmark (the Meta Flow Matching paper's
// synthetic task) without R, for GPU sessions: reads populations from a CSV,
// trains MFM, CGFM, FM and ICNN models on the training populations, transports every
// test population's source cells and scores the prediction against its target
// cells with the engine's exact W1, W2 and MMD (whole populations unless
// --eval-cells). Prints one JSON line for the configuration, one per (model,
// population) and one summary per model (mean scores, wall time, steps/s).
//
// CSV: a header, then one row per cell with its source and target side by side
// (paired data: row i's source and target are the same particle). No quoting
// beyond surrounding double quotes on a field; no commas inside fields.
//   population,split,sx,sy,tx,ty
//   A_1,train,0.512,-1.204,0.331,-0.874
// population: any name; split: train, val or test (one split per population);
// then the source features (columns named s...) and as many target features
// (columns named t...), in the same feature order.
//
// Models (--models, comma-separated):
//   mfm_gcn_k50   MFM, GCN encoder on the k-nearest-neighbour graph (any k: mfm_gcn_k10)
//   mfm_mean      MFM, mean (DeepSets) encoder, no graph; mfm_kme: kernel mean embedding
//   cgfm          one learnt embedding per training population (a label with one value per
//                 population); unseen populations get the mean embedding, as bench/letters.R
//   fm            a population-blind flow, trained within populations (groups, no conditioning)
//   icnn          CellOT's ICNN baseline (icnn.h): the gradient of an input-convex potential,
//                 one pooled map from all training source to all target cells (CellOT's setting
//                 for unseen populations), CellOT's 4 x 64 networks and 10 g steps per f step,
//                 Adam at --lr with betas 0.5, 0.9; --populations-per-step x --cells cells of each
//                 side a step; not validated (--validate-every applies to the other models)
//   no_change     the baseline: the source cells themselves as the prediction (no training)
//   mean_shift    the baseline: source + the training populations' average (target mean - source mean)
//   oracle_shift  the source moved onto the population's own target mean: a marker of perfection
//                 for a mean-only model, not a fair baseline (it uses the answer)
//   noise_floor   the metric's floor: two random halves of the observed target cells compared
//
// Flags and their defaults, the reference's letters configuration:
//   --csv FILE                 the data (required)
//   --models LIST              mfm_gcn_k50,mfm_mean,cgfm,fm
//   --device cpu|cuda[:N]      cpu;  --threads N  1;  --seed N  1
//   --steps N                  1000 (the reference: 24000 epochs of 24 batches)
//   --lr X                     1e-4 (Adam);  --ema X  0;  --schedule joint|alternating  joint
//   --populations-per-step N   10;  --cells N  700 (cells per population and step)
//   --coupling NAME            paired (independent, exact, sinkhorn, paired);  --sigma X  0
//   --width N --depth N        512, 2 (residual decoder: 2 blocks of two linear layers, SELU; the
//                              reference's has 3 skip blocks of one layer each, width 512)
//   --time-dim N               128;  --fourier-features N  256;  --fourier-scale X  0.01
//   --encoder-layers N         3;  --encoder-width N  64 (GCN 2-64-64-64);  --bandwidth X  1 (KME)
//   --max-cells N              0 (source cells per population embedded; 0 = all)
//   --label-dim N              8 (CGFM)
//   --solver NAME --tol X      dopri5, 1e-4 (atol = rtol)
//   --eval-cells N             0 (cells per side scored; 0 = whole populations)
//   --score SPLITS             test (comma-separated: val,test)
//   --validate-every N         0; with N > 0 the val populations are scored by --validate-metric
//   --validate-metric NAME     W2 (W1, W2, MMD, energy); --patience N  0; the best step is kept
//   --time-limit S             0 (none): training stops after S seconds (the summary's "steps" says
//                              how many were done), so a GPU session's run always ends in time
//   --tf32 0|1                 0: TF32 matrix products on a GPU (fp32 accumulation)
//   --sync-every N             0 (automatic: every step on CPU, every 25 on a GPU): steps between
//                              the host's reads of the loss
//   --demo-csv FILE            write a small synthetic CSV (12 populations of 120 cells) and exit
//
// Output (one JSON object a line): {"config": ...}, then per model and scored split
//   {"model": "mfm_gcn_k10", "split": "test", "population": "ring10", "cells": 120, "W1": 0.26, "W2": 0.30, ...}
//   {"summary": true, "model": "mfm_gcn_k10", "split": "test", "populations": 2, "W1": ..., "W2": ..., "MMD": ...,
//    "status": "completed", "steps": 600, "train_seconds": 3.7, "steps_per_s": 163, "final_loss": 0.17,
//    "best_step": 600, "best_validation": 0.37, "score_seconds": 0.03}
// and {"done": true, "wall_seconds": ...}. Training time includes graph building and validation.
//
// CPU smoke test (seconds; ctest runs it as popflow_letters_smoke):
//   build/cpp/popflow_letters --demo-csv /tmp/letters_demo.csv
//   build/cpp/popflow_letters --csv /tmp/letters_demo.csv --steps 50 --width 64 --cells 64 \
//     --models mfm_gcn_k10,mfm_mean,mfm_kme,cgfm,fm --populations-per-step 4
// GPU run (a CUDA LibTorch, e.g. a PyTorch wheel's; letters.csv from bench/letters_csv.R):
//   cmake -S . -B build/cuda -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
//   cmake --build build/cuda -j --target popflow_letters
//   build/cuda/popflow_letters --csv letters.csv --device cuda --steps 20000 \
//     --models mfm_gcn_k50,mfm_gcn_k10,mfm_mean,cgfm,fm --validate-every 1000 > letters_gpu.jsonl
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "config_text.h"
#include "icnn.h"
#include "population_model.h"
#include "trainer.h"
#include "transport.h"
#include "validation.h"

namespace {

using popflow::method_value;

struct Options {
  std::string csv, demo_csv, device = "cpu", schedule = "joint", coupling = "paired", solver = "dopri5";
  std::string models = "mfm_gcn_k50,mfm_mean,cgfm,fm", score = "test", validate_metric = "W2";
  int64_t steps = 1000, per_step = 10, cells = 700, width = 512, depth = 2, time_dim = 128, fourier = 256;
  bool tf32 = false;         // --tf32 1: TF32 matrix products on a GPU
  int64_t sync_every = 0;    // --sync-every N: host reads of the loss (0: automatic)
  int64_t encoder_layers = 3, encoder_width = 64, max_cells = 0, label_dim = 8, eval_cells = 0;
  int64_t validate_every = 0, patience = 0;
  double lr = 1e-4, ema = 0, sigma = 0, fourier_scale = 0.01, bandwidth = 1, tol = 1e-4, time_limit = 0;
  uint64_t seed = 1;
  int threads = 1;
};

std::vector<std::string> split_on(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::istringstream is(text);
  std::string item;
  while (std::getline(is, item, sep)) out.push_back(item);
  if (!text.empty() && text.back() == sep) out.emplace_back();
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    auto count = [&] { return static_cast<int64_t>(std::stoll(next())); };
    auto number = [&] { return std::stod(next()); };
    if (a == "--csv") o.csv = next();
    else if (a == "--demo-csv") o.demo_csv = next();
    else if (a == "--models") o.models = next();
    else if (a == "--device") o.device = next();
    else if (a == "--threads") o.threads = static_cast<int>(count());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--steps") o.steps = count();
    else if (a == "--lr") o.lr = number();
    else if (a == "--ema") o.ema = number();
    else if (a == "--schedule") o.schedule = next();
    else if (a == "--populations-per-step") o.per_step = count();
    else if (a == "--cells") o.cells = count();
    else if (a == "--coupling") o.coupling = next();
    else if (a == "--sigma") o.sigma = number();
    else if (a == "--width") o.width = count();
    else if (a == "--depth") o.depth = count();
    else if (a == "--time-dim") o.time_dim = count();
    else if (a == "--fourier-features") o.fourier = count();
    else if (a == "--fourier-scale") o.fourier_scale = number();
    else if (a == "--encoder-layers") o.encoder_layers = count();
    else if (a == "--encoder-width") o.encoder_width = count();
    else if (a == "--bandwidth") o.bandwidth = number();
    else if (a == "--max-cells") o.max_cells = count();
    else if (a == "--label-dim") o.label_dim = count();
    else if (a == "--solver") o.solver = next();
    else if (a == "--tol") o.tol = number();
    else if (a == "--eval-cells") o.eval_cells = count();
    else if (a == "--score") o.score = next();
    else if (a == "--validate-every") o.validate_every = count();
    else if (a == "--validate-metric") o.validate_metric = next();
    else if (a == "--patience") o.patience = count();
    else if (a == "--time-limit") o.time_limit = number();
    else if (a == "--tf32") o.tf32 = count() != 0;
    else if (a == "--sync-every") o.sync_every = count();
    else throw std::invalid_argument("unknown option " + a + " (see the comment at the top of the source)");
  }
  if (o.csv.empty() && o.demo_csv.empty()) throw std::invalid_argument("--csv FILE is required");
  return o;
}

// ---------------------------------------------------------------- data

struct Population {
  std::string name, split;
  std::vector<float> source, target;  // row-major cells
  int64_t rows = 0;
};

std::string unquoted(std::string field) {
  if (!field.empty() && field.back() == '\r') field.pop_back();
  if (field.size() >= 2 && field.front() == '"' && field.back() == '"') field = field.substr(1, field.size() - 2);
  return field;
}

std::vector<Population> read_csv(const std::string& path, int64_t* dim) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::string line;
  std::getline(in, line);
  std::vector<std::string> header = split_on(line, ',');
  for (auto& h : header) h = unquoted(h);
  if (header.size() < 4 || header[0] != "population" || header[1] != "split")
    throw std::runtime_error(path + ": the header must start with population,split");
  std::vector<size_t> source_cols, target_cols;
  for (size_t c = 2; c < header.size(); ++c) {
    if (header[c].empty() || (header[c][0] != 's' && header[c][0] != 't'))
      throw std::runtime_error(path + ": column '" + header[c] + "' is neither a source (s...) nor a target (t...)");
    (header[c][0] == 's' ? source_cols : target_cols).push_back(c);
  }
  if (source_cols.size() != target_cols.size() || source_cols.empty())
    throw std::runtime_error(path + ": as many source (s...) as target (t...) columns are needed");
  *dim = static_cast<int64_t>(source_cols.size());
  std::vector<Population> pops;
  std::map<std::string, size_t> index;
  for (int64_t row = 2; std::getline(in, line); ++row) {
    if (line.empty() || line == "\r") continue;
    std::vector<std::string> f = split_on(line, ',');
    if (f.size() != header.size())
      throw std::runtime_error(path + ":" + std::to_string(row) + ": " + std::to_string(f.size()) + " fields, not " +
                               std::to_string(header.size()));
    const std::string name = unquoted(f[0]), split = unquoted(f[1]);
    if (split != "train" && split != "val" && split != "test")
      throw std::runtime_error(path + ":" + std::to_string(row) + ": split '" + split + "' is not train, val or test");
    auto [it, added] = index.emplace(name, pops.size());
    if (added) pops.push_back({name, split, {}, {}, 0});
    Population& p = pops[it->second];
    if (p.split != split) throw std::runtime_error(path + ": population '" + name + "' is in two splits");
    for (size_t c : source_cols) p.source.push_back(std::stof(unquoted(f[c])));
    for (size_t c : target_cols) p.target.push_back(std::stof(unquoted(f[c])));
    ++p.rows;
  }
  return pops;
}

torch::Tensor cells(const std::vector<float>& values, int64_t dim) {
  return torch::tensor(values, torch::kFloat).view({-1, dim});
}

// Rings of different radius and centre in letters' layout: 8 train, 2 val, 2 test populations of
// 120 points; target = ring + N(0, 0.05^2), source = target + N(0, 0.5^2), as letters' noise.
void write_demo_csv(const std::string& path) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  std::mt19937_64 rng(7);
  std::normal_distribution<double> noise(0.0, 1.0);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  out << "population,split,sx,sy,tx,ty\n";
  for (int p = 0; p < 12; ++p) {
    const char* split = p < 8 ? "train" : p < 10 ? "val" : "test";
    const double radius = 1 + 0.25 * (p % 4), cx = (p % 3) - 1.0, cy = (p % 5) * 0.3;
    for (int i = 0; i < 120; ++i) {
      const double a = 2 * M_PI * unit(rng);
      const double tx = cx + radius * std::cos(a) + 0.05 * noise(rng);
      const double ty = cy + radius * std::sin(a) + 0.05 * noise(rng);
      out << "ring" << p << ',' << split << ',' << tx + 0.5 * noise(rng) << ',' << ty + 0.5 * noise(rng) << ',' << tx
          << ',' << ty << '\n';
    }
  }
}

// ---------------------------------------------------------------- models

struct ModelSpec {
  std::string name;
  enum { MFM, CGFM, FM, ICNN, NoChange, MeanShift, OracleShift, NoiseFloor } kind = MFM;
  popflow::EncoderKind encoder = popflow::EncoderKind::GCN;
  int64_t k = 0;
};

ModelSpec model_spec(const std::string& name) {
  ModelSpec m;
  m.name = name;
  if (name == "cgfm") m.kind = ModelSpec::CGFM;
  else if (name == "fm") m.kind = ModelSpec::FM;
  else if (name == "icnn") m.kind = ModelSpec::ICNN;
  else if (name == "no_change") m.kind = ModelSpec::NoChange;
  else if (name == "mean_shift") m.kind = ModelSpec::MeanShift;
  else if (name == "oracle_shift") m.kind = ModelSpec::OracleShift;
  else if (name == "noise_floor") m.kind = ModelSpec::NoiseFloor;
  else if (name == "mfm_mean") m.encoder = popflow::EncoderKind::Mean;
  else if (name == "mfm_kme") m.encoder = popflow::EncoderKind::KME;
  else if (name.rfind("mfm_gcn_k", 0) == 0 && name.size() > 9) m.k = std::stoll(name.substr(9));
  else
    throw std::invalid_argument("unknown model '" + name +
                                "' (mfm_gcn_k<k>, mfm_mean, mfm_kme, cgfm, fm, icnn, no_change, mean_shift, oracle_shift, "
                                "noise_floor)");
  return m;
}

popflow::FlowConfig flow_config(const Options& o, int64_t dim) {
  popflow::FlowConfig f;
  f.path.sigma = o.sigma;
  f.coupling.kind = method_value<popflow::CouplingKind>(o.coupling);
  f.network.dim = dim;
  f.network.width = o.width;
  f.network.depth = o.depth;
  f.network.residual = true;
  f.network.time_dim = o.time_dim;
  f.network.fourier_features = o.fourier;
  f.network.fourier_scale = o.fourier_scale;
  f.times = {0.0, 1.0};
  return f;
}

popflow::TrainConfig train_config(const Options& o) {
  popflow::TrainConfig t;
  t.steps = o.steps;
  t.lr = o.lr;
  t.ema_decay = o.ema;
  t.seed = o.seed;
  t.threads = o.threads;
  t.device = o.device;
  t.batch_size = o.cells;        // flow model (FM): cells per population block
  t.groups_per_step = o.per_step;  // and populations per step
  t.time_limit_s = o.time_limit;
  t.tf32 = o.tf32;
  t.sync_every = o.sync_every;
  return t;
}

popflow::SolverConfig solver_config(const Options& o) {
  popflow::SolverConfig s;
  s.kind = method_value<popflow::SolverKind>(o.solver);
  s.atol = s.rtol = o.tol;
  return s;
}

// A trained model of any kind, as the scorer needs it: the flow and each population's conditioning.
struct Trained {
  popflow::TrainResult result;
  std::shared_ptr<popflow::PopulationModel> population_model;  // MFM, CGFM
  std::shared_ptr<popflow::FlowModel> flow_model;              // FM; none of the three: a baseline
  std::shared_ptr<popflow::IcnnModel> icnn_model;               // ICNN
  torch::Tensor shift;                                          // mean_shift: the training average
  // Conditioning rows for populations (their source cells); undefined for FM.
  torch::Tensor condition(const std::vector<const Population*>& pops, int64_t dim) const {
    if (!population_model) return torch::Tensor();
    std::vector<torch::Tensor> sources;
    for (const Population* p : pops) sources.push_back(cells(p->source, dim));
    torch::Tensor labels;
    if (!population_model->population.use_encoder)
      labels = torch::full({static_cast<int64_t>(pops.size()), 1}, -1, torch::kLong);  // unseen: mean embedding
    return popflow::population_condition(*population_model, sources, labels, torch::Tensor());
  }
  // Source cells moved to the target time; `cond` holds one conditioning row or is undefined.
  torch::Tensor predict(const torch::Tensor& source, const torch::Tensor& cond, const popflow::SolverConfig& solver,
                        int threads) const {
    if (icnn_model) return popflow::icnn_transport(*icnn_model, source, 65536, threads);
    if (!population_model && !flow_model) return source;  // no change
    const popflow::FlowModel flow = population_model ? population_model->flow() : *flow_model;
    const torch::Tensor rows = cond.defined() ? cond.unsqueeze(0).expand({source.size(0), -1}) : cond;
    return popflow::transport(flow, source, {0.0, 1.0}, rows, solver, threads).back();
  }
};

popflow::ValidationConfig validation_config(const Options& o) {
  popflow::ValidationConfig v;
  v.metric = method_value<popflow::DistanceMetric>(o.validate_metric);
  v.solver = solver_config(o);
  v.max_cells = o.eval_cells;
  v.seed = o.seed;
  v.threads = o.threads;
  return v;
}

Trained train_model(const ModelSpec& spec, const Options& o, const std::vector<const Population*>& train,
                    const std::vector<const Population*>& val, int64_t dim) {
  Trained out;
  if (spec.kind == ModelSpec::NoChange || spec.kind == ModelSpec::MeanShift || spec.kind == ModelSpec::OracleShift ||
      spec.kind == ModelSpec::NoiseFloor) {
    out.result.status = "untrained";
    if (spec.kind == ModelSpec::MeanShift) {
      out.shift = torch::zeros({dim});
      for (const Population* p : train)
        out.shift += cells(p->target, dim).mean(0) - cells(p->source, dim).mean(0);
      out.shift /= static_cast<double>(train.size());
    }
    return out;
  }
  popflow::TrainCallbacks callbacks;
  callbacks.validate_every = o.validate_every;
  callbacks.patience = o.patience;
  torch::manual_seed(o.seed);
  std::vector<torch::Tensor> xs;
  for (const Population* p : train) xs.push_back(cells(p->source, dim));
  for (const Population* p : train) xs.push_back(cells(p->target, dim));
  const auto n_train = static_cast<int64_t>(train.size());
  if (spec.kind == ModelSpec::ICNN) {
    // Pooled: all training source cells to all training target cells, as many a step as FM.
    popflow::IcnnConfig ic;
    ic.dim = dim;
    out.icnn_model = popflow::make_icnn_model(ic, o.device);
    popflow::TrainConfig t = train_config(o);
    t.batch_size = o.cells * o.per_step;
    const torch::Tensor source = torch::cat(std::vector<torch::Tensor>(xs.begin(), xs.begin() + n_train));
    const torch::Tensor target = torch::cat(std::vector<torch::Tensor>(xs.begin() + n_train, xs.end()));
    out.result = popflow::train_icnn(*out.icnn_model, source, target, t, callbacks);
    return out;
  }
  if (spec.kind == ModelSpec::FM) {
    // Sources at time 0, targets at time 1, each population a group: pairs stay within populations.
    popflow::TrainingData data;
    data.x = torch::cat(xs);
    for (int side = 0; side < 2; ++side)
      for (int64_t g = 0; g < n_train; ++g) {
        data.time_index.insert(data.time_index.end(), train[g]->rows, side);
        data.group.insert(data.group.end(), train[g]->rows, g);
      }
    out.flow_model = popflow::make_model(flow_config(o, dim), o.device);
    if (o.validate_every > 0) {
      std::vector<popflow::FlowHoldout> sets;
      for (const Population* p : val) sets.push_back({cells(p->source, dim), cells(p->target, dim)});
      callbacks.validate = popflow::flow_validator(*out.flow_model, sets, validation_config(o));
    }
    out.result = popflow::train(*out.flow_model, data, train_config(o), callbacks);
    return out;
  }
  // Population models: each population's source cells, then its target cells, in file order (the pairs).
  popflow::PopulationSet data;
  xs.clear();
  for (int64_t p = 0; p < n_train; ++p) {
    xs.push_back(cells(train[p]->source, dim));
    xs.push_back(cells(train[p]->target, dim));
    data.side.insert(data.side.end(), train[p]->rows, 0);
    data.side.insert(data.side.end(), train[p]->rows, 1);
    data.population.insert(data.population.end(), 2 * train[p]->rows, p);
  }
  data.x = torch::cat(xs);
  popflow::PopulationConfig pc;
  pc.cells_per_population = o.cells;
  pc.populations_per_step = o.per_step;
  pc.max_cells = o.max_cells;
  pc.alternating = o.schedule == "alternating";
  if (spec.kind == ModelSpec::CGFM) {
    pc.use_encoder = false;
    pc.label_levels = {n_train};
    pc.label_dim = o.label_dim;
    data.labels = torch::arange(n_train, torch::kLong).view({-1, 1});
  } else {
    pc.encoder.kind = spec.encoder;
    pc.k = spec.k;
    pc.encoder.layers = o.encoder_layers;
    pc.encoder.width = o.encoder_width;
    pc.encoder.bandwidth = o.bandwidth;
  }
  out.population_model = popflow::make_population_model(flow_config(o, dim), pc, o.device);
  if (o.validate_every > 0) {
    std::vector<popflow::PopulationHoldout> sets;
    for (const Population* p : val) {
      popflow::PopulationHoldout h{cells(p->source, dim), cells(p->target, dim)};
      if (spec.kind == ModelSpec::CGFM) h.labels = torch::tensor({int64_t{-1}});
      sets.push_back(h);
    }
    callbacks.validate = popflow::population_validator(*out.population_model, sets, validation_config(o));
  }
  out.result = popflow::train_population_model(*out.population_model, data, train_config(o), callbacks);
  return out;
}

// ---------------------------------------------------------------- output

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// A finite number, or null (JSON has no NaN).
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void print_config(const Options& o, int64_t dim, size_t n_train, size_t n_val, size_t n_test) {
  std::printf("{\"config\": {\"csv\": %s, \"dim\": %lld, \"train\": %zu, \"val\": %zu, \"test\": %zu, "
              "\"device\": %s, \"steps\": %lld, \"lr\": %s, \"populations_per_step\": %lld, \"cells\": %lld, "
              "\"coupling\": %s, \"sigma\": %s, \"width\": %lld, \"depth\": %lld, \"time_dim\": %lld, "
              "\"fourier_features\": %lld, \"encoder\": \"%lld x %lld\", \"solver\": %s, \"tol\": %s, "
              "\"eval_cells\": %lld, \"seed\": %llu}}\n",
              json_string(o.csv).c_str(), static_cast<long long>(dim), n_train, n_val, n_test,
              json_string(o.device).c_str(), static_cast<long long>(o.steps), json_number(o.lr).c_str(),
              static_cast<long long>(o.per_step), static_cast<long long>(o.cells), json_string(o.coupling).c_str(),
              json_number(o.sigma).c_str(), static_cast<long long>(o.width), static_cast<long long>(o.depth),
              static_cast<long long>(o.time_dim), static_cast<long long>(o.fourier),
              static_cast<long long>(o.encoder_layers), static_cast<long long>(o.encoder_width),
              json_string(o.solver).c_str(), json_number(o.tol).c_str(), static_cast<long long>(o.eval_cells),
              static_cast<unsigned long long>(o.seed));
}

// Scores each population of one split; prints its lines and the model's summary for the split.
void score_split(const ModelSpec& spec, const Trained& trained, const std::string& split,
                 const std::vector<const Population*>& pops, const Options& o, int64_t dim) {
  const auto start = std::chrono::steady_clock::now();
  const torch::Tensor cond = trained.condition(pops, dim);
  const popflow::SolverConfig solver = solver_config(o);
  std::mt19937_64 rng(o.seed);
  const popflow::DistanceMetric metrics[] = {popflow::DistanceMetric::W1, popflow::DistanceMetric::W2,
                                             popflow::DistanceMetric::MMD};
  double sums[3] = {0, 0, 0};
  for (size_t i = 0; i < pops.size(); ++i) {
    const torch::Tensor source = popflow::subsample_cells(cells(pops[i]->source, dim), o.eval_cells, rng);
    const torch::Tensor target = popflow::subsample_cells(cells(pops[i]->target, dim), o.eval_cells, rng);
    const torch::Tensor row = cond.defined() ? cond[static_cast<int64_t>(i)] : cond;
    torch::Tensor pred, observed = target;
    if (spec.kind == ModelSpec::MeanShift) {
      pred = source + trained.shift;
    } else if (spec.kind == ModelSpec::OracleShift) {
      pred = source + (target.mean(0) - source.mean(0));
    } else if (spec.kind == ModelSpec::NoiseFloor) {
      // Two random halves of the observed cells: what the metric reports for two samples of the
      // same distribution (of half the size, so slightly above the floor for whole populations).
      std::vector<int64_t> order(static_cast<size_t>(target.size(0)));
      for (size_t r = 0; r < order.size(); ++r) order[r] = static_cast<int64_t>(r);
      std::shuffle(order.begin(), order.end(), rng);
      const torch::Tensor idx = torch::tensor(order, torch::kLong);
      const int64_t half = target.size(0) / 2;
      pred = target.index_select(0, idx.slice(0, 0, half));
      observed = target.index_select(0, idx.slice(0, half, 2 * half));
    } else {
      pred = trained.predict(source, row, solver, o.threads);
    }
    std::printf("{\"model\": %s, \"split\": %s, \"population\": %s, \"cells\": %lld", json_string(spec.name).c_str(),
                json_string(split).c_str(), json_string(pops[i]->name).c_str(),
                static_cast<long long>(source.size(0)));
    for (int m = 0; m < 3; ++m) {
      const double v = popflow::set_distance(metrics[m], pred, observed);
      sums[m] += v;
      std::printf(", \"%s\": %s", popflow::method_name(metrics[m]), json_number(v).c_str());
    }
    std::printf("}\n");
  }
  const popflow::TrainResult& r = trained.result;
  const double n = static_cast<double>(pops.size());
  std::printf("{\"summary\": true, \"model\": %s, \"split\": %s, \"populations\": %zu, \"W1\": %s, \"W2\": %s, "
              "\"MMD\": %s, \"status\": %s, \"steps\": %lld, \"train_seconds\": %.3f, \"steps_per_s\": %s, "
              "\"final_loss\": %s, \"best_step\": %lld, \"best_validation\": %s, \"score_seconds\": %.3f}\n",
              json_string(spec.name).c_str(), json_string(split).c_str(), pops.size(),
              json_number(sums[0] / n).c_str(), json_number(sums[1] / n).c_str(), json_number(sums[2] / n).c_str(),
              json_string(r.status).c_str(), static_cast<long long>(r.steps_done), r.seconds,
              json_number(static_cast<double>(r.steps_done) / r.seconds).c_str(),
              json_number(r.loss.empty() ? NAN : r.loss.back()).c_str(),
              static_cast<long long>(r.best_step), json_number(r.best_score).c_str(), seconds_since(start));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (!o.demo_csv.empty()) {
      write_demo_csv(o.demo_csv);
      return 0;
    }
    const auto start = std::chrono::steady_clock::now();
    int64_t dim = 0;
    const std::vector<Population> pops = read_csv(o.csv, &dim);
    std::map<std::string, std::vector<const Population*>> by_split;
    for (const Population& p : pops) by_split[p.split].push_back(&p);
    const auto& train = by_split["train"];
    const auto& val = by_split["val"];
    if (train.empty()) throw std::invalid_argument(o.csv + ": no training populations");
    if (o.validate_every > 0 && val.empty()) throw std::invalid_argument("--validate-every needs val populations");
    // Names are checked before anything is printed or trained.
    std::vector<ModelSpec> specs;
    for (const std::string& name : split_on(o.models, ',')) specs.push_back(model_spec(name));
    flow_config(o, dim);
    validation_config(o);
    const std::vector<std::string> scored = split_on(o.score, ',');
    for (const std::string& split : scored)
      if (by_split[split].empty()) throw std::invalid_argument("no populations in split '" + split + "' to score");
    print_config(o, dim, train.size(), val.size(), by_split["test"].size());
    for (const ModelSpec& spec : specs) {
      const Trained trained = train_model(spec, o, train, val, dim);
      for (const std::string& split : scored) score_split(spec, trained, split, by_split[split], o, dim);
    }
    std::printf("{\"done\": true, \"wall_seconds\": %.3f}\n", seconds_since(start));
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "popflow_letters: " << e.what() << "\n";
    return 1;
  }
}

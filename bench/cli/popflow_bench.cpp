// popflow_bench: train a flow on a CSV of snapshot data from the command line
// and report training speed and, with --holdout, the held-out W1.
//
//   popflow_bench [options] DATA.csv          (or '-' to read the CSV from stdin)
//   zcat inst/extdata/emt_timecourse.csv.gz | popflow_bench - --holdout 2 --steps 500
//   popflow_bench --synthetic 20000:10:3 --device cuda --batch 8192 --steps 500 --json
//
// The CSV has a header row. The time column (--time-column, default
// "samples") holds the snapshot time of each cell; every other column whose
// values all parse as numbers is a feature (non-numeric columns, such as cell
// names, are skipped; --drop a,b removes more, --features a,b keeps only those).
// Training uses every time point except the held-out one; the flow is fitted
// between consecutive remaining times. With --holdout T the cells observed at
// the time before T are pushed to T (dopri5) and compared with the cells
// observed at T by exact W1 and W2 (each side subsampled to --max-eval-cells).
//
// Reported: steps/s, cells/s (source-target pairs regressed per second:
// steps x batch x intervals x groups / seconds), training seconds, the final
// loss (and the mean of the last 10% of steps), and W1/W2 when held out.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "config_text.h"
#include "metrics.h"
#include "model.h"
#include "ode.h"
#include "transport.h"
#include "trainer.h"

namespace {

struct Options {
  std::string input;
  std::string synthetic;  // N:D:T
  std::string time_column = "samples";
  std::vector<std::string> drop, features;
  std::string path = "icfm", coupling = "independent", ot_mode = "resample", ot_solver = "exact", device = "cpu";
  double sigma = 0.1, lr = 1e-3, time_limit = 0;
  int64_t width = 64, depth = 3, batch = 256, steps = 1000, max_eval_cells = 1000;
  bool residual = false, json = false, have_holdout = false, step_graph = false;
  int threads = 1;
  int64_t sync_every = 0;
  uint64_t seed = 1;
  double holdout = 0;
  double atol = 1e-5, rtol = 1e-5;
};

const char* kUsage =
    "usage: popflow_bench [options] DATA.csv|-\n"
    "  --time-column NAME     time/label column (default samples)\n"
    "  --features a,b,...     feature columns to use (default: all other numeric columns)\n"
    "  --drop a,b,...         columns to leave out\n"
    "  --synthetic N:D:T      no file: N cells per time, D features, T time points (moving Gaussians)\n"
    "  --path icfm|sbcfm|targetfm        (default icfm)\n"
    "  --coupling independent|exact|sinkhorn (default independent)\n"
    "  --ot-mode resample|permutation    (exact OT; default resample)\n"
    "  --ot-solver exact|auction         (exact OT of equal batches; default exact)\n"
    "  --sigma S              path noise (default 0.1)\n"
    "  --width W --depth D --residual     network (default 64, 3, plain MLP)\n"
    "  --batch B              cells per interval and step (default 256)\n"
    "  --steps N --lr LR      (default 1000, 1e-3)\n"
    "  --time-limit S         stop training after S seconds (default none)\n"
    "  --device cpu|cuda[:k]  (default cpu)\n"
    "  --step-graph 0|1       staged steps, captured as one CUDA graph on a GPU (default 0)\n"
    "  --sync-every N         read the loss back every N steps (default 0: 25 on a GPU, else 1)\n"
    "  --threads T            torch CPU threads (default 1)\n"
    "  --seed S               (default 1)\n"
    "  --holdout T            leave time T out; report W1/W2 of the prediction from the previous time\n"
    "  --max-eval-cells N     subsample each side of W1/W2 to N cells (default 1000)\n"
    "  --atol A --rtol R      dopri5 tolerances for the prediction (default 1e-5)\n"
    "  --json                 print one JSON line instead of text\n";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "popflow_bench: %s\n%s", msg.c_str(), kUsage);
  std::exit(2);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream is(s);
  while (std::getline(is, item, sep)) out.push_back(item);
  if (!s.empty() && s.back() == sep) out.emplace_back();
  return out;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  size_t a = 0;
  while (a < s.size() && (s[a] == ' ' || s[a] == '\t')) ++a;
  s = s.substr(a);
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) s = s.substr(1, s.size() - 2);
  return s;
}

bool parse_double(const std::string& s, double& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

double to_double(const std::string& flag, const std::string& s) {
  double v;
  if (!parse_double(s, v)) usage_error("bad number for " + flag + ": '" + s + "'");
  return v;
}

int64_t to_int(const std::string& flag, const std::string& s) {
  double v = to_double(flag, s);
  if (v != std::floor(v) || v < 0) usage_error(flag + " needs a non-negative integer");
  return static_cast<int64_t>(v);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--time-column") o.time_column = value();
    else if (a == "--features") o.features = split(value(), ',');
    else if (a == "--drop") o.drop = split(value(), ',');
    else if (a == "--synthetic") o.synthetic = value();
    else if (a == "--path") o.path = value();
    else if (a == "--coupling") o.coupling = value();
    else if (a == "--ot-mode") o.ot_mode = value();
    else if (a == "--ot-solver") o.ot_solver = value();
    else if (a == "--sigma") o.sigma = to_double(a, value());
    else if (a == "--width") o.width = to_int(a, value());
    else if (a == "--depth") o.depth = to_int(a, value());
    else if (a == "--residual") o.residual = true;
    else if (a == "--batch") o.batch = to_int(a, value());
    else if (a == "--steps") o.steps = to_int(a, value());
    else if (a == "--lr") o.lr = to_double(a, value());
    else if (a == "--time-limit") o.time_limit = to_double(a, value());
    else if (a == "--device") o.device = value();
    else if (a == "--step-graph") o.step_graph = to_int(a, value()) != 0;
    else if (a == "--sync-every") o.sync_every = to_int(a, value());
    else if (a == "--threads") o.threads = static_cast<int>(to_int(a, value()));
    else if (a == "--seed") o.seed = static_cast<uint64_t>(to_int(a, value()));
    else if (a == "--holdout") { o.holdout = to_double(a, value()); o.have_holdout = true; }
    else if (a == "--max-eval-cells") o.max_eval_cells = to_int(a, value());
    else if (a == "--atol") o.atol = to_double(a, value());
    else if (a == "--rtol") o.rtol = to_double(a, value());
    else if (a == "--json") o.json = true;
    else if (a == "-" || a.rfind("-", 0) != 0) {
      if (!o.input.empty()) usage_error("more than one input file");
      o.input = a;
    } else usage_error("unknown option " + a);
  }
  if (o.input.empty() == o.synthetic.empty()) usage_error("give either a CSV path ('-' for stdin) or --synthetic");
  if (o.threads < 1) usage_error("--threads must be >= 1");
  if (o.max_eval_cells < 2) usage_error("--max-eval-cells must be >= 2");
  return o;
}

struct Dataset {
  std::vector<std::string> feature_names;
  std::vector<double> values;  // row-major [n, d]
  std::vector<double> time;    // per cell
  int64_t n = 0, d = 0;
};

Dataset read_csv(std::istream& in, const Options& o) {
  std::string line;
  if (!std::getline(in, line)) throw std::runtime_error("empty input");
  std::vector<std::string> header = split(line, ',');
  for (auto& h : header) h = trim(h);
  const size_t ncol = header.size();
  auto time_it = std::find(header.begin(), header.end(), o.time_column);
  if (time_it == header.end()) throw std::runtime_error("no column named '" + o.time_column + "' in the header");
  const size_t time_col = time_it - header.begin();
  std::vector<std::vector<double>> cols(ncol);
  std::vector<bool> numeric(ncol, true);
  int64_t row = 0;
  while (std::getline(in, line)) {
    if (trim(line).empty()) continue;
    ++row;
    std::vector<std::string> f = split(line, ',');
    if (f.size() != ncol)
      throw std::runtime_error("line " + std::to_string(row + 1) + " has " + std::to_string(f.size()) +
                               " fields, the header has " + std::to_string(ncol));
    for (size_t j = 0; j < ncol; ++j) {
      if (!numeric[j]) continue;
      double v;
      if (parse_double(trim(f[j]), v) && std::isfinite(v)) cols[j].push_back(v);
      else {
        numeric[j] = false;
        cols[j].clear();
      }
    }
  }
  if (row == 0) throw std::runtime_error("no data rows");
  if (!numeric[time_col]) throw std::runtime_error("time column '" + o.time_column + "' is not numeric");
  std::set<std::string> drop(o.drop.begin(), o.drop.end());
  std::vector<size_t> use;
  if (!o.features.empty()) {
    for (const auto& name : o.features) {
      auto it = std::find(header.begin(), header.end(), name);
      if (it == header.end()) throw std::runtime_error("no feature column named '" + name + "'");
      if (!numeric[it - header.begin()]) throw std::runtime_error("feature column '" + name + "' is not numeric");
      use.push_back(it - header.begin());
    }
  } else {
    for (size_t j = 0; j < ncol; ++j)
      if (j != time_col && numeric[j] && !drop.count(header[j]) && !header[j].empty()) use.push_back(j);
  }
  if (use.empty()) throw std::runtime_error("no numeric feature columns");
  Dataset ds;
  ds.n = row;
  ds.d = static_cast<int64_t>(use.size());
  ds.time = cols[time_col];
  ds.values.resize(ds.n * ds.d);
  for (size_t k = 0; k < use.size(); ++k) {
    ds.feature_names.push_back(header[use[k]]);
    for (int64_t i = 0; i < ds.n; ++i) ds.values[i * ds.d + k] = cols[use[k]][i];
  }
  return ds;
}

// N cells per time, D features, T times: Gaussians whose centre moves along a
// curve and whose spread changes, so consecutive snapshots differ.
Dataset synthetic(const std::string& spec, uint64_t seed) {
  auto parts = split(spec, ':');
  if (parts.size() != 3) usage_error("--synthetic wants N:D:T");
  const int64_t n = to_int("--synthetic", parts[0]), d = to_int("--synthetic", parts[1]),
                T = to_int("--synthetic", parts[2]);
  if (n < 2 || d < 1 || T < 2) usage_error("--synthetic needs N >= 2, D >= 1, T >= 2");
  std::mt19937_64 rng(seed + 12345);
  std::normal_distribution<double> z(0.0, 1.0);
  Dataset ds;
  ds.n = n * T;
  ds.d = d;
  for (int64_t k = 0; k < d; ++k) ds.feature_names.push_back("x" + std::to_string(k + 1));
  ds.values.resize(ds.n * d);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = t * n + i;
      ds.time.push_back(static_cast<double>(t));
      const double branch = (i % 2 == 0) ? 1.0 : -1.0;
      for (int64_t k = 0; k < d; ++k) {
        double centre = k == 0 ? 2.0 * t : (k == 1 ? branch * 0.5 * t * t / std::max<int64_t>(1, T - 1) : 0.0);
        ds.values[r * d + k] = centre + (0.5 + 0.1 * t) * z(rng);
      }
    }
  return ds;
}

popflow::PathKind path_kind(const std::string& s) {
  if (s == "icfm") return popflow::PathKind::ICFM;
  if (s == "sbcfm") return popflow::PathKind::SBCFM;
  if (s == "targetfm") return popflow::PathKind::TargetFM;
  usage_error("unknown --path '" + s + "'");
}

popflow::CouplingKind coupling_kind(const std::string& s) {
  if (s == "independent") return popflow::CouplingKind::Independent;
  if (s == "exact") return popflow::CouplingKind::ExactOT;
  if (s == "sinkhorn") return popflow::CouplingKind::Sinkhorn;
  usage_error("unknown --coupling '" + s + "'");
}

popflow::OTMode ot_mode(const std::string& s) {
  if (s == "resample") return popflow::OTMode::Resample;
  if (s == "permutation") return popflow::OTMode::Permutation;
  usage_error("unknown --ot-mode '" + s + "'");
}

std::string json_num(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream os;
  os.precision(8);
  os << v;
  return os.str();
}

std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

// Row subset of a row-major [n, d] tensor, at most `cap` rows, drawn without replacement.
torch::Tensor subsample(const torch::Tensor& x, int64_t cap, std::mt19937_64& rng) {
  if (x.size(0) <= cap) return x;
  std::vector<int64_t> idx(x.size(0));
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
  std::shuffle(idx.begin(), idx.end(), rng);
  idx.resize(cap);
  std::sort(idx.begin(), idx.end());
  return x.index_select(0, torch::tensor(idx, torch::kLong));
}

struct ColMajor {
  std::vector<double> data;
  int rows, cols;
  popflow::MatView view() const { return {data.data(), rows, cols}; }
};

ColMajor col_major(const torch::Tensor& x) {
  auto t = x.to(torch::kCPU, torch::kDouble).t().contiguous();
  ColMajor m{std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel()),
             static_cast<int>(x.size(0)), static_cast<int>(x.size(1))};
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  try {
    const auto t_load = std::chrono::steady_clock::now();
    Dataset ds;
    if (!o.synthetic.empty()) {
      ds = synthetic(o.synthetic, o.seed);
    } else if (o.input == "-") {
      std::ios::sync_with_stdio(false);
      ds = read_csv(std::cin, o);
    } else {
      std::ifstream f(o.input);
      if (!f) throw std::runtime_error("cannot open '" + o.input + "' (gzip files: zcat FILE | popflow_bench - ...)");
      ds = read_csv(f, o);
    }
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

    std::vector<double> all_times(ds.time.begin(), ds.time.end());
    std::sort(all_times.begin(), all_times.end());
    all_times.erase(std::unique(all_times.begin(), all_times.end()), all_times.end());
    std::vector<double> train_times;
    for (double t : all_times)
      if (!(o.have_holdout && t == o.holdout)) train_times.push_back(t);
    double prev_time = 0;
    if (o.have_holdout) {
      auto it = std::find(all_times.begin(), all_times.end(), o.holdout);
      if (it == all_times.end()) throw std::runtime_error("--holdout " + json_num(o.holdout) + " is not a time in the data");
      if (it == all_times.begin() || it + 1 == all_times.end())
        throw std::runtime_error("--holdout must be an interior time point (one before it and one after it)");
      prev_time = *(it - 1);
    }
    if (train_times.size() < 2) throw std::runtime_error("need at least two training time points");

    auto x_all = torch::from_blob(ds.values.data(), {ds.n, ds.d}, torch::kDouble).clone();
    std::vector<int64_t> train_rows, holdout_rows, prev_rows, time_index;
    for (int64_t i = 0; i < ds.n; ++i) {
      const double t = ds.time[i];
      if (o.have_holdout && t == o.holdout) {
        holdout_rows.push_back(i);
        continue;
      }
      if (o.have_holdout && t == prev_time) prev_rows.push_back(i);
      train_rows.push_back(i);
      time_index.push_back(std::lower_bound(train_times.begin(), train_times.end(), t) - train_times.begin());
    }
    auto rows = [](const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong); };

    popflow::FlowConfig cfg;
    cfg.path.kind = path_kind(o.path);
    cfg.path.sigma = o.sigma;
    cfg.coupling.kind = coupling_kind(o.coupling);
    cfg.coupling.mode = ot_mode(o.ot_mode);
    try {
      cfg.coupling.solver = popflow::method_value<popflow::OTSolver>(o.ot_solver);
    } catch (const std::invalid_argument& e) {
      usage_error(std::string("--ot-solver: ") + e.what());
    }
    cfg.network.dim = ds.d;
    cfg.network.width = o.width;
    cfg.network.depth = o.depth;
    cfg.network.residual = o.residual;
    cfg.times = train_times;

    popflow::TrainConfig tc;
    tc.steps = o.steps;
    tc.batch_size = o.batch;
    tc.lr = o.lr;
    tc.seed = o.seed;
    tc.threads = o.threads;
    tc.device = o.device;
    tc.time_limit_s = o.time_limit;
    tc.step_graph = o.step_graph;
    tc.sync_every = o.sync_every;

    torch::manual_seed(o.seed);
    torch::set_num_threads(o.threads);
    auto model = popflow::make_model(cfg, o.device);
    popflow::TrainingData data;
    data.x = x_all.index_select(0, rows(train_rows)).to(torch::kFloat);
    data.time_index = time_index;
    const std::string problem = popflow::validate_training_data(*model, data);
    if (!problem.empty()) throw std::runtime_error(problem);

    if (!o.json)
      std::printf("data: %lld cells x %lld features, %zu time points (%zu for training)%s; device %s\n",
                  static_cast<long long>(ds.n), static_cast<long long>(ds.d), all_times.size(), train_times.size(),
                  o.have_holdout ? (", holding out t=" + json_num(o.holdout)).c_str() : "", o.device.c_str());
    auto res = popflow::train(*model, data, tc);
    const double steps_per_s = res.seconds > 0 ? res.steps_done / res.seconds : NAN;
    const double pairs = static_cast<double>(res.steps_done) * o.batch * (train_times.size() - 1);
    const double cells_per_s = res.seconds > 0 ? pairs / res.seconds : NAN;
    const double final_loss = res.loss.empty() ? NAN : res.loss.back();
    double tail_loss = NAN;
    if (!res.loss.empty()) {
      const size_t k = std::max<size_t>(1, res.loss.size() / 10);
      tail_loss = 0;
      for (size_t i = res.loss.size() - k; i < res.loss.size(); ++i) tail_loss += res.loss[i];
      tail_loss /= k;
    }

    double w1 = NAN, w2 = NAN, predict_s = NAN, metric_s = NAN;
    int64_t eval_pred = 0, eval_obs = 0, nfe = 0;
    if (o.have_holdout) {
      std::mt19937_64 rng(o.seed + 99);
      auto src = subsample(x_all.index_select(0, rows(prev_rows)), o.max_eval_cells, rng);
      auto obs = subsample(x_all.index_select(0, rows(holdout_rows)), o.max_eval_cells, rng);
      popflow::SolverConfig sc;
      sc.kind = popflow::SolverKind::Dopri5;
      sc.atol = o.atol;
      sc.rtol = o.rtol;
      popflow::OdeStats st;
      const auto t0 = std::chrono::steady_clock::now();
      auto pred = popflow::transport(*model, src, {prev_time, o.holdout}, torch::Tensor(), sc, o.threads, &st)[1];
      const auto t1 = std::chrono::steady_clock::now();
      auto P = col_major(pred), Q = col_major(obs);
      w1 = popflow::wasserstein(P.view(), Q.view(), 1);
      w2 = popflow::wasserstein(P.view(), Q.view(), 2);
      metric_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      predict_s = std::chrono::duration<double>(t1 - t0).count();
      eval_pred = pred.size(0);
      eval_obs = obs.size(0);
      nfe = st.evaluations;
    }

    if (o.json) {
      std::ostringstream js;
      js << "{\"input\":" << json_str(o.synthetic.empty() ? o.input : "synthetic:" + o.synthetic)
         << ",\"cells\":" << ds.n << ",\"features\":" << ds.d << ",\"times\":" << all_times.size()
         << ",\"path\":" << json_str(o.path) << ",\"coupling\":" << json_str(o.coupling) << ",\"ot_solver\":" << json_str(o.ot_solver)
         << ",\"ot_mode\":" << json_str(o.ot_mode) << ",\"sigma\":" << json_num(o.sigma) << ",\"width\":" << o.width
         << ",\"depth\":" << o.depth << ",\"residual\":" << (o.residual ? "true" : "false") << ",\"batch\":" << o.batch
         << ",\"lr\":" << json_num(o.lr) << ",\"device\":" << json_str(o.device) << ",\"threads\":" << o.threads
         << ",\"seed\":" << o.seed << ",\"torch\":" << json_str(TORCH_VERSION) << ",\"status\":" << json_str(res.status)
         << ",\"step_graph\":" << json_str(res.step_graph)
         << ",\"steps\":" << res.steps_done << ",\"seconds\":" << json_num(res.seconds)
         << ",\"steps_per_s\":" << json_num(steps_per_s) << ",\"cells_per_s\":" << json_num(cells_per_s)
         << ",\"final_loss\":" << json_num(final_loss) << ",\"tail_loss\":" << json_num(tail_loss)
         << ",\"load_seconds\":" << json_num(load_s);
      if (o.have_holdout)
        js << ",\"holdout\":" << json_num(o.holdout) << ",\"from\":" << json_num(prev_time) << ",\"w1\":" << json_num(w1)
           << ",\"w2\":" << json_num(w2) << ",\"eval_predicted\":" << eval_pred << ",\"eval_observed\":" << eval_obs
           << ",\"predict_seconds\":" << json_num(predict_s) << ",\"metric_seconds\":" << json_num(metric_s)
           << ",\"nfe\":" << nfe;
      else
        js << ",\"holdout\":null,\"w1\":null,\"w2\":null";
      js << "}";
      std::puts(js.str().c_str());
    } else {
      std::printf("train: %s, %lld steps in %.3f s (%s)\n", (o.path + "/" + o.coupling).c_str(),
                  static_cast<long long>(res.steps_done), res.seconds, res.status.c_str());
      std::printf("steps/s: %.2f\ncells/s: %.0f\nseconds: %.3f\nfinal loss: %.5g (mean of last 10%%: %.5g)\n",
                  steps_per_s, cells_per_s, res.seconds, final_loss, tail_loss);
      if (o.have_holdout)
        std::printf("holdout t=%s from t=%s: W1 %.5f, W2 %.5f (%lld predicted vs %lld observed cells; "
                    "predict %.3f s, %lld evaluations; metrics %.3f s)\n",
                    json_num(o.holdout).c_str(), json_num(prev_time).c_str(), w1, w2,
                    static_cast<long long>(eval_pred), static_cast<long long>(eval_obs), predict_s,
                    static_cast<long long>(nfe), metric_s);
    }
    return res.status == "completed" || res.status == "time_limit" ? 0 : 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "popflow_bench: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "popflow_bench: %s\n", e.what());
  }
  return 1;
}

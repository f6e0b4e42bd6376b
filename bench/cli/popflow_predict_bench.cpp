// popflow_predict_bench: prediction throughput of a saved flow, and its
// network written out for a peer (bench/predict_peer_torchdiffeq.py) to run
// the same field with another ODE library.
//
//   popflow_predict_bench --model FILE.popflow --cells CELLS.csv --from 0 --to 3
//                         [--solver dopri5|rk4] [--steps 20] [--atol 1e-5] [--rtol 1e-5]
//                         [--threads 1] [--device cpu] [--reps 3] [--export DIR]
//
// CELLS.csv: one cell per line, comma-separated features, no header. Moves
// the cells from --from to --to (user time units) with popflow::transport(),
// what predict() runs, --reps times, and prints one JSON line per repeat:
// CPU seconds (this process, all threads), wall seconds, cells per CPU
// second, and the solver's velocity evaluations. With --export DIR, also
// writes DIR/manifest.json (the network's settings and each parameter's
// shape), DIR/<parameter>.f32 (raw little-endian float32), DIR/probes.f32
// (rows of x, t, v(x, t) at random points, to check a re-implementation) and
// DIR/popflow_end.f32 (the cells at --to).
#include <torch/torch.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "config_text.h"
#include "model.h"
#include "transport.h"

namespace {

struct Options {
  std::string model, cells, solver = "dopri5", device = "cpu", export_dir;
  double from = 0, to = 1, atol = 1e-5, rtol = 1e-5;
  int64_t steps = 20, reps = 3;
  int threads = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") o.model = next();
    else if (a == "--cells") o.cells = next();
    else if (a == "--from") o.from = std::stod(next());
    else if (a == "--to") o.to = std::stod(next());
    else if (a == "--solver") o.solver = next();
    else if (a == "--steps") o.steps = std::stoll(next());
    else if (a == "--atol") o.atol = std::stod(next());
    else if (a == "--rtol") o.rtol = std::stod(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--device") o.device = next();
    else if (a == "--reps") o.reps = std::stoll(next());
    else if (a == "--export") o.export_dir = next();
    else throw std::invalid_argument("unknown option " + a);
  }
  if (o.model.empty() || o.cells.empty()) throw std::invalid_argument("--model and --cells are required");
  return o;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

torch::Tensor read_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<double> values;
  int64_t rows = 0, cols = -1;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    std::stringstream fields(line);
    int64_t n = 0;
    for (std::string f; std::getline(fields, f, ',');) {
      values.push_back(std::stod(f));
      ++n;
    }
    if (cols >= 0 && n != cols) throw std::runtime_error(path + ": rows of different lengths");
    cols = n;
    ++rows;
  }
  return torch::tensor(values, torch::kDouble).view({rows, cols});
}

void write_f32(const std::string& path, const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// The network's parameters and buffers, settings, probes and popflow's end state, for a peer.
void export_network(const popflow::FlowModel& model, const Options& o, const torch::Tensor& end) {
  const auto& n = model.config.network;
  std::ofstream manifest(o.export_dir + "/manifest.json");
  manifest << "{\"dim\": " << n.dim << ", \"width\": " << n.width << ", \"depth\": " << n.depth
           << ", \"residual\": " << (n.residual ? "true" : "false") << ", \"activation\": \""
           << popflow::method_name(n.activation) << "\", \"time_dim\": " << n.time_dim
           << ", \"fourier_features\": " << n.fourier_features << ", \"cond_dim\": " << n.cond_dim
           << ", \"growth\": " << (n.growth ? "true" : "false") << ", \"model_from\": " << model.model_time(o.from)
           << ", \"model_to\": " << model.model_time(o.to) << ", \"atol\": " << o.atol << ", \"rtol\": " << o.rtol
           << ", \"solver\": \"" << o.solver << "\", \"steps\": " << o.steps << ", \"tensors\": {";
  bool first = true;
  const auto add = [&](const std::string& name, const torch::Tensor& t) {
    manifest << (first ? "" : ", ") << "\"" << name << "\": [";
    for (int64_t i = 0; i < t.dim(); ++i) manifest << (i ? ", " : "") << t.size(i);
    manifest << "]";
    first = false;
    write_f32(o.export_dir + "/" + name + ".f32", t);
  };
  for (const auto& p : model.net->named_parameters()) add(p.key(), p.value());
  for (const auto& b : model.net->named_buffers()) add(b.key(), b.value());
  manifest << "}}\n";
  // Probes: x ~ N(0, 4 I), t uniform on the model's interval; rows [x, t, v].
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  auto x = torch::randn({64, n.dim}) * 2;
  auto t = torch::rand({64});
  popflow::VectorField net = model.net;  // a non-const handle on the shared module
  auto v = net->forward(x.to(model.device), t.to(model.device)).to(torch::kCPU);
  write_f32(o.export_dir + "/probes.f32", torch::cat({x, t.unsqueeze(1), v}, 1));
  write_f32(o.export_dir + "/popflow_end.f32", end);
}

double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    auto model = popflow::load_model(read_file(o.model), o.device);
    if (model->config.network.cond_dim > 0) throw std::invalid_argument("a conditioned flow needs conditioning rows");
    const auto cells = read_csv(o.cells);
    popflow::SolverConfig solver;
    solver.kind = popflow::method_value<popflow::SolverKind>(o.solver);
    solver.steps = o.steps;
    solver.atol = o.atol;
    solver.rtol = o.rtol;
    torch::Tensor end;
    for (int64_t r = 0; r < o.reps; ++r) {
      popflow::OdeStats stats;
      const double c0 = cpu_seconds();
      const auto w0 = std::chrono::steady_clock::now();
      end = popflow::transport(*model, cells, {o.from, o.to}, torch::Tensor(), solver, o.threads, &stats).back();
      const double cpu = cpu_seconds() - c0;
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
      std::printf("{\"impl\": \"popflow\", \"solver\": \"%s\", \"cells\": %lld, \"threads\": %d, \"rep\": %lld, "
                  "\"cpu_s\": %.4f, \"wall_s\": %.4f, \"cells_per_cpu_s\": %.0f, \"evaluations\": %lld}\n",
                  o.solver.c_str(), static_cast<long long>(cells.size(0)), o.threads, static_cast<long long>(r + 1),
                  cpu, wall, cells.size(0) / cpu, static_cast<long long>(stats.evaluations));
      std::fflush(stdout);
    }
    if (!o.export_dir.empty()) export_network(*model, o, end);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "popflow_predict_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

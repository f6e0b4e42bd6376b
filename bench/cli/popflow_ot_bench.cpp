// popflow_ot_bench: time one exact OT solve between two equal point sets with
// each of popflow's assignment solvers, on the same cost matrix.
//
//   popflow_ot_bench --points FILE --n N --d D [--solvers exact,jv,lemon,auction]
//                    [--device cpu|cuda[:k]] [--reps R] [--rel-gap G]
//
// FILE holds the source then the target points as raw little-endian float64,
// N x D each, row-major (bench/exact_ot.py writes it, and times POT's ot.emd
// on the same points in the same run). The cost is the squared Euclidean
// distance in double precision, as POT's ot.dist computes it.
// Solvers:
//   exact    solve_assignment(): epsilon-scaling auction prices, then
//            Jonker-Volgenant to the exact optimum (popflow's default)
//   jv       solve_assignment_jv(): plain Jonker-Volgenant (the earlier solver)
//   lemon    exact_transport(): LEMON's network simplex (the reference)
//   auction  auction_assignment(): Jacobi auction in LibTorch tensor ops on
//            --device (float32 cost, computed there by squared_cost())
// One JSON line per solver: wall and process-CPU milliseconds (the median of
// --reps), and the mean cost per row of its matching (double-precision cost).
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "assignment.h"
#include "coupling.h"
#include "exact_ot.h"

namespace {

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "popflow_ot_bench: %s\nusage: popflow_ot_bench --points FILE --n N --d D "
               "[--solvers exact,jv,lemon,auction] [--device cpu] [--reps 1] [--rel-gap 1e-3]\n",
               msg.c_str());
  std::exit(2);
}

double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream is(s);
  while (std::getline(is, item, ',')) out.push_back(item);
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string points, device = "cpu";
  std::vector<std::string> solvers{"exact", "jv", "lemon", "auction"};
  int64_t n = 0, d = 0;
  int reps = 1;
  double rel_gap = 1e-3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--points") points = v;
    else if (a == "--n") n = std::atoll(v.c_str());
    else if (a == "--d") d = std::atoll(v.c_str());
    else if (a == "--solvers") solvers = split(v);
    else if (a == "--device") device = v;
    else if (a == "--reps") reps = std::atoi(v.c_str());
    else if (a == "--rel-gap") rel_gap = std::atof(v.c_str());
    else usage("unknown option " + a);
  }
  if (points.empty() || n < 1 || d < 1 || reps < 1) usage("--points, --n >= 1, --d >= 1 and --reps >= 1 are needed");
  torch::set_num_threads(1);

  std::vector<double> xy(static_cast<size_t>(2 * n * d));
  std::ifstream in(points, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(xy.data()), static_cast<std::streamsize>(xy.size() * sizeof(double))))
    usage("cannot read " + std::to_string(xy.size()) + " doubles from " + points);
  auto x0 = torch::from_blob(xy.data(), {n, d}, torch::kDouble).clone();
  auto x1 = torch::from_blob(xy.data() + n * d, {n, d}, torch::kDouble).clone();
  // Double-precision squared distances |x|^2 + |y|^2 - 2 x.y, as ot.dist(x0, x1) computes them.
  auto cost_t = popflow::squared_cost(x0, x1).contiguous();
  const double* cost = cost_t.data_ptr<double>();
  const int ni = static_cast<int>(n);
  auto mean_cost = [&](const std::vector<int64_t>& col) {
    std::vector<char> seen(static_cast<size_t>(n), 0);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (col[i] < 0 || col[i] >= n || seen[col[i]]) throw std::runtime_error("not a permutation");
      seen[col[i]] = 1;
      total += cost[i * n + col[i]];
    }
    return total / static_cast<double>(n);
  };
  const torch::Device dev(device);
  auto sync = [&]() {
    if (dev.is_cuda()) torch::cuda::synchronize();
  };

  for (const auto& solver : solvers) {
    std::vector<double> wall, cpu;
    double value = 0;
    // The device's cost matrix is made once, outside the timing (as the
    // coupling would have it from squared_cost()).
    torch::Tensor dcost;
    if (solver == "auction") dcost = popflow::squared_cost(x0.to(dev, torch::kFloat), x1.to(dev, torch::kFloat));
    for (int r = 0; r < reps; ++r) {
      std::vector<int64_t> col;
      sync();
      const double w0 = wall_seconds(), c0 = cpu_seconds();
      if (solver == "exact" || solver == "jv") {
        auto c = solver == "exact" ? popflow::solve_assignment(cost, ni) : popflow::solve_assignment_jv(cost, ni);
        col.assign(c.begin(), c.end());
      } else if (solver == "lemon") {
        auto plan = popflow::exact_transport(cost, ni, ni);
        col.assign(static_cast<size_t>(n), -1);
        for (const auto& e : plan.entries) col[e.i] = e.j;
      } else if (solver == "auction") {
        auto c = popflow::auction_assignment(dcost, rel_gap);
        sync();
        auto host = c.to(torch::kCPU).contiguous();
        col.assign(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + n);
      } else {
        usage("unknown solver '" + solver + "'");
      }
      wall.push_back(1e3 * (wall_seconds() - w0));
      cpu.push_back(1e3 * (cpu_seconds() - c0));
      value = mean_cost(col);
    }
    std::printf(
        "{\"solver\":\"%s\",\"device\":\"%s\",\"n\":%lld,\"d\":%lld,\"reps\":%d,\"wall_ms\":%.3f,\"cpu_ms\":%.3f,"
        "\"mean_cost\":%.12g}\n",
        solver.c_str(), device.c_str(), static_cast<long long>(n), static_cast<long long>(d), reps, median(wall),
        median(cpu), value);
    std::fflush(stdout);
  }
  return 0;
}

#include "distributed.h"

#include <torch/version.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#if defined(USE_C10D_GLOO) || defined(USE_C10D_NCCL)
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace popflow {

std::vector<std::string> distributed_backends() {
  std::vector<std::string> out;
#ifdef USE_C10D_GLOO
  out.push_back("gloo");
#endif
#ifdef USE_C10D_NCCL
  out.push_back("nccl");
#endif
  return out;
}

namespace {

void check_config(const DistributedConfig& c) {
  const auto backends = distributed_backends();
  bool built = false;
  for (const auto& b : backends) built = built || b == c.backend;
  if (c.backend != "gloo" && c.backend != "nccl")
    throw std::invalid_argument("backend must be \"gloo\" or \"nccl\", not \"" + c.backend + "\"");
  if (!built)
    throw std::invalid_argument(
        "this popflow was built without the " + c.backend + " backend of LibTorch's distributed layer" +
        (c.backend == "gloo" ? " (install Debian's libgloo-dev and reinstall popflow)"
                             : " (build popflow against a CUDA LibTorch that has ProcessGroupNCCL, with nccl.h)"));
  if (c.world_size < 1) throw std::invalid_argument("world_size must be >= 1");
  if (c.rank < 0 || c.rank >= c.world_size)
    throw std::invalid_argument("rank " + std::to_string(c.rank) + " is outside 0 .. " +
                                std::to_string(c.world_size - 1) + " (world_size " + std::to_string(c.world_size) + ")");
  if (c.port < 1 || c.port > 65535) throw std::invalid_argument("port must be in 1 .. 65535");
  if (!(c.timeout_s > 0)) throw std::invalid_argument("timeout must be > 0 seconds");
}

}  // namespace

#if defined(USE_C10D_GLOO) || defined(USE_C10D_NCCL)
namespace {

std::string where(const DistributedConfig& c) { return c.address + ":" + std::to_string(c.port); }

std::string who(const DistributedConfig& c) {
  return "rank " + std::to_string(c.rank) + " of " + std::to_string(c.world_size);
}

std::string store_text(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> store_bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// The first line of an exception's text (c10's carry a backtrace below it).
std::string first_line(const std::exception& e) {
  std::string what = e.what();
  const auto end = what.find('\n');
  return end == std::string::npos ? what : what.substr(0, end);
}

// LibTorch 2.4+ serves the store with libuv by default, and a LibTorch built
// without libuv (Debian's 2.6) refuses that: such builds take the older server.
template <typename Options>
auto without_libuv(Options& o, int) -> decltype(o.useLibUV = false, bool()) {
  o.useLibUV = false;
  return true;
}
template <typename Options>
bool without_libuv(Options&, long) {
  return false;  // a LibTorch before the option: nothing to change
}

c10::intrusive_ptr<c10d::Store> tcp_store(const std::string& address, c10d::TCPStoreOptions opts) {
  try {
    return c10::make_intrusive<c10d::TCPStore>(address, opts);
  } catch (const std::exception& e) {
    if (std::string(e.what()).find("libuv") == std::string::npos || !without_libuv(opts, 0)) throw;
    return c10::make_intrusive<c10d::TCPStore>(address, opts);
  }
}

class ProcessGroup : public GradientSync {
 public:
  explicit ProcessGroup(const DistributedConfig& config) : config_(config) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(config.port);
    opts.isServer = config.rank == 0;
    opts.numWorkers = static_cast<std::size_t>(config.world_size);
    opts.waitWorkers = false;  // waited for below, with a message that says who is missing
    opts.timeout = timeout;
    try {
      store_ = tcp_store(config.address, opts);
    } catch (const std::exception& e) {
      if (config.rank == 0)
        throw std::runtime_error("data-parallel training: rank 0 could not serve the rendezvous at " + where(config) +
                                 " (" + first_line(e) + "); the port is probably in use: give another port");
      throw std::runtime_error("data-parallel training: " + who(config) + " could not reach rank 0 at " +
                               where(config) + " within " + std::to_string(config.timeout_s) + " s (" + first_line(e) +
                               "); is rank 0 running, and are the address and port the ones it serves?");
    }
    // Each rank announces its version; all must match before any tensor moves.
    store_->set("popflow/version/" + std::to_string(config.rank), store_bytes(config.version));
    std::vector<std::string> keys;
    for (int64_t r = 0; r < config.world_size; ++r) keys.push_back("popflow/version/" + std::to_string(r));
    try {
      store_->wait(keys, timeout);
    } catch (const std::exception& e) {
      std::string missing;
      for (int64_t r = 0; r < config.world_size; ++r)
        if (!store_->check({keys[r]})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      throw std::runtime_error("data-parallel training: " + who(config) + " waited " +
                               std::to_string(config.timeout_s) + " s at " + where(config) +
                               " for rank(s) " + missing + ", which did not join; start all " +
                               std::to_string(config.world_size) + " processes, or raise the timeout");
    }
    std::string problem;
    for (int64_t r = 0; r < config.world_size && problem.empty(); ++r) {
      const std::string theirs = store_text(store_->get(keys[r]));
      if (theirs != config.version)
        problem = "data-parallel training: rank " + std::to_string(r) + " runs popflow " + theirs + " but " +
                  who(config) + " runs popflow " + config.version +
                  "; install the same popflow version for every process";
    }
    // Rank 0 serves the store: it waits until every rank has read the
    // versions, so that each can report a mismatch in its own words.
    store_->set("popflow/checked/" + std::to_string(config.rank), store_bytes("1"));
    if (config.rank == 0) {
      std::vector<std::string> checked;
      for (int64_t r = 0; r < config.world_size; ++r) checked.push_back("popflow/checked/" + std::to_string(r));
      try {
        store_->wait(checked, timeout);
      } catch (const std::exception&) {
        // A rank that left after reading: its own error says why.
      }
    }
    if (!problem.empty()) throw std::invalid_argument(problem);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("popflow/" + config.backend, store_);
    try {
      make_group(prefixed, timeout);
    } catch (const std::exception& e) {
      throw std::runtime_error("data-parallel training: " + who(config) + " could not set up the " + config.backend +
                               " process group (" + first_line(e) + ")");
    }
  }

  int64_t rank() const override { return config_.rank; }
  int64_t world_size() const override { return config_.world_size; }

  void agree(const std::string& what, const std::string& value) override {
    const std::string base = "popflow/agree/" + std::to_string(agreements_++) + "/";
    store_->set(base + std::to_string(config_.rank), store_bytes(value));
    for (int64_t r = 0; r < config_.world_size; ++r) {
      std::string theirs;
      try {
        theirs = store_text(store_->get(base + std::to_string(r)));
      } catch (const std::exception& e) {
        throw std::runtime_error("data-parallel training: " + who(config_) + " lost contact with rank " +
                                 std::to_string(r) + " before training (" + first_line(e) +
                                 "); it stopped or failed: see its error");
      }
      if (theirs != value)
        throw std::invalid_argument("data-parallel training: the processes fit different problems (" + what + " " +
                                    theirs + " on rank " + std::to_string(r) + ", " + value + " on " + who(config_) +
                                    "); give every process the same data and settings");
    }
  }

  void broadcast(torch::Tensor& t) override {
    exchange("the start weights", [&] {
      std::vector<at::Tensor> tensors{t};
      c10d::BroadcastOptions opts;
      opts.rootRank = 0;
      group_->broadcast(tensors, opts)->wait();
    });
  }

  void average(torch::Tensor& t) override {
    const auto start = std::chrono::steady_clock::now();
    exchange("a gradient exchange", [&] {
      std::vector<at::Tensor> tensors{t};
      group_->allreduce(tensors)->wait();
    });
    t.div_(static_cast<double>(config_.world_size));
    exchange_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++exchanges_;
  }

  // Benchmarks: with POPFLOW_DISTRIBUTED_TIMES naming a file, each rank
  // appends "rank exchanges seconds" (the time in gradient exchanges,
  // waiting for the slower rank included) when it leaves the group.
  ~ProcessGroup() override {
    const char* path = std::getenv("POPFLOW_DISTRIBUTED_TIMES");
    if (!path || !*path || exchanges_ == 0) return;
    if (std::FILE* f = std::fopen(path, "a")) {
      std::fprintf(f, "%lld %lld %.6f\n", static_cast<long long>(config_.rank), static_cast<long long>(exchanges_),
                   exchange_seconds_);
      std::fclose(f);
    }
  }

 private:
  void make_group(const c10::intrusive_ptr<c10d::Store>& store, std::chrono::milliseconds timeout) {
#ifdef USE_C10D_NCCL
    if (config_.backend == "nccl") {
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      group_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(config_.rank),
                                                           static_cast<int>(config_.world_size), opts);
      return;
    }
#endif
#ifdef USE_C10D_GLOO
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    // Loopback when rank 0 is on this machine; otherwise the interface named
    // by GLOO_SOCKET_IFNAME (as PyTorch reads it) or this host's address.
    const std::string& a = config_.address;
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (a == "127.0.0.1" || a == "localhost" || a == "::1")
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else if (ifname && *ifname)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    opts->threads = 1;
    group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(config_.rank),
                                                         static_cast<int>(config_.world_size), opts);
#else
    (void)store;
    (void)timeout;
#endif
  }

  template <typename F>
  void exchange(const char* what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      throw std::runtime_error("data-parallel training: " + who(config_) + " lost contact with the other processes " +
                               "during " + what + " (" + first_line(e) +
                               "): another process stopped, failed or was killed; see its error");
    }
  }

  DistributedConfig config_;
  c10::intrusive_ptr<c10d::Store> store_;
#if TORCH_VERSION_MAJOR >= 2
  c10::intrusive_ptr<c10d::Backend> group_;  // 2.x: the process groups are backends
#else
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
#endif
  int64_t agreements_ = 0;
  int64_t exchanges_ = 0;
  double exchange_seconds_ = 0;
};

}  // namespace

std::unique_ptr<GradientSync> join_process_group(const DistributedConfig& config) {
  check_config(config);
  return std::make_unique<ProcessGroup>(config);
}

#else

std::unique_ptr<GradientSync> join_process_group(const DistributedConfig& config) {
  check_config(config);  // names the missing backend
  throw std::logic_error("unreachable: no distributed backend");
}

#endif

}  // namespace popflow

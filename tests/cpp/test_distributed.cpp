// The process group of data-parallel training (distributed.h): two ranks as
// two threads of this process, meeting over a TCPStore on 127.0.0.1. (Whole
// fits are compared in R's tests-parallel.R, in two processes: threads share
// torch's global generator, which each training step reseeds.)
#include <torch/torch.h>

#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "distributed.h"

using namespace popflow;

namespace {

bool have_gloo() {
  for (const auto& b : distributed_backends())
    if (b == "gloo") return true;
  return false;
}

// A port for this run (two runs at once on one machine must not share one).
int64_t next_port() {
  static std::atomic<int64_t> offset{0};
  return 20000 + (static_cast<int64_t>(getpid()) * 13 + offset++ * 7) % 20000;
}

DistributedConfig rank_config(int64_t rank, int64_t port, const std::string& version = "1.0", double timeout = 10) {
  DistributedConfig c;
  c.rank = rank;
  c.world_size = 2;
  c.port = port;
  c.timeout_s = timeout;
  c.version = version;
  return c;
}

// Runs body(rank, group) on two threads, one per rank; returns each rank's
// error message ("" when it threw none).
std::vector<std::string> two_ranks(const std::function<void(int64_t, GradientSync&)>& body,
                                   const std::vector<std::string>& versions = {"1.0", "1.0"}) {
  const int64_t port = next_port();
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      errors[r] = check::thrown_message([&] {
        auto group = join_process_group(rank_config(r, port, versions[r]));
        body(r, *group);
      });
    });
  for (auto& t : threads) t.join();
  return errors;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("distributed: two ranks average, broadcast and agree") {
  if (!have_gloo()) return;  // built without gloo: nothing to test
  std::vector<torch::Tensor> averaged(2), broadcast(2);
  const auto errors = two_ranks([&](int64_t rank, GradientSync& g) {
    PF_CHECK(g.rank() == rank && g.world_size() == 2);
    g.agree("parameter count", "42");
    torch::Tensor t = torch::full({5}, static_cast<float>(rank + 1));  // 1 and 2: mean 1.5
    g.average(t);
    averaged[rank] = t;
    torch::Tensor b = torch::full({3}, static_cast<float>(10 * (rank + 1)));
    g.broadcast(b);
    broadcast[rank] = b;
  });
  PF_CHECK_MSG(errors[0].empty() && errors[1].empty(), errors[0] << " | " << errors[1]);
  for (int r = 0; r < 2; ++r) {
    PF_CHECK(averaged[r].defined() && torch::allclose(averaged[r], torch::full({5}, 1.5f)));
    PF_CHECK(broadcast[r].defined() && torch::equal(broadcast[r], torch::full({3}, 10.0f)));
  }
}

TEST_CASE("distributed: another version, other settings, a missing or vanished rank are errors") {
  if (!have_gloo()) return;
  auto errors = two_ranks([](int64_t, GradientSync&) {}, {"1.0", "0.9"});
  PF_CHECK_MSG(contains(errors[0], "rank 1 runs popflow 0.9") && contains(errors[0], "same popflow version"),
               errors[0]);
  PF_CHECK_MSG(contains(errors[1], "runs popflow"), errors[1]);

  errors = two_ranks([](int64_t rank, GradientSync& g) { g.agree("parameter count", rank == 0 ? "10" : "11"); });
  PF_CHECK_MSG(contains(errors[0], "fit different problems (parameter count"), errors[0]);

  // Rank 1 leaves after the rendezvous: rank 0's exchange fails, it does not hang.
  errors = two_ranks([](int64_t rank, GradientSync& g) {
    if (rank == 1) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    torch::Tensor t = torch::ones({4});
    g.average(t);
  });
  PF_CHECK_MSG(contains(errors[0], "rank 0 of 2 lost contact"), errors[0]);

  // Only rank 0 comes: an error after the timeout.
  const int64_t port = next_port();
  const std::string alone =
      check::thrown_message([&] { join_process_group(rank_config(0, port, "1.0", /*timeout=*/1)); });
  PF_CHECK_MSG(contains(alone, "rank(s) 1, which did not join"), alone);

  // Bad settings name what is wrong.
  DistributedConfig bad = rank_config(2, port);
  PF_CHECK(contains(check::thrown_message([&] { join_process_group(bad); }), "outside 0 .. 1"));
  bad = rank_config(0, port);
  bad.backend = "mpi";
  PF_CHECK(contains(check::thrown_message([&] { join_process_group(bad); }), "\"gloo\" or \"nccl\""));
}

// Operator calls of a Meta Flow Matching training step (population_model.h):
// on a GPU each is at least one kernel launch and some host work, so the
// step's calls must not grow with the populations it draws. Host reads of
// MFM, CGFM and flow steps (none: a CUDA graph's capture forbids them).
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "check.h"
#include "fixtures.h"
#include "model.h"
#include "population_model.h"
#include "trainer.h"

using namespace popflow;
using namespace fixtures;

namespace {

std::atomic<bool> counting{false};
std::atomic<int64_t> calls{0}, reads{0};

// Every call, and the host reads among them (item(): on a GPU, a wait for its queue).
std::unique_ptr<at::ObserverContext> count_call(const at::RecordFunction& fn) {
  if (!counting.load(std::memory_order_relaxed)) return nullptr;
  calls.fetch_add(1, std::memory_order_relaxed);
  if (std::strcmp(fn.name(), "aten::_local_scalar_dense") == 0) reads.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}

struct StepCounts {
  double calls, reads;  // per step
};

// Calls and host reads per steady step of `fit` (15 steps, the GPU's deferred
// checks: sync_every 5), counted from the first read of the losses to the last.
// staged: the fixed-buffer steps a CUDA graph captures (TrainConfig::step_graph).
template <class Fit>
StepCounts count_steps(bool staged, Fit&& fit) {
  TrainConfig tc;
  tc.steps = 15;
  tc.sync_every = 5;
  tc.step_graph = staged;
  int64_t first = 0, last = 0;
  TrainCallbacks cb;
  cb.progress = [&](int64_t step, double) {
    counting = step < tc.steps;  // every population's graph is built in step 1, before the first read
    if (first == 0) first = step;
    last = step;
    return true;
  };
  calls = 0;
  reads = 0;
  const auto handle = at::addGlobalCallback(at::RecordFunctionCallback(count_call).scopes({at::RecordScope::FUNCTION}));
  const TrainResult res = fit(tc, cb);
  at::removeCallback(handle);
  counting = false;
  PF_CHECK(res.status == "completed");
  PF_CHECK(last - first == 10);
  const auto steps = static_cast<double>(last - first);
  return {static_cast<double>(calls.load()) / steps, static_cast<double>(reads.load()) / steps};
}

// ATen operator calls (nested calls included) per steady step of a small MFM
// fit drawing `populations` populations a step, with the GPU's deferred checks
// (sync_every > 1): counted from the first read of the losses to the last.
// labelled: CGFM instead (no encoder; one categorical label, a value per population).
// staged: the fixed-buffer steps a CUDA graph captures (TrainConfig::step_graph).
StepCounts counts_per_step(int64_t populations, bool alternating, bool labelled = false, bool staged = false) {
  torch::manual_seed(7);
  std::vector<std::vector<float>> means;
  for (int64_t p = 0; p < populations; ++p)
    means.push_back({static_cast<float>(std::cos(p)), static_cast<float>(std::sin(p))});
  auto data = mean_shift_populations(means, 24);
  PopulationConfig pc = small_population(EncoderKind::GCN, 2, 8, 16, populations);
  pc.k = 4;
  pc.alternating = alternating;
  if (labelled) {
    pc.use_encoder = false;
    pc.label_levels = {populations};
    data.labels = torch::arange(populations, torch::kLong).view({populations, 1});
  }
  FlowConfig fc = population_flow();
  fc.network.width = 16;
  fc.network.depth = 2;
  fc.network.residual = true;
  auto model = make_population_model(fc, pc, "cpu");
  return count_steps(staged, [&](const TrainConfig& tc, const TrainCallbacks& cb) {
    return train_population_model(*model, data, tc, cb);
  });
}

}  // namespace

TEST_CASE("MFM training step: operator calls do not grow with the populations drawn") {
  for (bool alternating : {false, true}) {
    const StepCounts at_two = counts_per_step(2, alternating), at_eight = counts_per_step(8, alternating);
    const double two = at_two.calls, eight = at_eight.calls;
    PF_CHECK(at_two.reads == 0 && at_eight.reads == 0);
    PF_CHECK_MSG(two > 100, "the observer saw " << two << " calls a step: is RecordFunction off?");
    // Left per population: the two draws' row tensors (draw_rows). Was about 18 (joint schedule).
    const double per_population = (eight - two) / 6;
    PF_CHECK_MSG(per_population <= 3, (alternating ? "alternating" : "joint") << " schedule, operator calls per step: "
                                          << two << " at 2 populations, " << eight << " at 8 (" << per_population
                                          << " more per population)");
  }
}

TEST_CASE("CGFM training step: labels are checked for unseen values without a host read") {
  // Before, condition() asked unseen.any().item() for every label column at
  // every step: on a GPU, a wait for the device's queue.
  const StepCounts counts = counts_per_step(4, false, /*labelled=*/true);
  PF_CHECK_MSG(counts.calls > 20, "the observer saw " << counts.calls << " calls a step: is RecordFunction off?");
  PF_CHECK_MSG(counts.reads == 0, counts.reads << " host reads a step");
}

TEST_CASE("staged MFM and CGFM steps: no host read, as a CUDA graph's capture requires") {
  // A read inside a capture fails it; outside, staging reads nothing either.
  for (bool labelled : {false, true}) {
    const StepCounts counts = counts_per_step(4, false, labelled, /*staged=*/true);
    PF_CHECK_MSG(counts.calls > 20, "the observer saw " << counts.calls << " calls a step: is RecordFunction off?");
    PF_CHECK_MSG(counts.reads == 0, counts.reads << " host reads a step" << (labelled ? " (labelled)" : ""));
  }
}

TEST_CASE("staged flow steps (I-CFM, groups with a condition, three snapshots): no host read") {
  const TrainingData data = grouped_snapshots(3);
  const FlowConfig fc = grouped_flow(PathKind::ICFM, CouplingKind::Independent, true);
  for (bool staged : {false, true}) {
    auto model = make_model(fc, "cpu");
    const StepCounts counts = count_steps(staged, [&](TrainConfig tc, const TrainCallbacks& cb) {
      tc.batch_size = 16;
      return train(*model, data, tc, cb);
    });
    PF_CHECK_MSG(counts.calls > 20, "the observer saw " << counts.calls << " calls a step: is RecordFunction off?");
    PF_CHECK_MSG(counts.reads == 0, counts.reads << " host reads a step" << (staged ? " (staged)" : " (eager)"));
  }
}

// A training step's device work as one CUDA graph: captured once, then
// replayed each step with a single launch instead of hundreds of operator
// calls, each of which costs the host microseconds of dispatch (the MFM step
// on a GPU is bound by them, not by arithmetic). The work must read and write
// only tensors that keep their storage from step to step (the objective's
// staged inputs, the optimiser's flat buffers) and never read back to the host.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

namespace popflow {

// Whether this build can capture CUDA graphs (a CUDA LibTorch).
bool step_graphs_available();

class StepGraph {
 public:
  explicit StepGraph(int warmup = 3);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Runs `work` once on `device`'s tensors. On a GPU: the first `warmup`
  // calls run it eagerly on a side stream (as capture requires: cuBLAS and
  // the allocator set up, autograd's streams chosen), the next captures it and
  // replays the capture, later calls only replay. Elsewhere, or after a
  // capture failed, it runs eagerly. Host-side effects of `work` happen only
  // while it runs eagerly or is captured: a replay repeats its kernels alone.
  void run(const torch::Device& device, const std::function<void()>& work);
  // Forgets the capture (the buffers `work` reads were reallocated); the next call captures again.
  void reset();
  bool captured() const;
  // "" while no capture failed; else why, after which every call runs eagerly.
  const std::string& failure() const { return failure_; }
  int64_t captures() const { return captures_; }

 private:
  struct Cuda;
  std::unique_ptr<Cuda> cuda_;
  int warmup_, eager_calls_ = 0;
  int64_t captures_ = 0;
  std::string failure_;
};

}  // namespace popflow

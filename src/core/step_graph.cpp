#include "step_graph.h"

#ifdef POPFLOW_CUDA_GRAPHS
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace popflow {

#ifdef POPFLOW_CUDA_GRAPHS

bool step_graphs_available() { return true; }

struct StepGraph::Cuda {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  c10::optional<c10::cuda::CUDAStream> side;
};

StepGraph::StepGraph(int warmup) : cuda_(std::make_unique<Cuda>()), warmup_(warmup) {}

StepGraph::~StepGraph() = default;

bool StepGraph::captured() const { return cuda_->graph != nullptr; }

void StepGraph::reset() {
  cuda_->graph.reset();
  eager_calls_ = 0;
}

void StepGraph::run(const torch::Device& device, const std::function<void()>& work) {
  if (!device.is_cuda() || !failure_.empty()) return work();
  if (cuda_->graph) return cuda_->graph->replay();
  const c10::cuda::CUDAGuard device_guard(device);
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  if (!cuda_->side) cuda_->side = c10::cuda::getStreamFromPool();
  const c10::cuda::CUDAStream side = *cuda_->side;
  // The side stream starts after what the main stream queued (the staged inputs), and the main one after it.
  at::cuda::CUDAEvent staged;
  staged.record(main);
  staged.block(side);
  bool replay = false;
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    if (eager_calls_ < warmup_) {
      work();
      ++eager_calls_;
    } else {
      auto graph = std::make_unique<at::cuda::CUDAGraph>();
      try {
        graph->capture_begin();
        try {
          work();
        } catch (...) {
          try {
            graph->capture_end();  // leaves the stream usable again
          } catch (...) {
          }
          throw;
        }
        graph->capture_end();
        cuda_->graph = std::move(graph);
        ++captures_;
        replay = true;  // capture ran nothing: this step's work is the first replay
      } catch (const std::exception& e) {
        failure_ = e.what();
        const auto line = failure_.find('\n');
        if (line != std::string::npos) failure_.resize(line);
      }
    }
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(main);
  if (replay) cuda_->graph->replay();
  else if (!failure_.empty() && !cuda_->graph) work();  // this step, eagerly after all
}

#else

bool step_graphs_available() { return false; }

struct StepGraph::Cuda {};

StepGraph::StepGraph(int warmup) : warmup_(warmup) {}

StepGraph::~StepGraph() = default;

bool StepGraph::captured() const { return false; }

void StepGraph::reset() { eager_calls_ = 0; }

void StepGraph::run(const torch::Device& device, const std::function<void()>& work) {
  if (device.is_cuda() && failure_.empty()) failure_ = "this popflow was built without CUDA graphs (a CPU LibTorch)";
  work();
}

#endif

}  // namespace popflow

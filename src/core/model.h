// A fitted flow: its configuration and velocity network, the device it runs
// on, and its model file (kind "popflow-flow": configuration text,
// parameters, metadata, optional training state; see model_file.h).
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include "config.h"
#include "network.h"
#include "optimizer.h"

namespace popflow {

constexpr const char* kModelKind = "popflow-flow";

struct FlowModel {
  FlowConfig config;
  VectorField net{nullptr};
  torch::Device device = torch::kCPU;
  // Optimiser state for resuming training (saved as an optional block).
  TrainState train_state;

  // Snapshot time (user units) to model time in [0, 1].
  double model_time(double t) const;
};

// Parses "cpu" / "cuda" / "cuda:N"; throws with a clear message when CUDA is
// asked for but the linked LibTorch has none (never a silent CPU fallback).
torch::Device parse_device(const std::string& name);
bool cuda_available();
// Whether the linked LibTorch was built with CUDA (libtorch_cuda), whether or
// not a GPU is visible: the build defines POPFLOW_TORCH_CUDA (configure, CMake).
bool cuda_built();

// A new model with freshly initialised weights (uses torch's global generator).
std::shared_ptr<FlowModel> make_model(const FlowConfig& config, const std::string& device);

// `metadata` is an opaque block stored with the model (the R package keeps
// its own fields there: feature names, loss history, time labels).
std::string save_model(const FlowModel& model, const std::string& metadata = "");
// Throws std::runtime_error naming the problem for a truncated, corrupted,
// wrong-kind or wrong-version file. Fills `metadata` when given.
std::shared_ptr<FlowModel> load_model(const std::string& bytes, const std::string& device = "cpu",
                                      std::string* metadata = nullptr);

}  // namespace popflow

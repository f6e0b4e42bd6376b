// A fitted flow: its configuration and velocity network, plus the versioned
// byte format it is saved in (header, configuration, parameters, checksum).
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "network.h"
#include "optimizer.h"

namespace popflow {

constexpr uint32_t kModelFormatVersion = 1;
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

// A new model with freshly initialised weights (uses torch's global generator).
std::shared_ptr<FlowModel> make_model(const FlowConfig& config, const std::string& device);

// `metadata` is an opaque block stored with the model (the R package keeps
// its own fields there: feature names, loss history, time labels).
std::string save_model(const FlowModel& model, const std::string& metadata = "");
// Throws std::runtime_error naming the problem for a truncated, corrupted,
// wrong-kind or wrong-version file. Fills `metadata` when given.
std::shared_ptr<FlowModel> load_model(const std::string& bytes, const std::string& device = "cpu",
                                      std::string* metadata = nullptr);

// The optional training-state block of a model file (popflow's own layout of
// raw numbers, never LibTorch's archive reader). train_state_from_bytes checks
// every size against `n_params` and throws std::runtime_error naming the problem.
std::string train_state_to_bytes(const TrainState& state);
TrainState train_state_from_bytes(const std::string& bytes, int64_t n_params);
int64_t parameter_count(torch::nn::Module& module);

// A network's parameters and buffers as a LibTorch archive of CPU tensors,
// whatever `device` the network lives on (the parameter block of every model kind).
std::string module_bytes(torch::nn::Module& net, const torch::Device& device);
// Loads such an archive into `net`; Module::load accepts tensors of any shape,
// so a shape that differs from the network's is a std::runtime_error.
// LibTorch's own errors (c10::Error) pass through to the caller.
void load_module_bytes(torch::nn::Module& net, const std::string& bytes);

// Writes `bytes` to a temporary file next to `path` and renames it over
// `path`, so a reader never sees a half-written file. Throws std::runtime_error.
void write_file_atomic(const std::string& path, const std::string& bytes);

// The container every model kind is saved in: magic, format version, kind,
// length-prefixed blocks, FNV-1a checksum. unpack_model_file checks the
// header, version and checksum and throws std::runtime_error naming the problem.
std::string pack_model_file(const std::string& kind, const std::vector<std::string>& blocks);
std::vector<std::string> unpack_model_file(const std::string& bytes, std::string* kind);

// Configuration <-> "key=value" lines (also used to report a model's settings).
std::string config_to_text(const FlowConfig& config);
FlowConfig config_from_text(const std::string& text);
// A "key=value" configuration block read back from a model file, with
// checked access; every error names the block (`what`) and the key.
class ConfigText {
 public:
  ConfigText(const std::string& text, std::string what);
  const std::string& value(const std::string& key) const;  // throws when missing
  double number(const std::string& key) const;
  // A whole number within [lo, hi].
  int64_t count(const std::string& key, double lo, double hi) const;
  // Parses one number (the whole string) that belongs to `key`.
  double parse_number(const std::string& text, const std::string& key) const;

 private:
  std::map<std::string, std::string> values_;
  std::string what_;
};

}  // namespace popflow

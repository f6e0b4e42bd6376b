// The on-disk container every model kind is saved in, and the blocks it
// holds besides the configuration text: a network's parameters and the
// optional training state. popflow's own layout of raw numbers for
// everything but the parameters (never LibTorch's archive reader for data it
// did not write), checked on reading so that a damaged file is an error, not a crash.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "optimizer.h"

namespace popflow {

constexpr uint32_t kModelFormatVersion = 1;

// Magic, format version, kind, length-prefixed blocks, FNV-1a checksum.
// unpack_model_file checks the header, version and checksum and throws
// std::runtime_error naming the problem.
std::string pack_model_file(const std::string& kind, const std::vector<std::string>& blocks);
std::vector<std::string> unpack_model_file(const std::string& bytes, std::string* kind);

// The optional training-state block. train_state_from_bytes checks every size
// against `n_params` and throws std::runtime_error naming the problem.
std::string train_state_to_bytes(const TrainState& state);
TrainState train_state_from_bytes(const std::string& bytes, int64_t n_params);
int64_t parameter_count(torch::nn::Module& module);

// The source block of a generative flow with a non-Gaussian source: its
// values (config.h SourceConfig). source_from_bytes checks the size against
// source->rows x dim and throws std::runtime_error naming the problem.
std::string source_to_bytes(const SourceConfig& source);
void source_from_bytes(const std::string& bytes, SourceConfig* source, int64_t dim);

// A network's parameters and buffers as a LibTorch archive of CPU tensors,
// whatever `device` the network lives on (the parameter block of every model kind).
std::string module_bytes(torch::nn::Module& net, const torch::Device& device);
// Loads such an archive into `net`; Module::load accepts tensors of any shape,
// so a shape that differs from the network's is a std::runtime_error.
// LibTorch's own errors (c10::Error) pass through to the caller.
void load_module_bytes(torch::nn::Module& net, const std::string& bytes);

// Runs `build` (make a model from a file's configuration, load its parameter
// block) and says what goes wrong in the model file's words: LibTorch's errors
// as unreadable parameters, a constructor's std::invalid_argument as an invalid
// configuration (both std::runtime_error); other errors pass through.
template <typename Build>
auto build_from_model_file(Build&& build) -> decltype(build()) {
  try {
    return build();
  } catch (const c10::Error& e) {
    throw std::runtime_error(std::string("model file parameters are unreadable: ") + e.what_without_backtrace());
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("model configuration is invalid: ") + e.what());
  }
}

// Writes `bytes` to a temporary file next to `path` and renames it over
// `path`, so a reader never sees a half-written file. Throws std::runtime_error.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace popflow

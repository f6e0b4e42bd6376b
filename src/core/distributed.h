// Data-parallel training over c10d, LibTorch's distributed layer: a process
// group (Gloo on CPU, NCCL with a CUDA LibTorch that has it) behind
// trainer.h's GradientSync. Only distributed.cpp includes c10d's headers, and
// compiles to "not available" where the build has neither backend.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "trainer.h"

namespace popflow {

struct DistributedConfig {
  std::string backend = "gloo";  // "gloo" (CPU tensors) or "nccl" (CUDA tensors)
  int64_t rank = 0, world_size = 1;
  // Where rank 0 serves the rendezvous (a TCPStore): every rank connects there.
  std::string address = "127.0.0.1";
  int64_t port = 29500;
  double timeout_s = 120;  // rendezvous and each exchange: a missing or silent peer is an error after this long
  // Every rank must give the same version (its popflow's): checked at rendezvous.
  std::string version;
};

// The backends this build has ("gloo", "nccl"), possibly none.
std::vector<std::string> distributed_backends();

// Joins the process group of `config`: rank 0 serves the rendezvous at
// address:port, the others connect to it; every rank checks the others'
// versions. Throws std::invalid_argument for unusable settings or another
// version, std::runtime_error when the rendezvous fails (port in use, a rank
// missing after timeout_s); the messages say which and how to fix it.
std::unique_ptr<GradientSync> join_process_group(const DistributedConfig& config);

}  // namespace popflow

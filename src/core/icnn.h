// The ICNN baseline of CellOT (Bunne et al. 2023): two input-convex neural
// networks, f and g, trained with the min-max objective of Makkuva et al.
// (2020) for the quadratic-cost optimal transport between source and target
// cells. The map is the gradient of g: a source cell x goes to grad g(x),
// which, g being convex, is the Brenier map once training has converged.
// Saved as a model file of kind "popflow-icnn" (configuration text, the two
// networks' parameters, metadata). Training runs in the one loop,
// run_training(), as an IcnnObjective (icnn.cpp).
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include "optimizer.h"
#include "trainer.h"

namespace popflow {

constexpr const char* kIcnnModelKind = "popflow-icnn";

struct IcnnConfig {
  int64_t dim = 2;           // cell features
  int64_t width = 64;        // hidden units per layer
  int64_t depth = 4;         // hidden layers
  int64_t inner_steps = 10;  // g steps per f step (the inner maximisation)
  // g's non-negative weights: "penalty" adds g_penalty times the squared
  // Frobenius norm of their negative parts to g's loss (Makkuva et al.,
  // CellOT); "clamp" sets their negative entries to 0 before every step, as
  // is always done for f (g then is convex at every step).
  bool clamp_g = false;
  double g_penalty = 1.0;
  double beta1 = 0.5, beta2 = 0.9;  // Adam's betas for both networks (CellOT's)
};

// "key=value" text (dim, width, depth, inner_steps, g_convexity, g_penalty,
// beta1, beta2); the reader rejects a missing or unknown key.
std::string icnn_config_to_text(const IcnnConfig& config);
IcnnConfig icnn_config_from_text(const std::string& text);

// An input-convex network x -> R: z1 = leaky(A0 x)^2, z(l+1) = leaky(W_l z_l +
// A_l x), output W_L z_L + A_L x, with leaky the leaky ReLU of slope 0.2
// (convex, non-decreasing). Convex in x whenever every W_l is non-negative.
class IcnnImpl : public torch::nn::Module {
 public:
  IcnnImpl(int64_t dim, int64_t width, int64_t depth);
  torch::Tensor forward(const torch::Tensor& x);  // [n, dim] -> [n]
  // Sets the negative entries of the W_l (the paths from one layer to the next) to 0.
  void clamp_weights();
  // Sum over the W_l of the squared Frobenius norm of their negative parts.
  torch::Tensor negative_weight_penalty();
  // The smallest entry of any W_l (>= 0: the network is convex).
  double min_weight();

 private:
  torch::nn::ModuleList input_;  // A_0 .. A_L: from x, with bias
  torch::nn::ModuleList hidden_;  // W_1 .. W_L: from the previous layer, no bias
};
TORCH_MODULE(Icnn);

class IcnnPairImpl : public torch::nn::Module {
 public:
  explicit IcnnPairImpl(const IcnnConfig& config);
  Icnn f{nullptr}, g{nullptr};
};
TORCH_MODULE(IcnnPair);

struct IcnnModel {
  IcnnConfig config;
  IcnnPair net{nullptr};
  torch::Device device = torch::kCPU;
  TrainState train_state;  // always empty: an ICNN fit is not resumable (two optimisers)
};

std::shared_ptr<IcnnModel> make_icnn_model(const IcnnConfig& config, const std::string& device);

// grad_x net(x), [n, dim]; with create_graph the result stays differentiable in the weights.
torch::Tensor icnn_gradient(Icnn& net, const torch::Tensor& x, bool create_graph);

// Fits f and g on source and target cells ([n, dim] each, any float dtype,
// CPU): config.batch_size cells of each side per step. Steps are optimiser
// steps: of every inner_steps + 1, the first inner_steps update g on
// f(grad g(x)) - <x, grad g(x)> (+ the penalty), the last updates f on
// f(y) - f(grad g(x)). The loss history holds each step's own loss.
// std::invalid_argument for unusable data or settings; config.resume is refused.
TrainResult train_icnn(IcnnModel& model, const torch::Tensor& source, const torch::Tensor& target,
                       const TrainConfig& config, const TrainCallbacks& callbacks = {});

// Predicted target cells grad g(x), [n, dim] on the CPU, chunk_size rows at a time.
torch::Tensor icnn_transport(IcnnModel& model, const torch::Tensor& x, int64_t chunk_size, int threads);
// The potential g(x), [n] on the CPU.
torch::Tensor icnn_potential(IcnnModel& model, const torch::Tensor& x, int64_t chunk_size, int threads);

std::string save_icnn_model(const IcnnModel& model, const std::string& metadata = "");
std::shared_ptr<IcnnModel> load_icnn_model(const std::string& bytes, const std::string& device = "cpu",
                                           std::string* metadata = nullptr);

}  // namespace popflow

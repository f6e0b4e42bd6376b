// Meta Flow Matching (MFM) and conditional generator flow matching (CGFM):
// a velocity field conditioned on a learned embedding of the whole source
// population (MFM) and/or on known labels of the population (both). The
// field, the population encoder and the label embeddings form one module,
// trained end to end (Algorithm 1) and saved as one model file of kind "popflow-meta" (its name predates the rename).
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "model.h"
#include "network.h"
#include "ode.h"
#include "encoders.h"
#include "trainer.h"

namespace popflow {

constexpr const char* kPopulationModelKind = "popflow-meta";

// PopulationConfig (config.h) holds the encoder, labels and schedule; config_text.h its text form.

class PopulationNetImpl : public torch::nn::Module {
 public:
  PopulationNetImpl(const NetworkConfig& network, const PopulationConfig& population);
  // Conditioning rows [P, cond_dim] of P populations: [embedding, label
  // embeddings, covariates]. Undefined arguments for parts the model lacks.
  // Label code -1 (a value not seen in training) stands for the mean of that
  // label's learnt embeddings.
  torch::Tensor condition(const torch::Tensor& embedding, const torch::Tensor& labels,
                          const torch::Tensor& covariates);

  VectorField field{nullptr};
  PopulationEncoder encoder{nullptr};
  torch::nn::ModuleList label_embeddings;
};
TORCH_MODULE(PopulationNet);

struct PopulationModel {
  FlowConfig config;  // network.cond_dim = population.cond_dim()
  PopulationConfig population;
  PopulationNet net{nullptr};
  torch::Device device = torch::kCPU;
  TrainState train_state;  // for resuming training (an optional block of the model file)
  // The velocity field as a plain flow model (shares the parameters), for the ODE solvers.
  FlowModel flow() const;
};

// A new model with fresh weights; sets config.network.cond_dim and population.encoder.dim.
std::shared_ptr<PopulationModel> make_population_model(FlowConfig config, PopulationConfig population, const std::string& device);

// Training data: cells of all populations, each cell a source or a target cell.
struct PopulationSet {
  torch::Tensor x;                  // [N, d] cells
  std::vector<int64_t> side;        // per cell: 0 = source, 1 = target
  std::vector<int64_t> population;  // per cell: population id in [0, P)
  torch::Tensor labels;             // [P, n_categorical] long codes, or undefined
  torch::Tensor covariates;         // [P, n_covariates], or undefined
};

std::string validate_population_set(const PopulationModel& model, const PopulationSet& data);

// Algorithm 1: each step draws population.populations_per_step populations and
// population.cells_per_population source and target cells from each (the
// TrainConfig's batch_size and groups_per_step are not used), couples them within
// the population, and regresses v(x_t, t | phi(source population), labels).
// The kNN graphs are built once, before the first step. Paired coupling pairs
// a population's j-th source cell with its j-th target cell (in data.x order)
// and needs as many of each (std::invalid_argument naming the population).
TrainResult train_population_model(PopulationModel& model, const PopulationSet& data, const TrainConfig& config,
                       const TrainCallbacks& callbacks = {});

// Unit-length embeddings [P, E] of populations given by their source cells.
torch::Tensor embed_populations(PopulationModel& model, const std::vector<torch::Tensor>& sources);

// Algorithm 2: conditioning rows [P, cond_dim] for populations given by their
// source cells (embedded once each) and their labels / covariates ([P, .]).
torch::Tensor population_condition(PopulationModel& model, const std::vector<torch::Tensor>& sources,
                                   const torch::Tensor& labels, const torch::Tensor& covariates);

std::string save_population_model(const PopulationModel& model, const std::string& metadata = "");
std::shared_ptr<PopulationModel> load_population_model(const std::string& bytes, const std::string& device = "cpu",
                                           std::string* metadata = nullptr);

}  // namespace popflow

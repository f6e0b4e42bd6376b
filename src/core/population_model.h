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

class PopulationStore;

// Training cells as blocks, wherever they live (in memory or in a population
// store): population p draws its source cells from block source_block(p) and
// its target cells from block target_block(p). Populations may share a
// source block (a shared control set): it then has one graph and one embedding.
class PopulationData {
 public:
  virtual ~PopulationData() = default;
  virtual int64_t dim() const = 0;
  virtual int64_t populations() const = 0;
  virtual int64_t blocks() const = 0;
  virtual int64_t block_size(int64_t b) const = 0;
  virtual int64_t source_block(int64_t p) const = 0;
  virtual int64_t target_block(int64_t p) const = 0;
  virtual torch::Tensor labels() const = 0;      // [P, n_categorical] long, or undefined
  virtual torch::Tensor covariates() const = 0;  // [P, n_covariates], or undefined
  // A block's cells, [n, dim] float on the CPU. Thread-safe: the prefetcher calls it.
  virtual torch::Tensor block_cells(int64_t b) const = 0;
  // True when block_cells() reads a file (the objective then reads a step's blocks ahead).
  virtual bool on_disk() const = 0;
  // In memory: the cells of all blocks ([N, dim]) and each block's rows in it;
  // a step then selects its rows without copying blocks. Undefined / empty on disk.
  virtual torch::Tensor all_cells() const { return torch::Tensor(); }
  virtual const std::vector<std::vector<int64_t>>* block_rows() const { return nullptr; }
};

// The cells of a store, with the populations' labels and covariates in the
// engine's form (one row per store population; undefined when the model has none).
std::unique_ptr<PopulationData> store_population_data(std::shared_ptr<const PopulationStore> store,
                                                      torch::Tensor labels, torch::Tensor covariates);

// How training holds its graphs and reads its cells (not part of the model).
struct PopulationTraining {
  // kNN graphs are built when a step needs them and kept under this many
  // bytes, least recently used out (<= 0: no cap). Results do not depend on it.
  int64_t graph_cache_bytes = int64_t{1} << 30;
  // Read the next step's blocks and build its missing graphs on a background thread.
  bool prefetch = true;
  // Staged steps (TrainConfig::step_graph) propagate over the padded graph
  // batch by a gather and a scatter-add instead of the sparse product.
  bool scatter_propagation = false;
};

// What a fit did with its graphs (for benchmarks and tests).
// blocks_read_in_step: the blocks a draw read itself, which the prefetcher
// had not read ahead (with prefetching, only the first draw's).
struct PopulationTrainingStats {
  int64_t graphs_built = 0, graph_evictions = 0, graph_cache_peak_bytes = 0, blocks_read = 0, blocks_read_in_step = 0;
};

// Algorithm 1: each step draws population.populations_per_step populations and
// population.cells_per_population source and target cells from each (the
// TrainConfig's batch_size and groups_per_step are not used), couples them within
// the population, and regresses v(x_t, t | phi(source population), labels).
// The kNN graphs are built when a step first needs them (PopulationTraining). Paired coupling pairs
// a population's j-th source cell with its j-th target cell (in data.x order)
// and needs as many of each (std::invalid_argument naming the population).
TrainResult train_population_model(PopulationModel& model, const PopulationSet& data, const TrainConfig& config,
                       const TrainCallbacks& callbacks = {}, const PopulationTraining& how = {},
                       PopulationTrainingStats* stats = nullptr);
// The same loop on cells given as blocks (a store). The graphs of source
// blocks are seeded by graph_seed + block; an in-memory PopulationSet's
// source block of population p is block p, so a store written with the same
// populations in the same order trains the same model.
TrainResult train_population_model(PopulationModel& model, PopulationData& data, const TrainConfig& config,
                       const TrainCallbacks& callbacks = {}, const PopulationTraining& how = {},
                       PopulationTrainingStats* stats = nullptr);

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

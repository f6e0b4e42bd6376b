#include "model.h"

#include <stdexcept>
#include <vector>

#include "config_text.h"
#include "model_file.h"
#include "paths.h"

namespace popflow {

double FlowModel::model_time(double t) const {
  const double a = config.times.front(), b = config.times.back();
  return b == a ? 0.0 : (t - a) / (b - a);
}

bool cuda_available() { return torch::cuda::is_available(); }

bool cuda_built() {
#ifdef POPFLOW_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    if (!cuda_available()) {
      if (cuda_built())
        throw std::runtime_error("device 'cuda' was requested but no usable CUDA device is visible (the linked "
                                 "LibTorch has CUDA; check nvidia-smi and CUDA_VISIBLE_DEVICES); use device = "
                                 "\"cpu\" or a machine with an NVIDIA GPU and driver");
      throw std::runtime_error("device 'cuda' was requested but the linked LibTorch has no usable CUDA device; "
                               "use device = \"cpu\" or build popflow against a CUDA LibTorch");
    }
    return torch::Device(name);
  }
  throw std::runtime_error("unknown device '" + name + "'; use \"cpu\" or \"cuda\"");
}

std::shared_ptr<FlowModel> make_model(const FlowConfig& config, const std::string& device) {
  const std::string source = source_problem(config.source, config.path.kind, config.network.dim);
  if (!source.empty()) throw std::invalid_argument(source);
  auto model = std::make_shared<FlowModel>();
  model->config = config;
  // An unbalanced flow learns a growth rate with its velocity, always and only.
  model->config.network.growth = config.coupling.kind == CouplingKind::Unbalanced;
  model->device = parse_device(device);
  model->net = VectorField(model->config.network);
  model->net->to(model->device);
  return model;
}

std::string save_model(const FlowModel& model, const std::string& metadata) {
  std::vector<std::string> blocks{flow_config_to_text(model.config), module_bytes(*model.net.ptr(), model.device),
                                  metadata};
  if (model.config.source.kind != SourceKind::Gaussian) blocks.push_back(source_to_bytes(model.config.source));
  if (model.train_state.step > 0) blocks.push_back(train_state_to_bytes(model.train_state));
  return pack_model_file(kModelKind, blocks);
}

std::shared_ptr<FlowModel> load_model(const std::string& bytes, const std::string& device,
                                      std::string* metadata) {
  std::string kind;
  std::vector<std::string> blocks = unpack_model_file(bytes, &kind);
  if (kind != kModelKind) throw std::runtime_error("model file holds a '" + kind + "', not a popflow flow model");
  FlowConfig config = blocks.empty() ? FlowConfig() : flow_config_from_text(blocks[0]);
  // A non-Gaussian source is the block after the metadata.
  const size_t n_fixed = config.source.kind == SourceKind::Gaussian ? 3 : 4;
  if (blocks.size() < n_fixed) throw std::runtime_error("model file is truncated");
  if (blocks.size() > n_fixed + 1) throw std::runtime_error("model file has trailing bytes");
  if (n_fixed == 4) source_from_bytes(blocks[3], &config.source, config.network.dim);
  if (metadata) *metadata = std::move(blocks[2]);
  auto model = build_from_model_file([&] {
    auto m = make_model(config, "cpu");
    load_module_bytes(*m->net, blocks[1]);
    return m;
  });
  if (blocks.size() == n_fixed + 1)
    model->train_state = train_state_from_bytes(blocks[n_fixed], parameter_count(*model->net));
  model->device = parse_device(device);
  model->net->to(model->device);
  return model;
}

}  // namespace popflow

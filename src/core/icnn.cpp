#include "icnn.h"

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <vector>

#include "config_text.h"
#include "model.h"
#include "model_file.h"
#include "threads.h"

namespace popflow {

// ------------------------------------------------------------------ config

std::string icnn_config_to_text(const IcnnConfig& c) {
  return TextWriter()
      .put("dim", c.dim)
      .put("width", c.width)
      .put("depth", c.depth)
      .put("inner_steps", c.inner_steps)
      .put("g_convexity", c.clamp_g ? "clamp" : "penalty")
      .put("g_penalty", c.g_penalty)
      .put("beta1", c.beta1)
      .put("beta2", c.beta2)
      .str();
}

IcnnConfig icnn_config_from_text(const std::string& text) {
  const ConfigText cfg(text, "ICNN configuration");
  IcnnConfig c;
  c.dim = cfg.count("dim", 1, 1e6);
  c.width = cfg.count("width", 1, 1e6);
  c.depth = cfg.count("depth", 1, 1e4);
  c.inner_steps = cfg.count("inner_steps", 1, 1e6);
  const std::string convexity = cfg.value("g_convexity");
  if (convexity != "penalty" && convexity != "clamp")
    throw cfg.error("g_convexity", "must be \"penalty\" or \"clamp\", not '" + convexity + "'");
  c.clamp_g = convexity == "clamp";
  c.g_penalty = cfg.number("g_penalty");
  if (!(c.g_penalty >= 0)) throw cfg.error("g_penalty", "must be >= 0");
  c.beta1 = cfg.number("beta1");
  c.beta2 = cfg.number("beta2");
  if (!(c.beta1 >= 0 && c.beta1 < 1)) throw cfg.error("beta1", "must be in [0, 1)");
  if (!(c.beta2 >= 0 && c.beta2 < 1)) throw cfg.error("beta2", "must be in [0, 1)");
  cfg.reject_unknown_keys();
  return c;
}

// ------------------------------------------------------------------ networks

namespace {

torch::Tensor leaky(const torch::Tensor& h) { return torch::leaky_relu(h, 0.2); }

}  // namespace

IcnnImpl::IcnnImpl(int64_t dim, int64_t width, int64_t depth) {
  if (dim < 1 || width < 1 || depth < 1) throw std::invalid_argument("ICNN dim, width and depth must be >= 1");
  input_ = register_module("input", torch::nn::ModuleList());
  hidden_ = register_module("hidden", torch::nn::ModuleList());
  for (int64_t l = 0; l <= depth; ++l)
    input_->push_back(torch::nn::Linear(torch::nn::LinearOptions(dim, l < depth ? width : 1).bias(true)));
  for (int64_t l = 1; l <= depth; ++l)
    hidden_->push_back(torch::nn::Linear(torch::nn::LinearOptions(width, l < depth ? width : 1).bias(false)));
  // Small uniform weights and zero biases, as in Makkuva et al. and CellOT:
  // the potential starts nearly flat, the map near a constant.
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    if (p.key().find("bias") != std::string::npos) p.value().zero_();
    else p.value().uniform_(-0.1, 0.1);
  }
}

torch::Tensor IcnnImpl::forward(const torch::Tensor& x) {
  auto z = leaky(input_[0]->as<torch::nn::Linear>()->forward(x));
  z = z * z;  // convex in x: a convex function of an affine map
  const size_t L = hidden_->size();
  for (size_t l = 0; l + 1 < L; ++l)
    z = leaky(hidden_[l]->as<torch::nn::Linear>()->forward(z) + input_[l + 1]->as<torch::nn::Linear>()->forward(x));
  return (hidden_[L - 1]->as<torch::nn::Linear>()->forward(z) + input_[L]->as<torch::nn::Linear>()->forward(x))
      .squeeze(1);
}

void IcnnImpl::clamp_weights() {
  torch::NoGradGuard no_grad;
  for (const auto& m : *hidden_) m->as<torch::nn::Linear>()->weight.clamp_min_(0);
}

torch::Tensor IcnnImpl::negative_weight_penalty() {
  torch::Tensor total;
  for (const auto& m : *hidden_) {
    const auto neg = torch::relu(-m->as<torch::nn::Linear>()->weight).pow(2).sum();
    total = total.defined() ? total + neg : neg;
  }
  return total;
}

double IcnnImpl::min_weight() {
  double lo = 0;
  bool first = true;
  for (const auto& m : *hidden_) {
    const double v = m->as<torch::nn::Linear>()->weight.min().item<double>();
    lo = first ? v : std::min(lo, v);
    first = false;
  }
  return lo;
}

IcnnPairImpl::IcnnPairImpl(const IcnnConfig& config) {
  f = register_module("f", Icnn(config.dim, config.width, config.depth));
  g = register_module("g", Icnn(config.dim, config.width, config.depth));
}

std::shared_ptr<IcnnModel> make_icnn_model(const IcnnConfig& config, const std::string& device) {
  if (config.inner_steps < 1) throw std::invalid_argument("ICNN inner_steps must be >= 1");
  auto model = std::make_shared<IcnnModel>();
  model->config = config;
  model->device = parse_device(device);
  model->net = IcnnPair(config);
  model->net->f->clamp_weights();  // f is convex from the start
  if (config.clamp_g) model->net->g->clamp_weights();
  model->net->to(model->device);
  return model;
}

torch::Tensor icnn_gradient(Icnn& net, const torch::Tensor& x, bool create_graph) {
  torch::AutoGradMode grad_mode(true);  // a prediction may run under NoGradGuard
  auto xr = x.detach().requires_grad_(true);
  auto y = net->forward(xr).sum();
  return torch::autograd::grad({y}, {xr}, {}, /*retain_graph=*/create_graph, /*create_graph=*/create_graph)[0];
}

// ------------------------------------------------------------------ training

namespace {

// Makkuva et al.'s min-max: g (the map's potential) minimises
// f(grad g(x)) - <x, grad g(x)>, f minimises f(y) - f(grad g(x)); g takes
// inner_steps steps per f step. f's hidden weights are clamped non-negative
// before every step that uses f, g's penalised or clamped.
class IcnnObjective : public TrainingObjective {
 public:
  IcnnObjective(IcnnModel& model, const torch::Tensor& source, const torch::Tensor& target)
      : model_(model), source_(source), target_(target) {}

  void prepare(const TrainConfig& config) override {
    if (config.batch_size < 1) throw std::invalid_argument("batch_size must be >= 1");
    batch_size_ = config.batch_size;
    const auto fopt = torch::TensorOptions().dtype(torch::kFloat).device(model_.device);
    x_ = source_.to(fopt);
    y_ = target_.to(fopt);
    source_rows_.resize(x_.size(0));
    target_rows_.resize(y_.size(0));
    for (size_t i = 0; i < source_rows_.size(); ++i) source_rows_[i] = static_cast<int64_t>(i);
    for (size_t i = 0; i < target_rows_.size(); ++i) target_rows_[i] = static_cast<int64_t>(i);
    AdamSettings adam = adam_settings(config);
    adam.beta1 = model_.config.beta1;
    adam.beta2 = model_.config.beta2;
    g_opt_ = std::make_unique<FlatAdam>(*model_.net->g, adam);
    f_opt_ = std::make_unique<FlatAdam>(*model_.net->f, adam);
  }

  torch::nn::Module& network() override { return *model_.net; }

  std::vector<FlatAdam*> optimisers() override { return {g_opt_.get(), f_opt_.get()}; }

  FlatAdam& optimiser(int64_t step) override { return f_step(step) ? *f_opt_ : *g_opt_; }

  torch::Tensor loss(int64_t step, std::mt19937_64& rng) override {
    auto& f = model_.net->f;
    auto& g = model_.net->g;
    f->clamp_weights();
    if (model_.config.clamp_g) g->clamp_weights();
    const auto dev = x_.device();
    const auto x = x_.index_select(0, draw_rows(source_rows_, batch_size_, rng).to(dev));
    if (f_step(step)) {
      const auto y = y_.index_select(0, draw_rows(target_rows_, batch_size_, rng).to(dev));
      const auto mapped = icnn_gradient(g, x, false).detach();
      return f->forward(y).mean() - f->forward(mapped).mean();
    }
    const auto mapped = icnn_gradient(g, x, true);
    auto loss = (f->forward(mapped) - (x * mapped).sum(1)).mean();
    if (!model_.config.clamp_g && model_.config.g_penalty > 0)
      loss = loss + model_.config.g_penalty * g->negative_weight_penalty();
    return loss;
  }

  std::string why_not_resumable() const override {
    return "an ICNN fit cannot be resumed (its two networks have optimisers of their own, which a model file does "
           "not keep); fit again with more steps";
  }

 private:
  bool f_step(int64_t step) const { return (step - 1) % (model_.config.inner_steps + 1) == model_.config.inner_steps; }

  IcnnModel& model_;
  const torch::Tensor &source_, &target_;
  int64_t batch_size_ = 0;
  torch::Tensor x_, y_;
  std::vector<int64_t> source_rows_, target_rows_;
  std::unique_ptr<FlatAdam> g_opt_, f_opt_;
};

std::string check_cells(const torch::Tensor& x, int64_t dim, const char* what) {
  if (!x.defined() || x.dim() != 2) return std::string(what) + " cells must be a 2-d matrix";
  if (x.size(1) != dim)
    return std::string(what) + " cells have " + std::to_string(x.size(1)) + " features, the model expects " +
           std::to_string(dim);
  if (x.size(0) < 2) return std::string(what) + " needs at least two cells";
  if (!torch::isfinite(x).all().item<bool>()) return std::string(what) + " cells contain NA, NaN or infinite values";
  return "";
}

// f(chunk) of every chunk of x, concatenated on the CPU.
torch::Tensor by_chunks(IcnnModel& model, const torch::Tensor& x, int64_t chunk_size, int threads,
                        const std::function<torch::Tensor(const torch::Tensor&)>& f) {
  if (!x.defined() || x.dim() != 2 || x.size(1) != model.config.dim)
    throw std::invalid_argument("cells must have " + std::to_string(model.config.dim) + " features");
  ThreadScope scope(threads);
  model.net->eval();
  const auto fopt = torch::TensorOptions().dtype(torch::kFloat).device(model.device);
  const int64_t n = x.size(0), chunk = std::max<int64_t>(chunk_size, 1);
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < n; i += chunk)
    out.push_back(f(x.slice(0, i, std::min(n, i + chunk)).to(fopt)).detach().to(torch::kCPU));
  if (out.empty()) return f(x.to(fopt)).detach().to(torch::kCPU);
  return torch::cat(out);
}

}  // namespace

TrainResult train_icnn(IcnnModel& model, const torch::Tensor& source, const torch::Tensor& target,
                       const TrainConfig& config, const TrainCallbacks& callbacks) {
  for (const std::string& problem : {check_cells(source, model.config.dim, "source"),
                                     check_cells(target, model.config.dim, "target")})
    if (!problem.empty()) throw std::invalid_argument(problem);
  IcnnObjective objective(model, source, target);
  TrainResult result = run_training(objective, config, callbacks, model.train_state);
  // The last f step may have left negative weights in f; g's decide convexity of the map.
  model.net->f->clamp_weights();
  if (model.config.clamp_g) model.net->g->clamp_weights();
  return result;
}

torch::Tensor icnn_transport(IcnnModel& model, const torch::Tensor& x, int64_t chunk_size, int threads) {
  return by_chunks(model, x, chunk_size, threads,
                   [&](const torch::Tensor& c) { return icnn_gradient(model.net->g, c, false); });
}

torch::Tensor icnn_potential(IcnnModel& model, const torch::Tensor& x, int64_t chunk_size, int threads) {
  torch::NoGradGuard no_grad;
  return by_chunks(model, x, chunk_size, threads, [&](const torch::Tensor& c) { return model.net->g->forward(c); });
}

// ------------------------------------------------------------------ model file

std::string save_icnn_model(const IcnnModel& model, const std::string& metadata) {
  return pack_model_file(kIcnnModelKind,
                         {icnn_config_to_text(model.config), module_bytes(*model.net.ptr(), model.device), metadata});
}

std::shared_ptr<IcnnModel> load_icnn_model(const std::string& bytes, const std::string& device,
                                           std::string* metadata) {
  std::string kind;
  std::vector<std::string> blocks = unpack_model_file(bytes, &kind);
  if (kind != kIcnnModelKind) throw std::runtime_error("model file holds a '" + kind + "', not a popflow ICNN model");
  if (blocks.size() < 3) throw std::runtime_error("model file is truncated");
  if (blocks.size() > 3) throw std::runtime_error("model file has trailing bytes");
  const IcnnConfig config = icnn_config_from_text(blocks[0]);
  if (metadata) *metadata = std::move(blocks[2]);
  auto model = build_from_model_file([&] {
    auto m = make_icnn_model(config, "cpu");
    load_module_bytes(*m->net, blocks[1]);
    return m;
  });
  model->device = parse_device(device);
  model->net->to(model->device);
  return model;
}

}  // namespace popflow

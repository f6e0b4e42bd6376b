#include "model.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

namespace popflow {
namespace {

const char kMagic[8] = {'P', 'O', 'P', 'F', 'L', 'O', 'W', '\n'};

// FNV-1a, 64 bit: detects truncation and bit flips; not a security measure.
uint64_t checksum(const char* data, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 1099511628211ULL;
  }
  return h;
}

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <typename T>
T get(const std::string& in, size_t& pos) {
  if (pos + sizeof(T) > in.size()) throw std::runtime_error("model file is truncated");
  T v;
  std::memcpy(&v, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return v;
}

std::string get_block(const std::string& in, size_t& pos) {
  uint64_t n = get<uint64_t>(in, pos);
  if (n > in.size() - pos) throw std::runtime_error("model file is truncated");
  std::string s = in.substr(pos, n);
  pos += n;
  return s;
}

template <typename E>
const char* enum_name(E v, const std::map<E, const char*>& names) {
  return names.at(v);
}

template <typename E>
E enum_value(const std::string& s, const std::map<E, const char*>& names, const char* what) {
  for (const auto& kv : names)
    if (s == kv.second) return kv.first;
  throw std::runtime_error(std::string("model configuration: unknown ") + what + " '" + s + "'");
}

const std::map<PathKind, const char*> kPathNames{
    {PathKind::ICFM, "icfm"}, {PathKind::SBCFM, "sbcfm"}, {PathKind::TargetFM, "targetfm"}};
const std::map<CouplingKind, const char*> kCouplingNames{
    {CouplingKind::Independent, "independent"}, {CouplingKind::ExactOT, "exact"}, {CouplingKind::Sinkhorn, "sinkhorn"}};
const std::map<OTMode, const char*> kModeNames{{OTMode::Resample, "resample"}, {OTMode::Permutation, "permutation"}};
const std::map<Activation, const char*> kActivationNames{{Activation::SELU, "selu"}, {Activation::SiLU, "silu"}};

const char kStateTag[] = "popflow-train-state-1\n";

void put_floats(std::string& out, const torch::Tensor& t) {
  if (!t.defined()) {
    put<uint64_t>(out, 0);
    return;
  }
  auto c = t.to(torch::kCPU, torch::kFloat).contiguous();
  put<uint64_t>(out, static_cast<uint64_t>(c.numel()));
  out.append(reinterpret_cast<const char*>(c.data_ptr<float>()), c.numel() * sizeof(float));
}

// A flat tensor of `n` floats, or of 0 when `optional` (undefined tensor).
torch::Tensor get_floats(const std::string& in, size_t& pos, int64_t n, bool optional, const char* what) {
  const uint64_t count = get<uint64_t>(in, pos);
  if (count == 0 && optional) return torch::Tensor();
  if (count != static_cast<uint64_t>(n))
    throw std::runtime_error(std::string("model file training state: '") + what + "' has " + std::to_string(count) +
                             " values, the network has " + std::to_string(n) + " parameters");
  if (count * sizeof(float) > in.size() - pos) throw std::runtime_error("model file training state is truncated");
  auto t = torch::empty({n}, torch::kFloat);
  std::memcpy(t.data_ptr<float>(), in.data() + pos, count * sizeof(float));
  pos += count * sizeof(float);
  return t;
}

}  // namespace

int64_t parameter_count(torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

std::string train_state_to_bytes(const TrainState& s) {
  std::string out(kStateTag);
  put<uint64_t>(out, static_cast<uint64_t>(s.step));
  put<uint64_t>(out, s.loss.size());
  out.append(reinterpret_cast<const char*>(s.loss.data()), s.loss.size() * sizeof(double));
  for (const auto* t : {&s.m, &s.v, &s.ema, &s.raw}) put_floats(out, *t);
  return out;
}

TrainState train_state_from_bytes(const std::string& in, int64_t n_params) {
  const size_t tag = std::strlen(kStateTag);
  if (in.compare(0, tag, kStateTag) != 0) throw std::runtime_error("model file training state: unknown layout");
  size_t pos = tag;
  TrainState s;
  const uint64_t step = get<uint64_t>(in, pos), n_loss = get<uint64_t>(in, pos);
  if (step < 1 || step > (1ULL << 40) || n_loss != step)
    throw std::runtime_error("model file training state: inconsistent step count");
  if (n_loss * sizeof(double) > in.size() - pos) throw std::runtime_error("model file training state is truncated");
  s.step = static_cast<int64_t>(step);
  s.loss.resize(n_loss);
  std::memcpy(s.loss.data(), in.data() + pos, n_loss * sizeof(double));
  pos += n_loss * sizeof(double);
  s.m = get_floats(in, pos, n_params, false, "m");
  s.v = get_floats(in, pos, n_params, false, "v");
  s.ema = get_floats(in, pos, n_params, true, "ema");
  s.raw = get_floats(in, pos, n_params, true, "raw");
  if (s.ema.defined() != s.raw.defined())
    throw std::runtime_error("model file training state: a moving average needs the raw weights too");
  if (pos != in.size()) throw std::runtime_error("model file training state has trailing bytes");
  return s;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write the checkpoint file '" + tmp + "'");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot replace the checkpoint file '" + path + "': " + why);
  }
}

std::string pack_model_file(const std::string& kind, const std::vector<std::string>& blocks) {
  std::string out(kMagic, sizeof(kMagic));
  put<uint32_t>(out, kModelFormatVersion);
  put<uint64_t>(out, kind.size());
  out += kind;
  for (const std::string& block : blocks) {
    put<uint64_t>(out, block.size());
    out += block;
  }
  put<uint64_t>(out, checksum(out.data(), out.size()));
  return out;
}

std::vector<std::string> unpack_model_file(const std::string& bytes, std::string* kind) {
  if (bytes.size() < sizeof(kMagic) + 4 + 8 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    throw std::runtime_error("not a popflow model file (bad header)");
  const size_t body = bytes.size() - 8;
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + body, 8);
  size_t pos = sizeof(kMagic);
  uint32_t version = get<uint32_t>(bytes, pos);
  if (version != kModelFormatVersion)
    throw std::runtime_error("model file format version " + std::to_string(version) +
                             " is not supported by this popflow (reads version " +
                             std::to_string(kModelFormatVersion) + ")");
  if (checksum(bytes.data(), body) != stored)
    throw std::runtime_error("model file is corrupted or truncated (checksum mismatch)");
  const std::string body_bytes = bytes.substr(0, body);
  std::string k = get_block(body_bytes, pos);
  std::vector<std::string> blocks;
  while (pos < body_bytes.size()) blocks.push_back(get_block(body_bytes, pos));
  if (kind) *kind = std::move(k);
  return blocks;
}

double FlowModel::model_time(double t) const {
  const double a = config.times.front(), b = config.times.back();
  return b == a ? 0.0 : (t - a) / (b - a);
}

bool cuda_available() { return torch::cuda::is_available(); }

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    if (!cuda_available())
      throw std::runtime_error("device 'cuda' was requested but the linked LibTorch has no usable CUDA device; "
                               "use device = \"cpu\" or build popflow against a CUDA LibTorch");
    return torch::Device(name);
  }
  throw std::runtime_error("unknown device '" + name + "'; use \"cpu\" or \"cuda\"");
}

std::shared_ptr<FlowModel> make_model(const FlowConfig& config, const std::string& device) {
  auto model = std::make_shared<FlowModel>();
  model->config = config;
  model->device = parse_device(device);
  model->net = VectorField(config.network);
  model->net->to(model->device);
  return model;
}

std::string config_to_text(const FlowConfig& c) {
  std::ostringstream os;
  os.precision(17);
  os << "path=" << kPathNames.at(c.path.kind) << "\n"
     << "sigma=" << c.path.sigma << "\n"
     << "sigma_min=" << c.path.sigma_min << "\n"
     << "coupling=" << kCouplingNames.at(c.coupling.kind) << "\n"
     << "ot_mode=" << kModeNames.at(c.coupling.mode) << "\n"
     << "sinkhorn_reg=" << c.coupling.sinkhorn_reg << "\n"
     << "sinkhorn_iters=" << c.coupling.sinkhorn_iters << "\n"
     << "dim=" << c.network.dim << "\n"
     << "cond_dim=" << c.network.cond_dim << "\n"
     << "width=" << c.network.width << "\n"
     << "depth=" << c.network.depth << "\n"
     << "residual=" << (c.network.residual ? 1 : 0) << "\n"
     << "activation=" << kActivationNames.at(c.network.activation) << "\n"
     << "time_dim=" << c.network.time_dim << "\n"
     << "fourier_features=" << c.network.fourier_features << "\n"
     << "fourier_scale=" << c.network.fourier_scale << "\n"
     << "times=";
  for (size_t i = 0; i < c.times.size(); ++i) os << (i ? "," : "") << c.times[i];
  os << "\n";
  return os.str();
}

ConfigText::ConfigText(const std::string& text, std::string what) : what_(std::move(what)) {
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos) throw std::runtime_error(what_ + ": malformed line '" + line + "'");
    values_[line.substr(0, eq)] = line.substr(eq + 1);
  }
}

const std::string& ConfigText::value(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw std::runtime_error(what_ + ": missing '" + key + "'");
  return it->second;
}

double ConfigText::parse_number(const std::string& text, const std::string& key) const {
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument("trailing characters");
    return v;
  } catch (const std::logic_error&) {
    throw std::runtime_error(what_ + ": bad number for '" + key + "'");
  }
}

double ConfigText::number(const std::string& key) const { return parse_number(value(key), key); }

int64_t ConfigText::count(const std::string& key, double lo, double hi) const {
  double v = number(key);
  if (!(v >= lo && v <= hi)) throw std::runtime_error(what_ + ": '" + key + "' out of range");
  return static_cast<int64_t>(v);
}

FlowConfig config_from_text(const std::string& text) {
  const ConfigText cfg(text, "model configuration");
  FlowConfig c;
  c.path.kind = enum_value(cfg.value("path"), kPathNames, "path");
  c.path.sigma = cfg.number("sigma");
  c.path.sigma_min = cfg.number("sigma_min");
  c.coupling.kind = enum_value(cfg.value("coupling"), kCouplingNames, "coupling");
  c.coupling.mode = enum_value(cfg.value("ot_mode"), kModeNames, "ot_mode");
  c.coupling.sinkhorn_reg = cfg.number("sinkhorn_reg");
  c.coupling.sinkhorn_iters = static_cast<int>(cfg.count("sinkhorn_iters", 1, 1e7));
  c.network.dim = cfg.count("dim", 1, 1e6);
  c.network.cond_dim = cfg.count("cond_dim", 0, 1e6);
  c.network.width = cfg.count("width", 1, 1e6);
  c.network.depth = cfg.count("depth", 1, 1e4);
  c.network.residual = cfg.count("residual", 0, 1) == 1;
  c.network.activation = enum_value(cfg.value("activation"), kActivationNames, "activation");
  c.network.time_dim = cfg.count("time_dim", 0, 1e5);
  c.network.fourier_features = cfg.count("fourier_features", 0, 1e6);
  c.network.fourier_scale = cfg.number("fourier_scale");
  c.times.clear();
  std::istringstream ts(cfg.value("times"));
  std::string item;
  while (std::getline(ts, item, ',')) {
    try {
      c.times.push_back(cfg.parse_number(item, "times"));
    } catch (const std::runtime_error&) {
      throw std::runtime_error("model configuration: bad time value");
    }
  }
  if (c.times.size() < 2) throw std::runtime_error("model configuration: fewer than two snapshot times");
  return c;
}

std::string module_bytes(torch::nn::Module& net, const torch::Device& device) {
  std::ostringstream out;
  torch::serialize::OutputArchive archive;
  const bool on_cpu = device.is_cpu();
  if (!on_cpu) net.to(torch::kCPU);
  net.save(archive);
  archive.save_to(out);
  if (!on_cpu) net.to(device);
  return out.str();
}

void load_module_bytes(torch::nn::Module& net, const std::string& bytes) {
  auto shapes = [&net] {
    std::map<std::string, std::vector<int64_t>> out;
    for (const auto& p : net.named_parameters()) out[p.key()] = p.value().sizes().vec();
    for (const auto& b : net.named_buffers()) out[b.key()] = b.value().sizes().vec();
    return out;
  };
  const auto expected = shapes();
  std::istringstream is(bytes);
  torch::serialize::InputArchive archive;
  archive.load_from(is);
  net.load(archive);
  if (shapes() != expected) throw std::runtime_error("model file parameters do not match its configuration");
}

std::string save_model(const FlowModel& model, const std::string& metadata) {
  std::vector<std::string> blocks{config_to_text(model.config), module_bytes(*model.net.ptr(), model.device),
                                  metadata};
  if (model.train_state.step > 0) blocks.push_back(train_state_to_bytes(model.train_state));
  return pack_model_file(kModelKind, blocks);
}

std::shared_ptr<FlowModel> load_model(const std::string& bytes, const std::string& device,
                                      std::string* metadata) {
  std::string kind;
  std::vector<std::string> blocks = unpack_model_file(bytes, &kind);
  if (kind != kModelKind) throw std::runtime_error("model file holds a '" + kind + "', not a popflow flow model");
  if (blocks.size() < 3) throw std::runtime_error("model file is truncated");
  if (blocks.size() > 4) throw std::runtime_error("model file has trailing bytes");
  FlowConfig config = config_from_text(blocks[0]);
  if (metadata) *metadata = std::move(blocks[2]);
  std::shared_ptr<FlowModel> model;
  try {
    model = make_model(config, "cpu");
    load_module_bytes(*model->net, blocks[1]);
  } catch (const c10::Error& e) {
    throw std::runtime_error(std::string("model file parameters are unreadable: ") + e.what_without_backtrace());
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("model configuration is invalid: ") + e.what());
  }
  if (blocks.size() == 4) model->train_state = train_state_from_bytes(blocks[3], parameter_count(*model->net));
  model->device = parse_device(device);
  model->net->to(model->device);
  return model;
}

}  // namespace popflow

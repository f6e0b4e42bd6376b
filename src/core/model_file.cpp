#include "model_file.h"

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

const char kStateTag[] = "popflow-train-state-1\n";
const char kSourceTag[] = "popflow-source-1\n";

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

int64_t parameter_count(torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
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

std::string source_to_bytes(const SourceConfig& source) {
  std::string out(kSourceTag);
  put<uint64_t>(out, source.values.size());
  out.append(reinterpret_cast<const char*>(source.values.data()), source.values.size() * sizeof(double));
  return out;
}

void source_from_bytes(const std::string& in, SourceConfig* source, int64_t dim) {
  const size_t tag = std::strlen(kSourceTag);
  if (in.compare(0, tag, kSourceTag) != 0) throw std::runtime_error("model file source: unknown layout");
  size_t pos = tag;
  const uint64_t n = get<uint64_t>(in, pos);
  if (n != static_cast<uint64_t>(source->rows * dim) || n * sizeof(double) != in.size() - pos)
    throw std::runtime_error("model file source: expected " + std::to_string(source->rows) + " rows of " +
                             std::to_string(dim) + " values");
  source->values.resize(n);
  std::memcpy(source->values.data(), in.data() + pos, n * sizeof(double));
}

}  // namespace popflow

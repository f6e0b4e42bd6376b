// Flow model files (model.h, model_file.h): round trips, damaged files, devices.
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "config_text.h"
#include "fixtures.h"
#include "model.h"
#include "model_file.h"

using namespace popflow;
using namespace fixtures;

namespace {

FlowConfig format_config() {
  FlowConfig c;
  c.path.kind = PathKind::SBCFM;
  c.path.sigma = 0.37;
  c.coupling.kind = CouplingKind::ExactOT;
  c.coupling.mode = OTMode::Permutation;
  c.coupling.sinkhorn_reg = 0.123456789012345;
  c.network.dim = 3;
  c.network.width = 16;
  c.network.depth = 2;
  c.network.residual = true;
  c.network.activation = Activation::SiLU;
  c.network.fourier_features = 4;
  c.network.fourier_scale = 0.7;
  c.times = {0.0, 1.5, 2.25};
  return c;
}

// `bytes` with the first `from` replaced by `to`, under a valid checksum
// (what a buggy writer would produce).
std::string forged(const std::string& bytes, const std::string& from, const std::string& to) {
  std::string b = bytes;
  auto at = b.find(from);
  PF_CHECK(at != std::string::npos);
  if (at != std::string::npos) b.replace(at, from.size(), to);
  fix_checksum(b);
  return b;
}

}  // namespace

TEST_CASE("model: save/load round-trips configuration and parameters exactly") {
  torch::manual_seed(21);
  auto model = make_model(format_config(), "cpu");
  const std::string bytes = save_model(*model);
  auto loaded = load_model(bytes);
  PF_CHECK(flow_config_to_text(loaded->config) == flow_config_to_text(model->config));
  PF_CHECK(same_parameters(*model->net, *loaded->net));
  PF_CHECK(!model->net->named_buffers().is_empty());  // the Fourier matrix travels too
  auto x = torch::randn({7, 3});
  auto t = torch::rand({7});
  PF_CHECK(torch::equal(model->net->forward(x, t), loaded->net->forward(x, t)));
  PF_CHECK(save_model(*loaded) == bytes);  // the format is deterministic
  // The text form alone round-trips too.
  FlowConfig back = flow_config_from_text(flow_config_to_text(format_config()));
  PF_CHECK(flow_config_to_text(back) == flow_config_to_text(format_config()));
  PF_CHECK(back.coupling.sinkhorn_reg == format_config().coupling.sinkhorn_reg);
  PF_CHECK(back.times == format_config().times);
}

TEST_CASE("model: a non-Gaussian source travels in the model file") {
  FlowConfig c;
  c.path.kind = PathKind::TargetFM;
  c.network.dim = 2;
  c.network.width = 8;
  c.source.kind = SourceKind::Empirical;
  c.source.rows = 3;
  c.source.values = {1, 2, 3, 4, 5, 6.125};
  torch::manual_seed(2);
  auto model = make_model(c, "cpu");
  const std::string bytes = save_model(*model, "meta");
  std::string meta;
  auto loaded = load_model(bytes, "cpu", &meta);
  PF_CHECK(meta == "meta");
  PF_CHECK(loaded->config.source.kind == SourceKind::Empirical);
  PF_CHECK(loaded->config.source.values == c.source.values);
  PF_CHECK(save_model(*loaded, "meta") == bytes);
  // A training state follows the source block.
  loaded->train_state.step = 1;
  loaded->train_state.loss = {0.5};
  const int64_t n = parameter_count(*loaded->net);
  loaded->train_state.m = torch::zeros({n});
  loaded->train_state.v = torch::zeros({n});
  auto again = load_model(save_model(*loaded, "meta"));
  PF_CHECK(again->train_state.step == 1 && again->config.source.values == c.source.values);
  // Wrong sizes are refused when the model is made.
  c.source.values.pop_back();
  PF_CHECK_THROWS_AS(make_model(c, "cpu"), std::invalid_argument);
}

TEST_CASE("model: damaged files throw std::runtime_error") {
  torch::manual_seed(22);
  auto model = make_model(format_config(), "cpu");
  const std::string bytes = save_model(*model);
  auto expect_runtime_error = [&](const std::string& b, const std::string& what, const char* needle) {
    bool ok = false;
    try {
      load_model(b);
    } catch (const std::runtime_error& e) {
      ok = needle == nullptr || std::string(e.what()).find(needle) != std::string::npos;
      if (!ok) check::fail(__FILE__, __LINE__, what + ": message lacks '" + needle + "': " + e.what());
      return;
    } catch (const std::exception& e) {
      check::fail(__FILE__, __LINE__, what + ": wrong exception type: " + e.what());
      return;
    }
    check::fail(__FILE__, __LINE__, what + ": loaded without error");
  };
  // Truncations.
  for (size_t len : {size_t(0), size_t(1), size_t(8), size_t(12), size_t(19), size_t(20), size_t(40),
                     bytes.size() / 2, bytes.size() - 9, bytes.size() - 8, bytes.size() - 1})
    expect_runtime_error(bytes.substr(0, len), "truncated to " + std::to_string(len), nullptr);
  // Single-bit flips everywhere in the header and trailer, and spread over the body.
  std::vector<size_t> positions;
  for (size_t i = 0; i < 64; ++i) positions.push_back(i);
  for (size_t i = 64; i < bytes.size(); i += std::max<size_t>(1, bytes.size() / 300)) positions.push_back(i);
  for (size_t i = bytes.size() - 16; i < bytes.size(); ++i) positions.push_back(i);
  for (size_t pos : positions)
    for (int bit : {0, 7}) {
      std::string b = bytes;
      b[pos] = static_cast<char>(b[pos] ^ (1 << bit));
      expect_runtime_error(b, "bit " + std::to_string(bit) + " flipped at " + std::to_string(pos), nullptr);
    }
  // Wrong magic.
  std::string magic = bytes;
  magic[0] = 'X';
  fix_checksum(magic);
  expect_runtime_error(magic, "wrong magic", "header");
  // Wrong version, with and without a consistent checksum.
  for (uint32_t v : {0u, 2u, 0xffffffffu}) {
    std::string b = bytes;
    std::memcpy(&b[8], &v, 4);
    expect_runtime_error(b, "version " + std::to_string(v), "version");
    fix_checksum(b);
    expect_runtime_error(b, "version " + std::to_string(v) + " (valid checksum)", "version");
  }
  // Wrong kind and broken configuration, with valid checksums (what a buggy writer would produce).
  auto replace = [&](const std::string& from, const std::string& to) { return forged(bytes, from, to); };
  expect_runtime_error(replace("popflow-flow", "popflow-flox"), "wrong kind", "popflow-flox");
  expect_runtime_error(replace("path=sbcfm", "path=sbcfx"), "unknown path", "path");
  expect_runtime_error(replace("width=16", "width=xx"), "bad number", "width");
  expect_runtime_error(replace("depth=2", "depth=0"), "depth out of range", "depth");
  expect_runtime_error(replace("times=0,1.5,2.25", "times=0,1.5,2.x5"), "bad time", "time");
  expect_runtime_error(replace("\nsigma=", "\nsigmb="), "missing key", "sigma");
}

TEST_CASE("model: random mutations either load or throw (fuzz)") {
  torch::manual_seed(23);
  FlowConfig cfg = format_config();
  cfg.network.width = 8;
  auto model = make_model(cfg, "cpu");
  const std::string bytes = save_model(*model);
  const std::string cfg_text = flow_config_to_text(model->config);
  const size_t kind_at = bytes.find(kModelKind), cfg_at = bytes.find(cfg_text);
  PF_CHECK(kind_at != std::string::npos && cfg_at != std::string::npos);
  std::mt19937_64 rng(23);
  auto uniform = [&](size_t lo, size_t hi) { return std::uniform_int_distribution<size_t>(lo, hi)(rng); };
  int loaded = 0, threw = 0, loaded_forged = 0, threw_forged = 0;
  auto attempt = [&](const std::string& b, int& ok, int& bad) {
    try {
      auto m = load_model(b);
      auto y = m->net->forward(torch::zeros({2, m->config.network.dim}), torch::zeros({2}),
                               torch::zeros({2, m->config.network.cond_dim}));
      ok += torch::isfinite(y).all().item<bool>() ? 1 : 0;
    } catch (const std::exception&) {
      ++bad;
    }
  };
  // 1. Any mutation anywhere, checksum left as it is.
  const int n_plain = 3000;
  for (int k = 0; k < n_plain; ++k) {
    std::string b = bytes;
    const int n_edits = static_cast<int>(uniform(1, 3));
    for (int e = 0; e < n_edits && !b.empty(); ++e) {
      switch (uniform(0, 4)) {
        case 0:  // truncate
          b.resize(uniform(0, b.size() - 1));
          break;
        case 1:  // change a random byte
          b[uniform(0, b.size() - 1)] ^= static_cast<char>(uniform(1, 255));
          break;
        case 2:  // insert random bytes
          b.insert(uniform(0, b.size()), std::string(uniform(1, 16), static_cast<char>(uniform(0, 255))));
          break;
        case 3: {  // delete a range
          size_t at = uniform(0, b.size() - 1);
          b.erase(at, uniform(1, 32));
          break;
        }
        default: {  // overwrite a run of bytes
          size_t at = uniform(0, b.size() - 1);
          for (size_t i = at; i < std::min(b.size(), at + 8); ++i) b[i] = static_cast<char>(uniform(0, 255));
        }
      }
    }
    attempt(b, loaded, threw);
  }
  // 2. Mutations with a forged (valid) checksum, so they reach the kind check
  // and the configuration parser: byte changes inside the kind and
  // configuration text, and truncations anywhere. (Not inside the parameter
  // archive: LibTorch 1.13's archive reader, torch::jit::load, can segfault on
  // a corrupted archive; the checksum is what keeps damaged files from it.)
  const int n_forged = 2000;
  const std::string alphabet = "=,.\n-+e0123456789abcdefghijklmnopqrstuvwxyz_ \x01\xff";
  for (int k = 0; k < n_forged; ++k) {
    std::string b = bytes;
    if (k % 10 == 0) {
      b.resize(uniform(0, b.size() - 1));
    } else {
      const int n_edits = static_cast<int>(uniform(1, 3));
      for (int e = 0; e < n_edits; ++e) {
        const size_t at = uniform(0, 7) == 0 ? kind_at + uniform(0, std::strlen(kModelKind) - 1)
                                             : cfg_at + uniform(0, cfg_text.size() - 1);
        b[at] = alphabet[uniform(0, alphabet.size() - 1)];
      }
    }
    fix_checksum(b);
    attempt(b, loaded_forged, threw_forged);
  }
  std::printf("  fuzz: %d mutations, checksum kept: %d loaded, %d threw; %d with forged checksum: %d loaded, %d threw\n",
              n_plain, loaded, threw, n_forged, loaded_forged, threw_forged);
  PF_CHECK(loaded + threw == n_plain && loaded_forged + threw_forged == n_forged);
  PF_CHECK(loaded == 0);  // without a valid checksum nothing gets through
  PF_CHECK(threw_forged > n_forged / 2);
}

TEST_CASE("model: parameters that do not fit the configuration are rejected") {
  torch::manual_seed(24);
  auto model = make_model(format_config(), "cpu");
  const std::string bytes = save_model(*model);
  // (Not covered: torch's Module::load ignores archive entries the network
  // lacks, so a forged "residual=0" or smaller depth whose remaining shapes
  // match would load.)
  for (auto [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"width=16", "width=17"}, {"\ndim=3", "\ndim=4"}, {"depth=2", "depth=3"},
           {"fourier_features=4", "fourier_features=6"}, {"time_dim=16", "time_dim=17"}}) {
    const std::string msg = thrown_message([&] { load_model(forged(bytes, from, to)); });
    PF_CHECK_MSG(!msg.empty(), from << " -> " << to << " loaded");
    bool is_runtime = false;
    try {
      load_model(forged(bytes, from, to));
    } catch (const std::runtime_error&) {
      is_runtime = true;
    } catch (...) {
    }
    PF_CHECK_MSG(is_runtime, from << " -> " << to << ": " << msg);
  }
  // A parameter archive replaced by garbage of the same length.
  const std::string cfg_text = flow_config_to_text(model->config);
  const size_t params_at = bytes.find(cfg_text) + cfg_text.size() + 8;
  uint64_t params_len = 0;
  std::memcpy(&params_len, bytes.data() + params_at - 8, 8);
  PF_CHECK(params_len > 100 && params_at + params_len <= bytes.size() - 8);
  std::string b = bytes;
  for (size_t i = 0; i < params_len; ++i) b[params_at + i] = static_cast<char>('a' + i % 26);
  fix_checksum(b);
  PF_CHECK_THROWS_AS(load_model(b), std::runtime_error);
}

TEST_CASE("device: cuda without CUDA is a clear error") {
  PF_CHECK(parse_device("cpu").is_cpu());
  PF_CHECK_THROWS_AS(parse_device("tpu"), std::runtime_error);
  if (!cuda_available()) {
    PF_CHECK_THROWS_AS(parse_device("cuda"), std::runtime_error);
    PF_CHECK_THROWS_AS(parse_device("cuda:0"), std::runtime_error);
    const std::string msg = thrown_message([] { parse_device("cuda"); });
    PF_CHECK_MSG(msg.find("cuda") != std::string::npos, msg);
    // A CUDA LibTorch without a GPU is told apart from a CPU-only one.
    const std::string cause = cuda_built() ? "no usable CUDA device is visible" : "build popflow against a CUDA LibTorch";
    PF_CHECK_MSG(msg.find(cause) != std::string::npos, msg);
    PF_CHECK_THROWS_AS(make_model(small_flow(2), "cuda"), std::runtime_error);
    auto model = make_model(small_flow(2), "cpu");
    PF_CHECK_THROWS_AS(load_model(save_model(*model), "cuda"), std::runtime_error);
  } else {
    PF_CHECK(parse_device("cuda").is_cuda());
    PF_CHECK_MSG(cuda_built(), "a GPU is usable, but the build did not define POPFLOW_TORCH_CUDA");
  }
}

// Population stores (population_store.h), the graph cache (graph_cache.h) and
// training a population model from a store.
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "fixtures.h"
#include "graph_cache.h"
#include "population_model.h"
#include "population_store.h"

using namespace popflow;
using namespace fixtures;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("popflow_test_" + name)).string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// FNV-1a 64 with the standard offset basis, as the store's checksums use (fixtures::fnv1a is the model file's).
uint64_t store_fnv1a(const char* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= 0x100000001b3ULL;
  }
  return h;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A PopulationSet written as a store: block p = population p's source cells,
// block P + p its target cells (the in-memory block numbering), rows given in reverse order.
void write_set(const PopulationSet& data, int64_t n_pop, const std::string& path) {
  StoreLayout layout;
  layout.dim = data.x.size(1);
  std::vector<int64_t> counts(2 * n_pop, 0);
  for (size_t i = 0; i < data.side.size(); ++i) ++counts[(data.side[i] ? n_pop : 0) + data.population[i]];
  for (int64_t b = 0; b < 2 * n_pop; ++b) layout.blocks.push_back({"b" + std::to_string(b), 0, counts[b], {}});
  for (int64_t p = 0; p < n_pop; ++p) layout.populations.push_back({"p" + std::to_string(p), p, n_pop + p});
  StoreWriter writer(path, layout);
  std::vector<int64_t> first(2 * n_pop, 0), seen(2 * n_pop, 0);
  for (int64_t b = 1; b < 2 * n_pop; ++b) first[b] = first[b - 1] + counts[b - 1];
  const int64_t n = data.x.size(0);
  std::vector<int64_t> dest(n), block(n);
  for (int64_t i = 0; i < n; ++i) {
    block[i] = (data.side[i] ? n_pop : 0) + data.population[i];
    dest[i] = first[block[i]] + seen[block[i]]++;
  }
  auto x = data.x.to(torch::kFloat).contiguous();
  for (int64_t i = n - 1; i >= 0; --i) writer.write(x[i].data_ptr<float>(), 1, &dest[i], &block[i]);
  writer.finish();
}

}  // namespace

TEST_CASE("population store: round trip, means, checks on opening") {
  torch::manual_seed(7);
  auto data = mean_shift_populations({{0, 0}, {2, 1}, {-1, 3}}, 30);
  const std::string path = temp_path("store_round_trip");
  write_set(data, 3, path);
  PopulationStore store(path);
  PF_CHECK(store.dim() == 2 && store.cells() == 180);
  PF_CHECK(store.layout().blocks.size() == 6 && store.layout().populations.size() == 3);
  PF_CHECK(store.layout().populations[1].source == 1 && store.layout().populations[1].target == 4);
  for (int64_t p = 0; p < 3; ++p) {
    std::vector<int64_t> rows;
    for (size_t i = 0; i < data.side.size(); ++i)
      if (data.population[i] == p && data.side[i] == 0) rows.push_back(static_cast<int64_t>(i));
    auto expected = data.x.index_select(0, torch::tensor(rows));
    auto got = store.read_block(p);
    PF_CHECK(torch::equal(got, expected.to(torch::kFloat)));
    PF_CHECK_NEAR(store.layout().blocks[p].mean[1], expected.select(1, 1).mean().item<double>(), 1e-5);
  }
  store.verify();
  const std::string bytes = read_file(path);
  // Truncated, foreign, and a header from another format version.
  write_file(path + ".cut", bytes.substr(0, bytes.size() - 5));
  PF_CHECK(thrown_message([&] { PopulationStore s(path + ".cut"); }).find("is truncated") != std::string::npos);
  write_file(path + ".cut", bytes.substr(0, 20));
  PF_CHECK(thrown_message([&] { PopulationStore s(path + ".cut"); }).find("truncated") != std::string::npos);
  write_file(path + ".foreign", "not a store at all, but long enough to hold a header of a hundred bytes or so......");
  PF_CHECK(thrown_message([&] { PopulationStore s(path + ".foreign"); }).find("not a popflow population store") !=
           std::string::npos);
  PF_CHECK(thrown_message([&] { PopulationStore s(path + ".missing"); }).find("cannot open") != std::string::npos);
  // An unsorted table with valid checksums (as a foreign writer could make): block 1 starts one row late.
  std::string unsorted = bytes;
  uint64_t table_offset, table_bytes;
  std::memcpy(&table_offset, &unsorted[8 + 8 * 6], 8);
  std::memcpy(&table_bytes, &unsorted[8 + 8 * 7], 8);
  const size_t block1 = table_offset + (16 + 2 * 8 + 8 + 2);  // block 0: first, count, 2 means, name "b0"
  uint64_t first;
  std::memcpy(&first, &unsorted[block1], 8);
  ++first;
  std::memcpy(&unsorted[block1], &first, 8);
  uint64_t sum = store_fnv1a(&unsorted[table_offset], table_bytes);
  std::memcpy(&unsorted[8 + 8 * 9], &sum, 8);
  sum = store_fnv1a(unsorted.data(), 8 + 8 * 11);
  std::memcpy(&unsorted[8 + 8 * 11], &sum, 8);
  write_file(path + ".unsorted", unsorted);
  const std::string unsorted_error = thrown_message([&] { PopulationStore s(path + ".unsorted"); });
  PF_CHECK_MSG(unsorted_error.find("not sorted by block") != std::string::npos, unsorted_error);
  // A damaged cell: found by verify().
  std::string damaged = bytes;
  damaged[kStoreDataOffset + 3] ^= 1;
  write_file(path + ".damaged", damaged);
  PopulationStore opened(path + ".damaged");
  PF_CHECK(thrown_message([&] { opened.verify(); }).find("corrupted cells") != std::string::npos);
  // A writer must see every row once.
  StoreLayout two;
  two.dim = 1;
  two.blocks = {{"a", 0, 2, {}}};
  {
    StoreWriter w(path + ".partial", two);
    const float v[2] = {1, 2};
    const int64_t d0[1] = {0}, b0[1] = {0};
    w.write(v, 1, d0, b0);
    PF_CHECK(thrown_message([&] { w.write(v, 1, d0, b0); }).find("written twice") != std::string::npos);
    PF_CHECK(thrown_message([&] { w.finish(); }).find("were written") != std::string::npos);
  }
  for (const char* ext : {"", ".cut", ".foreign", ".unsorted", ".damaged"}) std::remove((path + ext).c_str());
}

TEST_CASE("graph cache: keeps the recently used graphs under its cap") {
  torch::manual_seed(8);
  auto g = std::make_shared<const PopulationGraph>(build_graph(torch::randn({20, 3}), 4, 0, 1));
  const int64_t size = graph_bytes(*g);
  PF_CHECK(size > 0);
  GraphCache cache(2 * size + size / 2);
  cache.insert(1, g);
  cache.insert(2, g);
  PF_CHECK(cache.find(1) != nullptr);  // 1 is now the most recent
  cache.insert(3, g);                  // evicts 2
  PF_CHECK(cache.contains(1) && !cache.contains(2) && cache.contains(3));
  PF_CHECK(cache.evictions() == 1 && cache.bytes() <= 2 * size + size / 2);
  GraphCache tiny(size / 2);
  tiny.insert(1, g);  // larger than the cap: not kept
  PF_CHECK(tiny.size() == 0 && tiny.bytes() == 0);
}

TEST_CASE("train_population_model: a store trains the model the same cells in memory train, under any graph cap") {
  torch::manual_seed(9);
  auto data = mean_shift_populations({{0, 0}, {1.5, 0}, {0, 1.5}, {-1.5, 0}, {0, -1.5}}, 40);
  const std::string path = temp_path("store_train");
  write_set(data, 5, path);
  auto config = small_population(EncoderKind::GCN, 2, 8, 16, 3);
  config.k = 5;
  TrainConfig tc;
  tc.steps = 12;
  tc.seed = 4;
  torch::manual_seed(1);
  auto mem = make_population_model(population_flow(), config, "cpu");
  auto res_mem = train_population_model(*mem, data, tc);
  torch::manual_seed(1);
  auto disk = make_population_model(population_flow(), config, "cpu");
  auto store = std::make_shared<const PopulationStore>(path);
  auto blocks = store_population_data(store, torch::Tensor(), torch::Tensor());
  PopulationTraining capped;
  capped.graph_cache_bytes = 1;  // nothing kept: every step rebuilds its graphs
  PopulationTrainingStats stats;
  auto res_disk = train_population_model(*disk, *blocks, tc, {}, capped, &stats);
  PF_CHECK(res_disk.loss.size() == res_mem.loss.size());
  for (size_t i = 0; i < res_mem.loss.size(); ++i) PF_CHECK_NEAR(res_disk.loss[i], res_mem.loss[i], 1e-6);
  PF_CHECK(same_parameters(*mem->net, *disk->net));
  PF_CHECK(stats.graphs_built >= tc.steps * 3 && stats.graph_cache_peak_bytes == 0 && stats.blocks_read > 0);
  std::remove(path.c_str());
}

// Population stores: cells written once to disk as float32 rows sorted by
// block (a block is one population's source or target cells, or a control
// set that several populations share as their source), with a table of the
// blocks' offsets and the populations' source and target blocks. Training
// reads the blocks a step needs with pread(); nothing passes through R.
//
// A plain binary file, not HDF5: a block is one contiguous run of rows, so one
// pread() reads it, from any thread, with no library lock (Debian's thread-safe
// libhdf5 serialises every call) and no new link dependency. Layout, little-endian:
//
//   [0, 4096)            header: magic "PFSTORE1", version, dim, counts, the
//                        offsets and sizes below, the file's size, the
//                        checksums of the table and of the data, and of the header itself
//   [4096, table_offset) cells: n_cells rows of dim float32, block after block
//   [table_offset, end)  table: per block its first row, row count, mean
//                        (float64 [dim]) and name; per population its name,
//                        source block and target block; a text the writer
//                        passes through (R keeps the populations' labels there)
//
// A truncated, foreign, corrupted or unsorted file is a StoreError on opening.
#pragma once
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace popflow {

constexpr uint32_t kStoreVersion = 1;
constexpr int64_t kStoreDataOffset = 4096;

struct StoreError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct StoreBlock {
  std::string name;
  int64_t first = 0;  // row of its first cell
  int64_t count = 0;
  std::vector<double> mean;  // [dim]; NaN for an empty block
};

struct StorePopulation {
  std::string name;
  int64_t source = -1;  // block of its source cells (possibly shared with other populations)
  int64_t target = -1;  // block of its target cells
};

// What a store holds besides its cells.
struct StoreLayout {
  int64_t dim = 0;
  std::vector<StoreBlock> blocks;  // in file order; first/mean are filled by the writer
  std::vector<StorePopulation> populations;
  std::string text;  // passed through (labels)
  int64_t cells() const { return blocks.empty() ? 0 : blocks.back().first + blocks.back().count; }
};

// Writes a store in any row order: the caller gives each row's destination
// (its block's first row + its rank within the block). Rows land in a
// temporary file renamed over `path` by finish(); a writer destroyed before
// finish() removes it.
class StoreWriter {
 public:
  // layout.blocks' names and counts are used; their first rows follow from the counts.
  StoreWriter(const std::string& path, StoreLayout layout);
  ~StoreWriter();
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;
  // rows: [n, dim] float32 (row-major); dest: [n] destination rows; block: [n] their blocks.
  void write(const float* rows, int64_t n, const int64_t* dest, const int64_t* block);
  // Every row must have been written exactly once.
  void finish();
  const StoreLayout& layout() const { return layout_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  StoreLayout layout_;
  std::vector<double> sums_;         // [blocks, dim]
  std::vector<uint64_t> written_;    // bitmap of rows written
  int64_t n_written_ = 0;
  uint64_t data_checksum_ = 0;
  bool finished_ = false;
};

// An open store (read-only). Reads are thread-safe.
class PopulationStore {
 public:
  explicit PopulationStore(const std::string& path);  // StoreError naming what is wrong
  ~PopulationStore();
  PopulationStore(const PopulationStore&) = delete;
  PopulationStore& operator=(const PopulationStore&) = delete;

  const StoreLayout& layout() const { return layout_; }
  int64_t dim() const { return layout_.dim; }
  int64_t cells() const { return layout_.cells(); }
  int64_t file_bytes() const { return file_bytes_; }
  const std::string& path() const { return path_; }
  // n rows from `first` into out ([n, dim] float32).
  void read_rows(int64_t first, int64_t n, float* out) const;
  // A block's cells, [count, dim] float32 on the CPU.
  torch::Tensor read_block(int64_t b) const;
  // Reads every cell and compares the data checksum (StoreError when it differs).
  void verify() const;
  // Reads so far (from every thread): calls, bytes and seconds spent in pread().
  struct ReadStats {
    int64_t reads = 0, bytes = 0;
    double seconds = 0;
  };
  ReadStats read_stats() const;

 private:
  std::string path_;
  int fd_ = -1;
  int64_t file_bytes_ = 0;
  uint64_t data_checksum_ = 0;
  StoreLayout layout_;
  mutable std::atomic<int64_t> reads_{0}, read_bytes_{0}, read_ns_{0};
};

}  // namespace popflow

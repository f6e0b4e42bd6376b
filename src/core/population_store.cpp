#include "population_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>

namespace popflow {
namespace {

constexpr char kMagic[8] = {'P', 'F', 'S', 'T', 'O', 'R', 'E', '1'};
// Header fields after the magic, each a uint64 (version and dim included).
enum HeaderField { kVersion, kDim, kCells, kBlocks, kPopulations, kDataOffset, kTableOffset, kTableBytes,
                   kFileBytes, kTableSum, kDataSum, kHeaderSum, kFields };

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The data checksum is a sum over rows of a hash of (row, its bytes): the
// writer may write rows in any order and the sum is the same.
uint64_t row_sum(int64_t row, const float* values, int64_t dim) {
  return mix(fnv1a(values, sizeof(float) * static_cast<size_t>(dim)) ^ (static_cast<uint64_t>(row) * 0x9E3779B97F4A7C15ULL));
}

std::string os_error(const std::string& what, const std::string& path) {
  return what + " '" + path + "': " + std::strerror(errno);
}

void pwrite_all(int fd, const void* data, size_t n, int64_t offset, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, offset);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw StoreError(os_error("cannot write", path));
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += w;
  }
}

void pread_all(int fd, void* data, size_t n, int64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, offset);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw StoreError(os_error("cannot read", path));
    }
    if (r == 0) throw StoreError("store '" + path + "' is truncated: it ends before its cells do");
    p += r;
    n -= static_cast<size_t>(r);
    offset += r;
  }
}

struct Out {
  std::string bytes;
  void u64(uint64_t v) { bytes.append(reinterpret_cast<const char*>(&v), 8); }
  void f64(double v) { bytes.append(reinterpret_cast<const char*>(&v), 8); }
  void str(const std::string& s) {
    u64(s.size());
    bytes += s;
  }
};

struct In {
  const std::string& bytes;
  size_t at = 0;
  void need(size_t n) {
    if (n > bytes.size() - at) throw StoreError("the store's table is malformed (it ends early)");
  }
  template <class T>
  T value() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, bytes.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  uint64_t u64() { return value<uint64_t>(); }
  double f64() { return value<double>(); }
  std::string str() {
    const uint64_t n = u64();
    need(n);
    std::string s = bytes.substr(at, n);
    at += n;
    return s;
  }
};

std::string table_bytes(const StoreLayout& layout) {
  Out out;
  for (const auto& b : layout.blocks) {
    out.u64(b.first);
    out.u64(b.count);
    for (double m : b.mean) out.f64(m);
    out.str(b.name);
  }
  for (const auto& p : layout.populations) {
    out.str(p.name);
    out.u64(p.source);
    out.u64(p.target);
  }
  out.str(layout.text);
  return out.bytes;
}

// Blocks must tile the rows in order (the file is sorted by block), and populations name existing blocks.
void check_layout(const StoreLayout& layout, const std::string& where) {
  int64_t next = 0;
  for (size_t b = 0; b < layout.blocks.size(); ++b) {
    const auto& blk = layout.blocks[b];
    if (blk.count < 0 || blk.first != next)
      throw StoreError(where + " is not sorted by block: block " + std::to_string(b) + " ('" + blk.name +
                       "') starts at row " + std::to_string(blk.first) + ", not " + std::to_string(next));
    next += blk.count;
  }
  const auto n_blocks = static_cast<int64_t>(layout.blocks.size());
  for (const auto& p : layout.populations)
    if (p.source < 0 || p.source >= n_blocks || p.target < 0 || p.target >= n_blocks)
      throw StoreError(where + ": population '" + p.name + "' names a block that does not exist");
}

}  // namespace

StoreWriter::StoreWriter(const std::string& path, StoreLayout layout) : path_(path), layout_(std::move(layout)) {
  if (layout_.dim < 1) throw StoreError("a store needs at least one feature");
  int64_t first = 0;
  for (auto& b : layout_.blocks) {
    if (b.count < 0) throw StoreError("block '" + b.name + "' has a negative size");
    b.first = first;
    first += b.count;
  }
  check_layout(layout_, "the store's layout");
  const int64_t n = layout_.cells();
  sums_.assign(layout_.blocks.size() * static_cast<size_t>(layout_.dim), 0.0);
  written_.assign(static_cast<size_t>((n + 63) / 64), 0);
  tmp_ = path_ + ".tmp" + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ < 0) throw StoreError(os_error("cannot create", tmp_));
}

StoreWriter::~StoreWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_.c_str());
}

void StoreWriter::write(const float* rows, int64_t n, const int64_t* dest, const int64_t* block) {
  if (finished_) throw StoreError("the store is already finished");
  const int64_t d = layout_.dim, total = layout_.cells();
  const auto n_blocks = static_cast<int64_t>(layout_.blocks.size());
  // Rows sorted by destination, so that runs of consecutive rows take one pwrite.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return dest[a] < dest[b]; });
  std::vector<float> run;
  int64_t run_start = -1;
  const auto flush = [&] {
    if (!run.empty()) pwrite_all(fd_, run.data(), run.size() * sizeof(float), kStoreDataOffset + run_start * d * 4, tmp_);
    run.clear();
  };
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = order[k], r = dest[i], b = block[i];
    if (r < 0 || r >= total) throw StoreError("row destination " + std::to_string(r) + " is outside the store");
    if (b < 0 || b >= n_blocks || r < layout_.blocks[b].first || r >= layout_.blocks[b].first + layout_.blocks[b].count)
      throw StoreError("row destination " + std::to_string(r) + " is not in its block");
    uint64_t& word = written_[r / 64];
    const uint64_t bit = uint64_t{1} << (r % 64);
    if (word & bit) throw StoreError("row " + std::to_string(r) + " of the store is written twice");
    word |= bit;
    const float* v = rows + i * d;
    for (int64_t j = 0; j < d; ++j) {
      if (!std::isfinite(v[j])) throw StoreError("cells contain NA, NaN or infinite values");
      sums_[b * d + j] += v[j];
    }
    data_checksum_ += row_sum(r, v, d);
    if (run.empty() || r != run_start + static_cast<int64_t>(run.size()) / d) {
      flush();
      run_start = r;
    }
    run.insert(run.end(), v, v + d);
  }
  flush();
  n_written_ += n;
}

void StoreWriter::finish() {
  if (finished_) return;
  if (n_written_ != layout_.cells())
    throw StoreError("the store has " + std::to_string(layout_.cells()) + " cells but " + std::to_string(n_written_) +
                     " were written");
  const int64_t d = layout_.dim;
  for (size_t b = 0; b < layout_.blocks.size(); ++b) {
    auto& blk = layout_.blocks[b];
    blk.mean.assign(d, std::numeric_limits<double>::quiet_NaN());
    if (blk.count > 0)
      for (int64_t j = 0; j < d; ++j) blk.mean[j] = sums_[b * d + j] / static_cast<double>(blk.count);
  }
  const std::string table = table_bytes(layout_);
  const int64_t table_offset = kStoreDataOffset + layout_.cells() * d * 4;
  pwrite_all(fd_, table.data(), table.size(), table_offset, tmp_);
  uint64_t h[kFields] = {kStoreVersion,
                         static_cast<uint64_t>(d),
                         static_cast<uint64_t>(layout_.cells()),
                         layout_.blocks.size(),
                         layout_.populations.size(),
                         static_cast<uint64_t>(kStoreDataOffset),
                         static_cast<uint64_t>(table_offset),
                         table.size(),
                         static_cast<uint64_t>(table_offset) + table.size(),
                         fnv1a(table.data(), table.size()),
                         data_checksum_,
                         0};
  std::string header(kStoreDataOffset, '\0');
  std::memcpy(&header[0], kMagic, 8);
  std::memcpy(&header[8], h, sizeof(h));
  h[kHeaderSum] = fnv1a(header.data(), 8 + 8 * kHeaderSum);
  std::memcpy(&header[8 + 8 * kHeaderSum], &h[kHeaderSum], 8);
  pwrite_all(fd_, header.data(), header.size(), 0, tmp_);
  if (::fsync(fd_) != 0) throw StoreError(os_error("cannot write", tmp_));
  ::close(fd_);
  fd_ = -1;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) throw StoreError(os_error("cannot create", path_));
  finished_ = true;
}

PopulationStore::PopulationStore(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw StoreError(os_error("cannot open the store", path));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw StoreError(os_error("cannot read", path));
  file_bytes_ = st.st_size;
  const std::string what = "'" + path + "'";
  char head[8 + 8 * kFields];
  if (file_bytes_ < static_cast<int64_t>(sizeof(head)) ) {
    if (file_bytes_ >= 8) {
      char magic[8];
      pread_all(fd_, magic, 8, 0, path);
      if (std::memcmp(magic, kMagic, 8) == 0)
        throw StoreError("store " + what + " is truncated: " + std::to_string(file_bytes_) + " bytes, shorter than its header");
    }
    throw StoreError(what + " is not a popflow population store (no store header)");
  }
  pread_all(fd_, head, sizeof(head), 0, path);
  if (std::memcmp(head, kMagic, 8) != 0) throw StoreError(what + " is not a popflow population store (no store header)");
  uint64_t h[kFields];
  std::memcpy(h, head + 8, sizeof(h));
  if (fnv1a(head, 8 + 8 * kHeaderSum) != h[kHeaderSum]) throw StoreError("store " + what + " has a corrupted header");
  if (h[kVersion] != kStoreVersion)
    throw StoreError("store " + what + " has format version " + std::to_string(h[kVersion]) + "; this popflow reads version " +
                     std::to_string(kStoreVersion));
  if (static_cast<uint64_t>(file_bytes_) != h[kFileBytes])
    throw StoreError("store " + what + " is " + (static_cast<uint64_t>(file_bytes_) < h[kFileBytes] ? "truncated" : "longer than written") +
                     ": " + std::to_string(file_bytes_) + " bytes, its header says " + std::to_string(h[kFileBytes]));
  layout_.dim = static_cast<int64_t>(h[kDim]);
  data_checksum_ = h[kDataSum];
  if (h[kDataOffset] != kStoreDataOffset || h[kTableOffset] != kStoreDataOffset + h[kCells] * h[kDim] * 4 ||
      h[kTableOffset] + h[kTableBytes] != h[kFileBytes])
    throw StoreError("store " + what + " has an inconsistent header");
  std::string table(h[kTableBytes], '\0');
  pread_all(fd_, &table[0], table.size(), static_cast<int64_t>(h[kTableOffset]), path);
  if (fnv1a(table.data(), table.size()) != h[kTableSum]) throw StoreError("store " + what + " has a corrupted table");
  In in{table};
  layout_.blocks.resize(h[kBlocks]);
  for (auto& b : layout_.blocks) {
    b.first = static_cast<int64_t>(in.u64());
    b.count = static_cast<int64_t>(in.u64());
    b.mean.resize(layout_.dim);
    for (auto& m : b.mean) m = in.f64();
    b.name = in.str();
  }
  layout_.populations.resize(h[kPopulations]);
  for (auto& p : layout_.populations) {
    p.name = in.str();
    p.source = static_cast<int64_t>(in.u64());
    p.target = static_cast<int64_t>(in.u64());
  }
  layout_.text = in.str();
  check_layout(layout_, "store " + what);
  if (layout_.cells() != static_cast<int64_t>(h[kCells])) throw StoreError("store " + what + " has an inconsistent header");
}

PopulationStore::~PopulationStore() {
  if (fd_ >= 0) ::close(fd_);
}

void PopulationStore::read_rows(int64_t first, int64_t n, float* out) const {
  if (first < 0 || n < 0 || first + n > cells()) throw StoreError("rows outside the store");
  const auto start = std::chrono::steady_clock::now();
  const size_t bytes = static_cast<size_t>(n * dim()) * sizeof(float);
  pread_all(fd_, out, bytes, kStoreDataOffset + first * dim() * 4, path_);
  read_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  read_bytes_ += static_cast<int64_t>(bytes);
  ++reads_;
}

PopulationStore::ReadStats PopulationStore::read_stats() const {
  return {reads_.load(), read_bytes_.load(), static_cast<double>(read_ns_.load()) * 1e-9};
}

torch::Tensor PopulationStore::read_block(int64_t b) const {
  const auto& blk = layout_.blocks.at(static_cast<size_t>(b));
  auto out = torch::empty({blk.count, dim()}, torch::kFloat);
  read_rows(blk.first, blk.count, out.data_ptr<float>());
  return out;
}

void PopulationStore::verify() const {
  const int64_t chunk = std::max<int64_t>(1, (int64_t{8} << 20) / (4 * dim()));
  std::vector<float> buf(static_cast<size_t>(chunk * dim()));
  uint64_t sum = 0;
  for (int64_t first = 0; first < cells(); first += chunk) {
    const int64_t n = std::min(chunk, cells() - first);
    read_rows(first, n, buf.data());
    for (int64_t i = 0; i < n; ++i) sum += row_sum(first + i, buf.data() + i * dim(), dim());
  }
  if (sum != data_checksum_) throw StoreError("store '" + path_ + "' has corrupted cells (data checksum differs)");
}

}  // namespace popflow

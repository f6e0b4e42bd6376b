// Population graphs kept under a byte cap, least recently used out, so that
// the memory of a population model's training does not grow with the number
// of populations: graphs are built when a step needs them and rebuilt when
// a step needs them again after eviction (the same graph: it is seeded by its block).
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>

#include "encoders.h"

namespace popflow {

// Bytes held by a graph's tensors (cells, edges, weights).
int64_t graph_bytes(const PopulationGraph& g);

class GraphCache {
 public:
  using Graph = std::shared_ptr<const PopulationGraph>;
  // max_bytes <= 0: no cap (every graph stays).
  explicit GraphCache(int64_t max_bytes) : max_bytes_(max_bytes) {}
  // The graph of `key`, marked as just used; null when absent.
  Graph find(int64_t key);
  bool contains(int64_t key) const { return index_.count(key) > 0; }
  // Keeps `graph` and evicts the least recently used graphs until the cache is
  // under its cap; a graph larger than the cap is not kept. Callers hold their
  // own reference for the step, so eviction never frees a graph in use.
  void insert(int64_t key, Graph graph);
  int64_t bytes() const { return bytes_; }
  int64_t size() const { return static_cast<int64_t>(index_.size()); }
  int64_t evictions() const { return evictions_; }
  int64_t max_bytes() const { return max_bytes_; }
  int64_t peak_bytes() const { return peak_bytes_; }

 private:
  struct Entry {
    int64_t key;
    Graph graph;
    int64_t bytes;
  };
  int64_t max_bytes_;
  int64_t bytes_ = 0, peak_bytes_ = 0, evictions_ = 0;
  std::list<Entry> order_;  // most recently used first
  std::unordered_map<int64_t, std::list<Entry>::iterator> index_;
};

}  // namespace popflow

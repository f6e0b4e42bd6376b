#include "graph_cache.h"

namespace popflow {

int64_t graph_bytes(const PopulationGraph& g) {
  int64_t n = 0;
  for (const auto* t : {&g.x, &g.src, &g.dst, &g.weight})
    if (t->defined()) n += t->numel() * static_cast<int64_t>(t->element_size());
  return n;
}

GraphCache::Graph GraphCache::find(int64_t key) {
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  order_.splice(order_.begin(), order_, it->second);
  return it->second->graph;
}

void GraphCache::insert(int64_t key, Graph graph) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    bytes_ -= it->second->bytes;
    order_.erase(it->second);
    index_.erase(it);
  }
  const int64_t size = graph_bytes(*graph);
  if (max_bytes_ > 0 && size > max_bytes_) return;
  order_.push_front({key, std::move(graph), size});
  index_[key] = order_.begin();
  bytes_ += size;
  while (max_bytes_ > 0 && bytes_ > max_bytes_) {
    const Entry& last = order_.back();
    bytes_ -= last.bytes;
    index_.erase(last.key);
    order_.pop_back();
    ++evictions_;
  }
  if (bytes_ > peak_bytes_) peak_bytes_ = bytes_;
}

}  // namespace popflow

// Rcpp glue for population stores (src/core/population_store.h): writing a
// store block by block from R, reading its table and blocks (prediction,
// evaluation, tests). Training reads stores in the engine (r_population.cpp).
#include "r_glue.h"

#include <memory>

#include "core/population_store.h"

using namespace popflow;

namespace {

void finalize_writer(StoreWriter* w) { delete w; }
using WriterPtr = Rcpp::XPtr<StoreWriter, Rcpp::PreserveStorage, finalize_writer, true>;

StoreWriter& writer_of(SEXP handle) {
  WriterPtr ptr(handle);
  if (!ptr.get()) Rcpp::stop("the store writer is closed");
  return *ptr;
}

}  // namespace

// A writer of a new store at `path` (through a temporary file): blocks named
// `block_names` with `block_sizes` cells, populations with 0-based source and
// target blocks, and `text` kept as it is.
// [[Rcpp::export]]
SEXP pf_store_write_open(std::string path, int dim, Rcpp::CharacterVector block_names, Rcpp::NumericVector block_sizes,
                         Rcpp::CharacterVector population_names, Rcpp::IntegerVector source_block,
                         Rcpp::IntegerVector target_block, std::string text) {
  PF_GUARD_BEGIN
  StoreLayout layout;
  layout.dim = dim;
  for (R_xlen_t b = 0; b < block_names.size(); ++b) {
    StoreBlock blk;
    blk.name = Rcpp::as<std::string>(block_names[b]);
    blk.count = static_cast<int64_t>(block_sizes[b]);
    layout.blocks.push_back(blk);
  }
  for (R_xlen_t p = 0; p < population_names.size(); ++p)
    layout.populations.push_back({Rcpp::as<std::string>(population_names[p]), source_block[p], target_block[p]});
  layout.text = text;
  return WriterPtr(new StoreWriter(path, std::move(layout)), true);
  PF_GUARD_END
  return R_NilValue;
}

// Rows of cells (an R matrix, one cell a row), each with its destination row
// (0-based, as a double: stores may pass 2^31 rows) and its 0-based block.
// [[Rcpp::export]]
void pf_store_write_rows(SEXP writer, Rcpp::NumericMatrix rows, Rcpp::NumericVector dest, Rcpp::IntegerVector block) {
  PF_GUARD_BEGIN
  auto x = popflow_r::to_tensor(rows);
  std::vector<int64_t> d(dest.begin(), dest.end()), b(block.begin(), block.end());
  if (static_cast<int64_t>(d.size()) != x.size(0) || static_cast<int64_t>(b.size()) != x.size(0))
    Rcpp::stop("one destination and one block per row are required");
  writer_of(writer).write(x.data_ptr<float>(), x.size(0), d.data(), b.data());
  return;
  PF_GUARD_END
}

// [[Rcpp::export]]
void pf_store_write_finish(SEXP writer) {
  PF_GUARD_BEGIN
  writer_of(writer).finish();
  return;
  PF_GUARD_END
}

// The table of the store at `path`: dimensions, blocks (with their means), populations and the text.
// [[Rcpp::export]]
Rcpp::List pf_store_info(std::string path) {
  PF_GUARD_BEGIN
  PopulationStore store(path);
  const StoreLayout& l = store.layout();
  const auto n_blocks = static_cast<R_xlen_t>(l.blocks.size());
  Rcpp::CharacterVector block_names(n_blocks);
  Rcpp::NumericVector first(n_blocks), count(n_blocks);
  Rcpp::NumericMatrix means(static_cast<int>(n_blocks), static_cast<int>(l.dim));
  for (R_xlen_t b = 0; b < n_blocks; ++b) {
    block_names[b] = l.blocks[b].name;
    first[b] = static_cast<double>(l.blocks[b].first);
    count[b] = static_cast<double>(l.blocks[b].count);
    for (int64_t j = 0; j < l.dim; ++j) means(static_cast<int>(b), static_cast<int>(j)) = l.blocks[b].mean[j];
  }
  const auto n_pop = static_cast<R_xlen_t>(l.populations.size());
  Rcpp::CharacterVector pop_names(n_pop);
  Rcpp::IntegerVector source(n_pop), target(n_pop);
  for (R_xlen_t p = 0; p < n_pop; ++p) {
    pop_names[p] = l.populations[p].name;
    source[p] = static_cast<int>(l.populations[p].source);
    target[p] = static_cast<int>(l.populations[p].target);
  }
  return Rcpp::List::create(
      Rcpp::Named("dim") = static_cast<int>(l.dim), Rcpp::Named("cells") = static_cast<double>(store.cells()),
      Rcpp::Named("file_bytes") = static_cast<double>(store.file_bytes()), Rcpp::Named("version") = static_cast<int>(kStoreVersion),
      Rcpp::Named("blocks") = Rcpp::DataFrame::create(Rcpp::Named("block") = block_names, Rcpp::Named("first") = first,
                                                      Rcpp::Named("cells") = count, Rcpp::Named("stringsAsFactors") = false),
      Rcpp::Named("block_means") = means,
      Rcpp::Named("populations") = Rcpp::DataFrame::create(Rcpp::Named("population") = pop_names,
                                                           Rcpp::Named("source_block") = source, Rcpp::Named("target_block") = target,
                                                           Rcpp::Named("stringsAsFactors") = false),
      Rcpp::Named("text") = l.text);
  PF_GUARD_END
  return R_NilValue;
}

// The cells of the given 0-based blocks, stacked in the order given.
// [[Rcpp::export]]
Rcpp::NumericMatrix pf_store_read(std::string path, Rcpp::IntegerVector blocks) {
  PF_GUARD_BEGIN
  PopulationStore store(path);
  std::vector<torch::Tensor> parts;
  for (int b : blocks) {
    if (b < 0 || b >= static_cast<int>(store.layout().blocks.size())) Rcpp::stop("block out of range");
    parts.push_back(store.read_block(b));
  }
  if (parts.empty()) return Rcpp::NumericMatrix(0, static_cast<int>(store.dim()));
  return popflow_r::to_matrix(torch::cat(parts));
  PF_GUARD_END
  return Rcpp::NumericMatrix();
}

// [[Rcpp::export]]
void pf_store_verify(std::string path) {
  PF_GUARD_BEGIN
  PopulationStore(path).verify();
  return;
  PF_GUARD_END
}

# embedPopulations(): the population encoder of an MFM model applied to
# populations of cells (matrices or single-cell objects).

#' Population embeddings of an MFM model
#'
#' The learnt population encoder `phi` applied to each population's cells: one
#' unit-length vector per population, for plotting or clustering patients.
#'
#' @param object A model from [fitFlow()] with `method = "mfm"`.
#' @param x Source cells (cells x features, the fitted features), or a
#'   SingleCellExperiment or Seurat object for a model fitted on one (see
#'   [cell-objects]).
#' @param population The population of each row of `x` (not used for objects).
#' @param threads LibTorch threads.
#' @return A matrix, populations x embedding dimensions, with the population
#'   ids as row names (in order of first appearance); for an object, a
#'   `DataFrame` keyed by population (see [cell-objects]).
#' @examples
#' set.seed(1)
#' mu <- c(-2, -1, 1, 2)
#' src <- do.call(rbind, lapply(mu, function(m) matrix(rnorm(200, m), ncol = 2)))
#' pop <- rep(paste0("p", seq_along(mu)), each = 100)
#' fit <- fitFlow(src, src + 2 * rep(mu, each = 100), population = c(pop, pop),
#'                method = MFMParam(k = 5, width = 16, populations_per_step = 4, cells_per_population = 64),
#'                training = TrainingParam(steps = 50), verbose = FALSE)
#' emb <- embedPopulations(fit, src, pop)
#' dim(emb)
#' rowSums(emb^2)
#' @export
embedPopulations <- function(object, x, population, threads = object$threads) {
  object <- encoder_model(object)
  if (is_cell_object(x)) return(embed_cell_populations(object, x, threads))
  x <- same_features(as_cell_matrix(x, "x"), "x", object$feature_names, object$n_features)
  if (missing(population)) population <- NULL
  pop <- check_population(population, nrow(x))
  threads <- check_count(threads, "threads")
  f <- factor(pop, levels = unique(pop))
  check_graph_sizes(object$method, tabulate(as.integer(f), nlevels(f)), levels(f), "cells")
  emb <- pf_population_embed(flow_handle(object), x, as.integer(f) - 1L, nlevels(f), threads)
  dimnames(emb) <- list(levels(f), paste0("PFE_", seq_len(ncol(emb))))
  emb
}

# The model, if it has a population encoder (MFM; CGFM and flows have none).
encoder_model <- function(object) {
  if (!inherits(object, "popflow_flow") || !has_encoder(object$method)) {
    pf_abort("object", "must be an MFM model from fitFlow(method = \"mfm\")",
             "CGFM and plain flows have no population encoder")
  }
  as_model(object)
}

# embedPopulations() on an object: one row per population of its source cells.
embed_cell_populations <- function(object, x, threads) {
  src <- object_source_cells(object, x, NULL, "x")
  emb <- embedPopulations(object, src$x, src$population, threads = threads)
  first <- match(rownames(emb), src$population)
  out <- data.frame(population = rownames(emb), row.names = rownames(emb), stringsAsFactors = FALSE)
  for (nm in src$spec$population) out[[nm]] <- src$meta[[nm]][src$cells][first]
  out$source_cells <- tabulate(match(src$population, rownames(emb)), nrow(emb))
  out$embedding <- emb
  if (is_seurat_cells(x)) out else S4Vectors::DataFrame(out, check.names = FALSE)
}

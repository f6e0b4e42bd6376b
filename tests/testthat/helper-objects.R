# The toy single-cell data of the object tests (test-objects.R,
# test-objects-delayed.R, test-seurat5.R): 3 patients x 2 cell types, control
# and stimulated, which trains in a second.

toy_expression <- function(n = 40, genes = 6, seed = 1) {
  set.seed(seed)
  design <- expand.grid(cell = seq_len(n), condition = c("ctrl", "stim"), cell_type = c("A", "B"),
                        patient = c("P1", "P2", "P3"), stringsAsFactors = FALSE)
  base <- ifelse(design$cell_type == "A", 1, 3) + match(design$patient, c("P1", "P2", "P3")) / 2
  response <- ifelse(design$condition == "stim", 2, 0)
  expr <- sapply(seq_len(genes), function(g) base + (g <= 2) * response + rnorm(nrow(design), sd = 0.5))
  cells <- design[, c("patient", "condition", "cell_type")]
  rownames(cells) <- sprintf("c%03d", seq_len(nrow(cells)))
  dimnames(expr) <- list(rownames(cells), paste0("g", seq_len(genes)))
  list(logcounts = t(expr), cells = cells)
}

toy_sce <- function(n_pcs = 4, ...) {
  d <- toy_expression(...)
  pca <- popflow:::principal_components(t(d$logcounts), n_pcs, scale = FALSE)
  SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = d$logcounts),
                                             colData = S4Vectors::DataFrame(d$cells), reducedDims = list(PCA = pca))
}

toy_seurat <- function(n_pcs = 4, ...) {
  d <- toy_expression(...)
  popflow:::kang_seurat(d$logcounts, d$cells, n_pcs)
}

toy_mfm <- function() MFMParam(k = 5, layers = 2, width = 8, populations_per_step = 4, cells_per_population = 32)
toy_training <- function(steps = 40) TrainingParam(steps = steps, batch_size = 64, seed = 1)
toy_solver <- SolverParam("rk4", steps = 4)

# The geoms of a ggplot's layers, by class (ggplot2 4 names the layers; the names are dropped).
layer_geoms <- function(p) unname(vapply(p$layers, function(l) class(l$geom)[1], character(1)))

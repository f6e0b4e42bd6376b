# The object round trip: predicted objects keep the source cells' metadata,
# combine with the observed object in one call without fake zeros, and go
# into the plots, trajectories and unseen-label options like matrices.

# A toy object whose PCA covers 6 of its 8 genes (g7, g8 are outside the loadings).
round_trip_expression <- function(n = 20) {
  set.seed(2)
  design <- expand.grid(cell = seq_len(n), condition = c("ctrl", "stim"), cell_type = c("A", "B"),
                        patient = c("P1", "P2", "P3"), stringsAsFactors = FALSE)
  base <- ifelse(design$cell_type == "A", 1, 3) + match(design$patient, c("P1", "P2", "P3")) / 2
  response <- ifelse(design$condition == "stim", 2, 0)
  expr <- sapply(1:8, function(g) base + (g <= 2) * response + rnorm(nrow(design), sd = 0.5))
  cells <- design[, c("patient", "condition", "cell_type")]
  cells$sample <- paste0("s", match(design$patient, c("P1", "P2", "P3")), design$condition)
  cells$quality <- runif(nrow(cells))
  rownames(cells) <- sprintf("c%03d", seq_len(nrow(cells)))
  dimnames(expr) <- list(rownames(cells), paste0("g", 1:8))
  list(logcounts = t(expr), cells = cells)
}

round_trip_sce <- function() {
  d <- round_trip_expression()
  pca <- popflow:::principal_components(t(d$logcounts[1:6, ]), 3, scale = FALSE)
  SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = d$logcounts),
                                             colData = S4Vectors::DataFrame(d$cells), reducedDims = list(PCA = pca))
}

round_trip_seurat <- function() {
  d <- round_trip_expression()
  d$logcounts[7:8, ] <- 1  # constant genes: outside the PCA's loadings
  popflow:::kang_seurat(d$logcounts, d$cells, 3)
}

rt_training <- TrainingParam(steps = 20, batch_size = 32, seed = 1)
rt_solver <- SolverParam("rk4", steps = 4)

test_that("predicted SingleCellExperiment cells keep their source cells' metadata and combine with the observed", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- round_trip_sce()
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", method = "icfm",
                 training = rt_training, verbose = FALSE)
  pred <- predict(fit, sce, solver = rt_solver, verbose = FALSE)
  ctrl <- sce$condition == "ctrl"
  # Columns that were not population columns come along too.
  expect_equal(pred$cell_type, sce$cell_type[ctrl])
  expect_equal(pred$sample, sce$sample[ctrl])
  expect_equal(pred$quality, sce$quality[ctrl])
  expect_equal(unique(pred$condition), "stim")
  expect_equal(rownames(pred), paste0("g", 1:6))  # only the genes it has values for

  expect_message(both <- combinePrediction(sce, pred), "holds the 6 genes the prediction has.*2 other genes")
  expect_s4_class(both, "SingleCellExperiment")
  expect_equal(ncol(both), ncol(sce) + ncol(pred))
  expect_equal(rownames(both), paste0("g", 1:6))
  expect_equal(both$predicted, rep(c(FALSE, TRUE), c(ncol(sce), ncol(pred))))
  expect_equal(both$source_cell, c(rep(NA, ncol(sce)), colnames(sce)[ctrl]))
  expect_equal(both$cell_type, c(sce$cell_type, sce$cell_type[ctrl]))
  expect_false(anyNA(SummarizedExperiment::assay(both, "logcounts")))
  expect_equal(SummarizedExperiment::assay(both, "logcounts")[, colnames(sce)],
               SummarizedExperiment::assay(sce, "logcounts")[1:6, ])
  pcs <- SingleCellExperiment::reducedDim(both, "PCA")
  expect_equal(unname(pcs[colnames(pred), ]), unname(SingleCellExperiment::reducedDim(pred, "PCA")), ignore_attr = TRUE)
  expect_equal(unname(pcs[colnames(sce), ]), unname(SingleCellExperiment::reducedDim(sce, "PCA")), ignore_attr = TRUE)
  # Predicted stimulated cells beside observed ones: the observed target condition only.
  stim <- suppressMessages(combinePrediction(sce[, !ctrl], pred))
  expect_equal(unique(stim$condition), "stim")
  expect_error(combinePrediction(sce, sce), "`predicted` must be the SingleCellExperiment object that predict")
  expect_error(combinePrediction(sce[3:8, ], pred), "`observed` lacks 2 of the predicted genes in assay .logcounts. \\(e.g. g1, g2\\)")

  # Plots and trajectories take the objects.
  p <- plotPrediction(pred, sce[, !ctrl], source = sce[, ctrl], population = "cell_type")
  expect_s3_class(p, "ggplot")
  expect_equal(sort(unique(p$data$population)), c("A", "B"))
  expect_equal(as.vector(table(p$data$set)), c(sum(ctrl), sum(!ctrl), sum(ctrl)))
  traj <- sampleTrajectories(fit, sce, times = c(0, 0.5, 1), solver = rt_solver, verbose = FALSE)
  expect_equal(dim(traj), c(sum(ctrl), 3, 3))
  expect_equal(unname(traj[, , 3]), unname(SingleCellExperiment::reducedDim(pred, "PCA")), ignore_attr = TRUE,
               tolerance = 1e-6)
  # A matrix is asked for where only a matrix will do: the error names the right accessor, not as.matrix().
  expect_error(wassersteinDistance(sce, sce), "`x` is a SingleCellExperiment.*reducedDim\\(x, \"PCA\"\\).*as.matrix\\(\\) gives genes x cells")
})

test_that("a Seurat prediction combines with the observed object without zeros for absent genes", {
  skip_if_not_installed("SeuratObject")
  seu <- round_trip_seurat()
  fit <- fitFlow(seu, condition = "condition", source = "ctrl", target = "stim", method = "icfm",
                 training = rt_training, verbose = FALSE)
  pred <- predict(fit, seu, solver = rt_solver, verbose = FALSE)
  ctrl <- colnames(seu)[seu$condition == "ctrl"]
  expect_equal(pred$sample, seu$sample[ctrl], ignore_attr = TRUE)
  expect_equal(pred$cell_type, seu$cell_type[ctrl], ignore_attr = TRUE)
  expect_equal(rownames(pred), paste0("g", 1:6))
  # What merge() would do: genes outside the loadings become zeros in predicted cells.
  expect_message(both <- combinePrediction(seu, pred), "holds the 6 genes")
  expect_s4_class(both, "Seurat")
  expect_equal(rownames(both), paste0("g", 1:6))
  expect_equal(ncol(both), ncol(seu) + ncol(pred))
  expect_equal(both$predicted, rep(c(FALSE, TRUE), c(ncol(seu), ncol(pred))), ignore_attr = TRUE)
  data <- as.matrix(popflow:::seurat_layer(both, "RNA", "data"))
  expect_equal(data[, ctrl], as.matrix(popflow:::seurat_layer(seu, "RNA", "data"))[1:6, ctrl])
  expect_equal(data[, colnames(pred)], as.matrix(popflow:::seurat_layer(pred, "RNA", "data")))
  expect_equal(SeuratObject::Embeddings(both, "pca")[colnames(pred), ], SeuratObject::Embeddings(pred, "pca"))
  expect_equal(dim(SeuratObject::Loadings(both[["pca"]])), c(6, 3))
})

test_that("unseen_label = \"average\" reaches predict() and evaluateFlow() on objects", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- round_trip_sce()
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim",
                 population = c("patient", "cell_type"), label = "cell_type", cells = sce$cell_type == "A" | sce$patient != "P3",
                 method = CGFMParam(populations_per_step = 4, cells_per_population = 16),
                 training = rt_training, verbose = FALSE)
  # P3's B cells are fine; relabel some as an unseen cell type.
  new <- sce[, sce$patient == "P3"]
  new$cell_type[new$cell_type == "B"] <- "C"
  expect_error(predict(fit, new, solver = rt_solver, verbose = FALSE), "not seen in training")
  pred <- predict(fit, new, solver = rt_solver, unseen_label = "average", verbose = FALSE)
  expect_equal(ncol(pred), sum(new$condition == "ctrl"))
  ev <- evaluateFlow(fit, new, solver = rt_solver, unseen_label = "average", baselines = "no change",
                     verbose = FALSE)
  expect_equal(unique(ev$population), c("P3/A", "P3/C"))
})

test_that("population embeddings of an object plot as they are, coloured by a column", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- round_trip_sce()
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", population = c("patient", "cell_type"),
                 method = MFMParam(k = 5, layers = 1, width = 8, populations_per_step = 4, cells_per_population = 16),
                 training = rt_training, verbose = FALSE)
  emb <- embedPopulations(fit, sce)
  p <- plotEmbeddings(emb, color = "cell_type")
  expect_s3_class(p, "ggplot")
  expect_equal(p$data$population, rownames(emb))
  expect_equal(as.character(p$data$group), as.character(emb$cell_type))
})

test_that("a model kept in the object's metadata still works (not through Misc<-, which strips its class)", {
  skip_if_not_installed("SeuratObject")
  seu <- round_trip_seurat()
  fit <- fitFlow(seu, condition = "condition", source = "ctrl", target = "stim", method = "icfm",
                 training = rt_training, verbose = FALSE)
  seu@misc$popflow_fit <- fit
  path <- tempfile(fileext = ".rds")
  saveRDS(seu, path)
  back <- readRDS(path)@misc$popflow_fit
  expect_s3_class(back, "popflow_flow")
  expect_equal(predict(back, seu, solver = rt_solver, verbose = FALSE)[["pca"]]@cell.embeddings,
               predict(fit, seu, solver = rt_solver, verbose = FALSE)[["pca"]]@cell.embeddings)
})

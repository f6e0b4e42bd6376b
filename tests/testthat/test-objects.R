# SingleCellExperiment and Seurat inputs and outputs, on a small toy object
# (3 patients x 2 cell types, control and stimulated; helper-objects.R) that
# trains in a second.

test_that("kangPBMC() gives the Kang data as a list, a SingleCellExperiment and a Seurat object", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("SeuratObject")
  kang <- kangPBMC("list")
  expect_equal(dim(kang$logcounts), c(100, 9517))
  expect_equal(names(kang$cells), c("patient", "condition", "cell_type"))
  counts <- table(kang$cells$patient, kang$cells$condition)
  expect_equal(as.vector(counts[c("101", "1015", "107"), c("ctrl", "stim")]), c(1027, 3138, 645, 1363, 2703, 641))
  expect_equal(nlevels(kang$cells$cell_type), 8)
  rotation <- attr(kang$pca, "rotation")
  expect_equal(dim(rotation), c(100, 20))
  centred <- scale(t(kang$logcounts), center = TRUE, scale = FALSE)
  expect_equal(unname(kang$pca[, 1:20]), unname(centred %*% rotation), tolerance = 1e-8)
  expect_true(all(c("ISG15", "MX2") %in% rownames(kang$logcounts)))

  sce <- kangPBMC()
  expect_s4_class(sce, "SingleCellExperiment")
  expect_equal(SummarizedExperiment::assayNames(sce), "logcounts")
  expect_equal(names(SummarizedExperiment::colData(sce)), c("patient", "condition", "cell_type"))
  pca <- SingleCellExperiment::reducedDim(sce, "PCA")
  expect_equal(dim(pca), c(9517, 20))
  expect_equal(attr(pca, "rotation"), rotation)

  seu <- kangPBMC("Seurat", n_pcs = 10)
  expect_s4_class(seu, "Seurat")
  expect_equal(dim(seu), c(100, 9517))
  expect_equal(dim(SeuratObject::Embeddings(seu, "pca")), c(9517, 10))
  expect_equal(dim(SeuratObject::Loadings(seu[["pca"]])), c(100, 10))
  expect_true(all(c("patient", "condition", "cell_type") %in% names(seu[[]])))
  expect_error(kangPBMC("loom"), "`format` must be one of")
})

test_that("an MFM fitted on a SingleCellExperiment predicts a held-out patient as a SingleCellExperiment", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce()
  train <- sce$patient != "P3"
  fit <- fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
                 population = c("patient", "cell_type"), cells = train, method = toy_mfm(),
                 training = toy_training(), verbose = FALSE)
  expect_s3_class(fit, "popflow_meta")
  expect_equal(fit$populations$population, c("P1/A", "P1/B", "P2/A", "P2/B"))
  expect_equal(fit$cell_object$population, c("patient", "cell_type"))
  expect_equal(fit$cell_object$space, "PCA")
  expect_output(print(fit), paste("object: SingleCellExperiment, reducedDim 'PCA'; condition ctrl -> stim;",
                                  "populations patient x cell_type; expression of 6 genes"), fixed = TRUE)

  held <- sce[, sce$patient == "P3"]
  pred <- predict(fit, held, solver = toy_solver)
  ctrl <- colnames(held)[held$condition == "ctrl"]
  expect_s4_class(pred, "SingleCellExperiment")
  expect_equal(ncol(pred), length(ctrl))
  expect_equal(colnames(pred), paste0(ctrl, "_pred"))
  expect_equal(SingleCellExperiment::reducedDimNames(pred), "PCA")
  pcs <- SingleCellExperiment::reducedDim(pred, "PCA")
  expect_equal(dim(pcs), c(length(ctrl), 4))
  expect_equal(colnames(pcs), colnames(SingleCellExperiment::reducedDim(sce, "PCA")))
  expect_equal(pred$predicted, rep(TRUE, length(ctrl)))
  expect_equal(pred$source_cell, ctrl)
  expect_equal(unique(pred$condition), "stim")
  expect_equal(pred$patient, held$patient[held$condition == "ctrl"])
  expect_equal(pred$cell_type, held$cell_type[held$condition == "ctrl"])
  # The same cells as predicted through the matrix method.
  x <- SingleCellExperiment::reducedDim(held, "PCA")[ctrl, ]
  by_matrix <- predict(fit, x, population = paste(held$patient, held$cell_type, sep = "/")[held$condition == "ctrl"],
                       solver = toy_solver)
  expect_equal(unname(pcs), unname(by_matrix), tolerance = 1e-6, ignore_attr = TRUE)

  # Reconstructed expression: center + PCs %*% t(rotation), for every loading gene.
  model <- fit$cell_object$expression
  expect_equal(model$rotation, attr(SingleCellExperiment::reducedDim(sce, "PCA"), "rotation"), ignore_attr = TRUE)
  expr <- SummarizedExperiment::assay(pred, "logcounts")
  expect_equal(rownames(expr), rownames(sce))
  expect_equal(colnames(expr), colnames(pred))
  expect_equal(unname(expr), unname(model$center + model$rotation %*% t(pcs)), tolerance = 1e-8)
})

test_that("the expression model recovers the data exactly from a full-rank PCA, also on a subset of cells", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce(n_pcs = 6)
  layout <- list(space = "PCA")
  cells <- which(sce$patient == "P1")
  pcs <- SingleCellExperiment::reducedDim(sce, "PCA")[cells, ]
  model <- popflow:::expression_model(sce, layout, cells, pcs)
  back <- popflow:::reconstruct_expression(model, pcs)
  expect_equal(back, SummarizedExperiment::assay(sce, "logcounts")[, cells], tolerance = 1e-8)
})

test_that("population embeddings of an object come as a DataFrame keyed by population", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce()
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim",
                 population = c("patient", "cell_type"), method = toy_mfm(), training = toy_training(), verbose = FALSE)
  emb <- embedPopulations(fit, sce)
  expect_s4_class(emb, "DataFrame")
  pops <- c("P1/A", "P1/B", "P2/A", "P2/B", "P3/A", "P3/B")
  expect_equal(rownames(emb), pops)
  expect_equal(emb$population, pops)
  expect_equal(as.character(emb$patient), rep(c("P1", "P2", "P3"), each = 2))
  expect_equal(as.character(emb$cell_type), rep(c("A", "B"), 3))
  expect_equal(emb$source_cells, rep(40L, 6))
  expect_equal(dim(emb$embedding), c(6, 8))
  expect_equal(unname(rowSums(emb$embedding^2)), rep(1, 6), tolerance = 1e-5)
  ctrl <- sce$condition == "ctrl"
  by_matrix <- embedPopulations(fit, SingleCellExperiment::reducedDim(sce, "PCA")[ctrl, ],
                                paste(sce$patient, sce$cell_type, sep = "/")[ctrl])
  expect_equal(emb$embedding, by_matrix, tolerance = 1e-6)
})

test_that("evaluateFlow on an object scores each population beside the baselines", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce()
  train <- sce$patient != "P3"
  held <- sce[, sce$patient == "P3"]
  mfm <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", cells = train,
                 population = c("patient", "cell_type"), method = toy_mfm(), training = toy_training(), verbose = FALSE)
  ev <- evaluateFlow(mfm, held, solver = toy_solver)
  expect_equal(names(ev)[1:4], c("population", "patient", "cell_type", "prediction"))
  expect_equal(ev$population, rep(c("P3/A", "P3/B"), each = 5))
  expect_equal(ev$prediction, rep(c("MFM", "no change", "mean shift", "oracle shift", "noise floor"), 2))
  expect_equal(ev$cells, rep(40L, 10))
  expect_true(all(is.finite(ev$W1)))
  # "no change" is the distance between the population's own control and stimulated cells.
  pcs <- SingleCellExperiment::reducedDim(held, "PCA")
  in_a <- held$cell_type == "A"
  expect_equal(ev$W1[2], wassersteinDistance(pcs[in_a & held$condition == "ctrl", ],
                                             pcs[in_a & held$condition == "stim", ]), tolerance = 1e-8)
  # Observed cells from a second object give the same scores.
  ev2 <- evaluateFlow(mfm, held[, held$condition == "ctrl"], held[, held$condition == "stim"], solver = toy_solver)
  expect_equal(ev2, ev)

  # A plain flow with populations: cells paired within populations, scored like evaluateFlow() on matrices.
  fm <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", cells = train,
                population = c("patient", "cell_type"), method = "icfm", training = toy_training(), verbose = FALSE)
  expect_equal(fm$groups, c("P1/A", "P1/B", "P2/A", "P2/B"))
  ev_fm <- evaluateFlow(fm, held, solver = toy_solver)
  by_matrix <- evaluateFlow(fm, pcs[in_a & held$condition == "ctrl", ], pcs[in_a & held$condition == "stim", ],
                            solver = toy_solver)
  expect_equal(ev_fm[ev_fm$population == "P3/A", names(by_matrix)], by_matrix, ignore_attr = TRUE)
  # Without populations: one set of rows, as for matrices (plus the R^2 of mean expression).
  plain <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", method = "icfm",
                   training = toy_training(), verbose = FALSE)
  ev_plain <- evaluateFlow(plain, held, solver = toy_solver)
  plain_matrix <- evaluateFlow(plain, pcs[held$condition == "ctrl", ], pcs[held$condition == "stim", ],
                               solver = toy_solver)
  expect_equal(ev_plain[names(plain_matrix)], plain_matrix)
  expect_equal(setdiff(names(ev_plain), names(plain_matrix)), c("R2_all_genes", "R2_top_genes"))
})

test_that("time courses and assay spaces work on objects", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce()
  sce$day <- ifelse(sce$condition == "ctrl", 0, ifelse(sce$patient == "P3", 2, 1))
  fit <- fitFlow(sce, time = "day", method = "icfm", training = toy_training(), verbose = FALSE)
  expect_equal(fit$time_labels, c(0, 1, 2))
  pred <- predict(fit, sce, from = 0, to = 1, solver = toy_solver)
  expect_equal(ncol(pred), sum(sce$day == 0))
  expect_equal(unique(pred$day), 1)
  ev <- evaluateFlow(fit, sce, from = 0, to = 2, solver = toy_solver)
  expect_equal(ev$cells, rep(sum(sce$day == 0), 5))  # the model, "no change", "mean shift", "oracle shift", "noise floor"

  genes <- c("g1", "g2", "g5")
  gene_fit <- fitFlow(sce, assay = "logcounts", features = genes, condition = "condition", source = "ctrl",
                      target = "stim", method = "icfm", training = toy_training(), verbose = FALSE)
  expect_equal(gene_fit$feature_names, genes)
  gene_pred <- predict(gene_fit, sce, solver = toy_solver)
  expect_equal(SummarizedExperiment::assayNames(gene_pred), "logcounts")
  expect_equal(rownames(gene_pred), genes)
  expect_equal(SingleCellExperiment::reducedDimNames(gene_pred), character(0))
  expect_equal(ncol(gene_pred), sum(sce$condition == "ctrl"))
  # A plain SummarizedExperiment works with an assay too.
  se <- SummarizedExperiment::SummarizedExperiment(list(logcounts = SummarizedExperiment::assay(sce, "logcounts")),
                                                   colData = SummarizedExperiment::colData(sce))
  se_pred <- predict(gene_fit, se, solver = toy_solver)
  expect_equal(SummarizedExperiment::assay(se_pred), SummarizedExperiment::assay(gene_pred))
})

test_that("a Seurat user goes from object to predicted Seurat object in three calls", {
  skip_if_not_installed("SeuratObject")
  seu <- toy_seurat()
  fit <- fitFlow(seu, condition = "condition", source = "ctrl", target = "stim", population = "patient",
                 method = "icfm", training = toy_training(), verbose = FALSE)
  pred <- predict(fit, seu, solver = toy_solver)
  ctrl <- colnames(seu)[seu$condition == "ctrl"]
  expect_s4_class(pred, "Seurat")
  expect_equal(colnames(pred), paste0(ctrl, "_pred"))
  expect_equal(SeuratObject::Reductions(pred), "pca")
  pcs <- SeuratObject::Embeddings(pred, "pca")
  expect_equal(colnames(pcs), paste0("PC_", 1:4))
  md <- pred[[]]
  expect_true(all(md$predicted))
  expect_equal(unique(as.character(md$orig.ident)), "popflow")
  expect_equal(md$source_cell, ctrl)
  expect_equal(unique(md$condition), "stim")
  expect_equal(md$patient, seu$patient[ctrl], ignore_attr = TRUE)
  # Expression: the scaling of Seurat's PCA undone, center + scale * (PCs %*% t(loadings)).
  model <- fit$cell_object$expression
  data <- as.matrix(popflow:::seurat_layer(pred, "RNA", "data"))
  expect_equal(rownames(data), rownames(seu))
  expect_equal(unname(data), unname(model$center + model$scale * (model$rotation %*% t(pcs))), tolerance = 1e-6)
  expect_equal(unname(model$scale), unname(apply(as.matrix(popflow:::seurat_layer(seu, "RNA", "data")), 1, sd)),
               tolerance = 1e-8)
  # Populations are scored one by one.
  ev <- evaluateFlow(fit, seu, solver = toy_solver)
  expect_equal(unique(ev$population), c("P1", "P2", "P3"))
})

test_that("population models on a Seurat object and saved models keep the object layout", {
  skip_if_not_installed("SeuratObject")
  seu <- toy_seurat()
  fit <- fitFlow(seu, condition = "condition", source = "ctrl", target = "stim", population = c("patient", "cell_type"),
                 method = toy_mfm(), training = toy_training(), verbose = FALSE)
  emb <- embedPopulations(fit, seu)
  expect_s3_class(emb, "data.frame")
  expect_equal(rownames(emb), emb$population)
  path <- tempfile(fileext = ".popflow")
  saveFlow(fit, path)
  fit2 <- loadFlow(path)
  expect_equal(fit2$cell_object, fit$cell_object)
  p1 <- predict(fit, seu, solver = toy_solver)
  p2 <- predict(fit2, seu, solver = toy_solver)
  expect_equal(SeuratObject::Embeddings(p2, "pca"), SeuratObject::Embeddings(p1, "pca"))
})

test_that("bad object input gives errors that name the argument and list what exists", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce()
  fit_on <- function(...) fitFlow(sce, ..., method = "icfm", training = toy_training(2), verbose = FALSE)
  cond <- list(condition = "condition", source = "ctrl", target = "stim")
  expect_error(do.call(fit_on, c(cond, space = "UMAP")), "`space` is 'UMAP', not a reducedDim of `x`; its reducedDims: PCA")
  expect_error(do.call(fit_on, c(cond, list(population = c("patient", "donor")))),
               "`population` names 'donor' not in the colData; available columns: patient, condition, cell_type")
  expect_error(fit_on(condition = "treatment", source = "ctrl", target = "stim"),
               "`condition` names 'treatment' not in the colData; available columns")
  expect_error(fit_on(condition = "condition", source = "control", target = "stim"),
               "`source` is \"control\", not a value of column 'condition'; its values: ctrl, stim")
  expect_error(fit_on(condition = "condition", source = "ctrl", target = "IFN"), "`target` is \"IFN\"")
  expect_error(fit_on(condition = "condition", target = "stim"), "`source` is missing")
  expect_error(fit_on(condition = "condition", source = "ctrl", target = "ctrl"), "`target` is the same value")
  expect_error(fit_on(), "`condition` and `time` are both missing")
  expect_error(do.call(fit_on, c(cond, assay = "counts")), "`assay` is 'counts', not an assay of `x`; its assays: logcounts")
  expect_error(do.call(fit_on, c(cond, assay = "logcounts", features = list(c("g1", "IFIT3")))),
               "`features` has 1 feature not among the rows of assay 'logcounts': IFIT3")
  expect_error(do.call(fit_on, c(cond, space = "PCA", assay = "logcounts")), "`space` and `assay` are both given")
  expect_error(do.call(fit_on, c(cond, time = "condition")), "`time` and `condition` are both given")
  expect_error(do.call(fit_on, c(cond, cells = list(c(TRUE, FALSE)))), "`cells` is a logical vector of 2 values")
  expect_error(do.call(fit_on, c(cond, label = "patient")), "`label` is used only by method")
  generative <- fitFlow(sce, method = "targetfm", training = toy_training(2), verbose = FALSE)
  expect_equal(dim(predict(generative, n = 10)), c(10, 4))
  expect_error(predict(generative, sce), "`newdata` is an object, but a generative model \\(target FM, diffusion\\) starts from its source")
  se <- SummarizedExperiment::SummarizedExperiment(list(logcounts = SummarizedExperiment::assay(sce)),
                                                   colData = SummarizedExperiment::colData(sce))
  expect_error(fitFlow(se, condition = "condition", source = "ctrl", target = "stim", verbose = FALSE),
               "`space` needs a SingleCellExperiment")

  # Predicting: new data must have what the model was fitted with.
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", population = c("patient", "cell_type"),
                 method = toy_mfm(), training = toy_training(5), verbose = FALSE)
  no_type <- sce
  no_type$cell_type <- NULL
  expect_error(predict(fit, no_type), "`newdata` lacks the colData column 'cell_type' the model was fitted with")
  expect_error(predict(fit, sce[, sce$condition == "stim"]), "`newdata` has no cells with condition == 'ctrl'; its values: stim")
  no_pca <- sce
  SingleCellExperiment::reducedDim(no_pca, "PCA") <- NULL
  expect_error(predict(fit, no_pca), "`space` is 'PCA', not a reducedDim of `newdata`; its reducedDims: none")
  on_matrix <- fitFlow(matrix(rnorm(100), 50), matrix(rnorm(100), 50), method = "icfm", training = toy_training(2),
                       verbose = FALSE)
  expect_error(predict(on_matrix, sce), "`newdata` is a SingleCellExperiment, but the model was fitted on a matrix")
  expect_error(evaluateFlow(on_matrix, sce), "`source` is a SingleCellExperiment, but the model was fitted on a matrix")
  expect_error(evaluateFlow(fit, sce, matrix(0, 2, 4)), "`target` must be a single-cell object")
  gene_fit <- fitFlow(sce, assay = "logcounts", features = c("g1", "g2"), condition = "condition", source = "ctrl",
                      target = "stim", method = "icfm", training = toy_training(2), verbose = FALSE)
  expect_error(predict(gene_fit, sce[c("g1", "g3"), ]), "`newdata` lacks 1 feature not among the rows of assay 'logcounts': g2")
})

test_that("evaluateFlow on an object adds R^2 of mean expression, all genes and the most responsive ones", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce()
  train <- sce$patient != "P3"
  held <- sce[, sce$patient == "P3"]
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", cells = train,
                 population = c("patient", "cell_type"), label = "cell_type", method = toy_mfm(),
                 training = toy_training(), verbose = FALSE)
  ev <- evaluateFlow(fit, held, solver = toy_solver, top_genes = 3)
  expect_equal(ev$prediction, rep(c("MFM", "no change", "mean shift", "label mean shift", "oracle shift", "noise floor"), 2))
  expect_named(ev, c("population", "patient", "cell_type", "prediction", metric_names, "R2_all_genes", "R2_top_genes",
                     "cells"))
  model <- fit$cell_object$expression
  pcs <- SingleCellExperiment::reducedDim(held, "PCA")
  expr <- SingleCellExperiment::logcounts(held)
  r2 <- function(p, o) 1 - sum((o - p)^2) / sum((o - mean(o))^2)
  reconstructed_mean <- function(x) drop(model$rotation %*% colMeans(x)) * model$scale + model$center
  for (type in c("A", "B")) {
    ctrl <- held$cell_type == type & held$condition == "ctrl"
    stim <- held$cell_type == type & held$condition == "stim"
    observed <- rowMeans(expr[, stim])
    top <- order(abs(observed - rowMeans(expr[, ctrl])), decreasing = TRUE)[1:3]
    expect_true(all(1:2 %in% top))  # g1 and g2 respond to the stimulation (toy_expression())
    check <- function(prediction, p) {
      row <- ev[ev$population == paste0("P3/", type) & ev$prediction == prediction, ]
      expect_equal(row$R2_all_genes, r2(p, observed), tolerance = 1e-8, label = paste(prediction, type))
      expect_equal(row$R2_top_genes, r2(p[top], observed[top]), tolerance = 1e-8, label = paste(prediction, type))
    }
    check("no change", reconstructed_mean(pcs[ctrl, ]))
    check("oracle shift", reconstructed_mean(pcs[stim, ]))  # the source moved onto the target mean
    pred <- SingleCellExperiment::reducedDim(predict(fit, held[, held$cell_type == type], solver = toy_solver), "PCA")
    check("MFM", reconstructed_mean(pred))
    # Label mean shift: the training populations of the same cell type (P1 and P2).
    same <- sce$cell_type == type & train
    all_pcs <- SingleCellExperiment::reducedDim(sce, "PCA")
    d <- sapply(c("P1", "P2"), function(p) {
      colMeans(all_pcs[same & sce$patient == p & sce$condition == "stim", ]) -
        colMeans(all_pcs[same & sce$patient == p & sce$condition == "ctrl", ])
    })
    check("label mean shift", reconstructed_mean(shift_by(pcs[ctrl, ], rowMeans(d))))
    # Noise floor: the two halves of the stimulated cells, in observed expression.
    h <- halves(sum(stim))
    row <- ev[ev$population == paste0("P3/", type) & ev$prediction == "noise floor", ]
    half_a <- rowMeans(expr[, which(stim)[h$a]])
    half_b <- rowMeans(expr[, which(stim)[h$b]])
    expect_equal(row$R2_all_genes, r2(half_a, half_b), tolerance = 1e-8)
    expect_equal(row$R2_top_genes, r2(half_a[top], half_b[top]), tolerance = 1e-8)
  }
  # Top genes default to 20 (all 6 genes here: the two R^2 agree).
  ev20 <- evaluateFlow(fit, held, solver = toy_solver, baselines = "no change")
  expect_equal(ev20$R2_all_genes, ev20$R2_top_genes)
})

test_that("diffusion and reflow fit on single-cell objects", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_sce()
  diffusion <- fitFlow(sce, method = "diffusion", training = toy_training(5), verbose = FALSE)
  expect_equal(dim(predict(diffusion, n = 10, solver = toy_solver)), c(10, 4))
  pcs <- SingleCellExperiment::reducedDim(sce, "PCA")[1:5, ]
  expect_length(logDensity(diffusion, pcs, solver = toy_solver), 5)
  cond <- list(condition = "condition", source = "ctrl", target = "stim")
  base <- do.call(fitFlow, c(list(sce), cond, list(method = "icfm", training = toy_training(5), verbose = FALSE)))
  reflowed <- suppressMessages(do.call(fitFlow, c(list(sce), cond, list(method = ReflowParam(base, solver = toy_solver),
                                                                         training = toy_training(5), verbose = FALSE))))
  expect_s3_class(reflowed$method, "ReflowParam")
  expect_s4_class(predict(reflowed, sce, solver = toy_solver), "SingleCellExperiment")
  skip_if_not_installed("SeuratObject")
  seu <- toy_seurat()
  expect_equal(dim(predict(fitFlow(seu, method = DiffusionParam("linear"), training = toy_training(5), verbose = FALSE),
                           n = 7, solver = toy_solver)), c(7, 4))
})

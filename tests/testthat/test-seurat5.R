# The Seurat v5 paths (Assay5, layers split by sample), run with SeuratObject 5
# in an R process of their own: the rest of the suite keeps Debian's
# SeuratObject 4. tools/install.sh installs SeuratObject 5 into
# /opt/popflow-seurat5 (tools/install_seurat5.R; POPFLOW_SEURAT5_LIB names
# another library).

seurat5_lib <- function() Sys.getenv("POPFLOW_SEURAT5_LIB", "/opt/popflow-seurat5")

skip_without_seurat5 <- function() {
  skip_if_not_installed("callr")
  lib <- seurat5_lib()
  version <- tryCatch(utils::packageVersion("SeuratObject", lib.loc = lib), error = function(e) NULL)
  if (is.null(version) || version < "5.0.0") {
    skip(sprintf("SeuratObject 5 is not installed in %s: run tools/install.sh --system-only (or Rscript tools/install_seurat5.R)",
                 lib))
  }
}

# Runs `fun(...)` in a new R process whose library path starts with the
# SeuratObject 5 library, then the one popflow is installed in.
with_seurat5 <- function(fun, ...) {
  libs <- unique(c(seurat5_lib(), dirname(find.package("popflow")), .libPaths()))
  callr::r(fun, args = list(...), libpath = libs, env = c(callr::rcmd_safe_env(), OMP_WAIT_POLICY = "passive"))
}

test_that("Seurat v5 objects with layers split by patient fit, predict, embed, evaluate and combine as the joined object", {
  skip_without_seurat5()
  d <- toy_expression()
  res <- with_seurat5(function(d) {
    suppressPackageStartupMessages({
      library(SeuratObject)
      library(popflow)
    })
    toy_training <- TrainingParam(steps = 30, batch_size = 64, seed = 1)
    solver <- SolverParam("rk4", steps = 4)
    mfm <- MFMParam(k = 5, layers = 2, width = 8, populations_per_step = 4, cells_per_population = 32)
    # A v5 object (Assay5, a "data" layer) with a PCA of scaled data and its loadings, as kangPBMC("Seurat").
    seu <- CreateSeuratObject(counts = CreateAssay5Object(data = as.sparse(d$logcounts)), meta.data = d$cells)
    v4 <- popflow:::kang_seurat(d$logcounts, d$cells, 4)
    seu[["pca"]] <- v4[["pca"]]
    split <- seu
    split[["RNA"]] <- split(split[["RNA"]], f = split$patient)
    joined <- JoinLayers(split)
    out <- list(version = as.character(packageVersion("SeuratObject")), assay_class = class(split[["RNA"]])[1],
                layers = Layers(split[["RNA"]]),
                first_layer_cells = ncol(suppressWarnings(LayerData(split, layer = "data"))))
    genes <- c("g5", "g1", "g2")
    layout <- list(assay = "RNA", features = genes)
    out$coords_split <- popflow:::layout_coordinates(split, layout, "x")
    out$coords_joined <- t(as.matrix(LayerData(joined, layer = "data")[genes, ]))

    # An assay space: the cells of every layer.
    fit_assay <- function(x) {
      fitFlow(x, assay = "RNA", features = genes, condition = "condition", source = "ctrl", target = "stim",
              population = "patient", method = "icfm", training = toy_training, verbose = FALSE)
    }
    out$loss_assay <- list(split = fit_assay(split)$loss, joined = fit_assay(joined)$loss)

    # A PCA space with loadings: the expression model reads the data layers of the fitted cells.
    train <- split$patient != "P3"
    fit_pca <- function(x) {
      fitFlow(x, condition = "condition", source = "ctrl", target = "stim", population = c("patient", "cell_type"),
              cells = train, method = mfm, training = toy_training, verbose = FALSE)
    }
    fit <- fit_pca(split)
    fit_joined <- fit_pca(joined)
    out$loss_pca <- list(split = fit$loss, joined = fit_joined$loss)
    out$expression <- list(split = fit$cell_object$expression, joined = fit_joined$cell_object$expression)
    held <- split[, !train]
    held_joined <- joined[, !train]
    pred <- predict(fit, held, solver = solver)
    pred_joined <- predict(fit, held_joined, solver = solver)
    out$pred <- list(class = class(pred[["RNA"]])[1], layers = Layers(pred[["RNA"]]),
                     split = Embeddings(pred, "pca"), joined = Embeddings(pred_joined, "pca"),
                     data = as.matrix(LayerData(pred, layer = "data")),
                     model = fit$cell_object$expression)
    out$evaluate <- list(split = evaluateFlow(fit, held, solver = solver),
                         joined = evaluateFlow(fit, held_joined, solver = solver))
    out$embed <- list(split = embedPopulations(fit, held), joined = embedPopulations(fit, held_joined))
    both <- suppressMessages(combinePrediction(held, pred))
    both_joined <- suppressMessages(combinePrediction(held_joined, pred))
    out$combine <- list(class = class(both[["RNA"]])[1], split = as.matrix(LayerData(both, layer = "data")),
                        joined = as.matrix(LayerData(both_joined, layer = "data")),
                        predicted = both$predicted, pca = Embeddings(both, "pca"),
                        pca_joined = Embeddings(both_joined, "pca"))

    # A v4 assay (Assay) under SeuratObject 5: predictions keep the v4 kind.
    v4_fit <- fitFlow(v4, condition = "condition", source = "ctrl", target = "stim", method = "icfm",
                      training = toy_training, verbose = FALSE)
    out$v4_class <- class(predict(v4_fit, v4, solver = solver)[["RNA"]])[1]
    # A v5 assay without a data layer (not normalised).
    bare <- CreateSeuratObject(counts = as.sparse(d$logcounts), meta.data = d$cells)
    out$bare_error <- tryCatch(fit_assay(bare), error = conditionMessage)
    out
  }, d = d)

  expect_true(package_version(res$version) >= "5.0.0")
  expect_equal(res$assay_class, "Assay5")
  expect_setequal(res$layers, c("data.P1", "data.P2", "data.P3"))
  # SeuratObject's own LayerData(layer = "data") returns the first layer's cells only (with a warning);
  # popflow reads every layer, each cell where it lives, in the object's cell order.
  expect_equal(res$first_layer_cells, 160)
  expect_equal(dim(res$coords_split), c(480, 3))
  expect_equal(res$coords_split, res$coords_joined, ignore_attr = TRUE)
  expect_equal(rownames(res$coords_split), rownames(d$cells))
  expect_equal(unname(res$coords_split), unname(t(d$logcounts[c("g5", "g1", "g2"), ])))
  expect_equal(res$loss_assay$split, res$loss_assay$joined)
  expect_equal(res$loss_pca$split, res$loss_pca$joined)
  expect_equal(res$expression$split, res$expression$joined, tolerance = 1e-12)
  train <- d$cells$patient != "P3"
  expect_equal(unname(res$expression$split$scale), unname(apply(d$logcounts[, train], 1, sd)), tolerance = 1e-10)

  # Predictions come back as a v5 object (an Assay5 with one data layer).
  expect_equal(res$pred$class, "Assay5")
  expect_equal(res$pred$layers, "data")
  expect_equal(res$pred$split, res$pred$joined)
  m <- res$pred$model
  expect_equal(unname(res$pred$data), unname(m$center + m$scale * (m$rotation %*% t(res$pred$split))), tolerance = 1e-6)
  expect_equal(res$evaluate$split, res$evaluate$joined)
  expect_true(all(c("R2_all_genes", "R2_top_genes") %in% names(res$evaluate$split)))
  expect_equal(res$embed$split, res$embed$joined)
  expect_equal(res$combine$class, "Assay5")
  expect_equal(res$combine$split, res$combine$joined)
  expect_equal(sum(!res$combine$predicted), 160)
  expect_equal(unname(res$combine$split[, !res$combine$predicted]), unname(d$logcounts[, !train]))
  expect_equal(res$combine$pca, res$combine$pca_joined)

  expect_equal(res$v4_class, "Assay")
  expect_match(res$bare_error, "`assay` has no 'data' layer in the Seurat v5 assay 'RNA'; its layers: counts\n  Fix: normalise it first",
               fixed = TRUE)
})

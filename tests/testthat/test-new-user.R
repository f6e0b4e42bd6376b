# What a new user runs into: arguments that would vanish into `...`, object
# inputs the matrix path refuses, small populations under MFM's kNN graph, and
# numbers float32 cannot hold or a model that diverged. Small data, few steps.

small_pops <- function() {
  set.seed(3)
  src <- matrix(rnorm(240), ncol = 2)
  list(src = src, pop = rep(c("p1", "p2", "p3"), each = 40))
}

tiny_mfm <- function(k = 5) MFMParam(k = k, layers = 1, width = 8, populations_per_step = 2, cells_per_population = 16)

# A SingleCellExperiment of 2 patients x 2 cell types, control and stimulated, with a 3-PC PCA.
toy_cells <- function(n = 20) {
  set.seed(4)
  design <- expand.grid(cell = seq_len(n), condition = c("ctrl", "stim"), cell_type = c("A", "B"),
                        patient = c("P1", "P2"), stringsAsFactors = FALSE)
  expr <- sapply(1:5, function(g) (design$cell_type == "B") * 2 + (g <= 2) * (design$condition == "stim") * 2 +
                   rnorm(nrow(design), sd = 0.5))
  cells <- design[, c("patient", "condition", "cell_type")]
  rownames(cells) <- sprintf("c%03d", seq_len(nrow(cells)))
  dimnames(expr) <- list(rownames(cells), paste0("g", 1:5))
  pca <- popflow:::principal_components(expr, 3, scale = FALSE)
  SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = t(expr)),
                                             colData = S4Vectors::DataFrame(cells), reducedDims = list(PCA = pca))
}

fit_toy <- function(sce, ...) {
  fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim", method = "icfm",
          training = TrainingParam(steps = 3, batch_size = 16), verbose = FALSE, ...)
}

test_that("a setting given to fitFlow() or predict() directly is an error that names its parameter object", {
  d <- shifted_pair(60)
  tr <- quick_training(3)
  expect_error(fitFlow(d$source, d$target, steps = 10, verbose = FALSE),
               "`steps` is not an argument of fitFlow().*training = TrainingParam\\(steps = 10\\)")
  # Several settings of one object are gathered; every misplaced name is named.
  n <- 10
  err <- tryCatch(fitFlow(d$source, d$target, steps = n, lr = 1e-2, width = 8, verbose = FALSE), error = identity)
  expect_match(conditionMessage(err), "`steps`, `lr`, `width` are not arguments of fitFlow()", fixed = TRUE)
  expect_match(conditionMessage(err), "training = TrainingParam(steps = n, lr = 0.01)", fixed = TRUE)
  expect_match(conditionMessage(err), "network = NetworkParam(width = 8)", fixed = TRUE)
  # A method's setting goes to the chosen method's constructor, else to the one that has it.
  expect_error(fitFlow(d$source, d$target, method = "sbcfm", sigma = 0.5, verbose = FALSE),
               "method = SBCFMParam\\(sigma = 0.5\\)")
  expect_error(fitFlow(d$source, d$target, k = 5, verbose = FALSE), "method = MFMParam\\(k = 5\\)")
  expect_error(fitFlow(d$source, d$target, patience = 3, verbose = FALSE), "validation = ValidationParam\\(patience = 3\\)")
  # Object arguments on a matrix, and misspellings.
  expect_error(fitFlow(d$source, d$target, cells = 1:10, training = tr, verbose = FALSE),
               "`cells` is used only when `x` is a SingleCellExperiment or Seurat object")
  expect_error(fitFlow(d$source, d$target, trainig = tr, verbose = FALSE), "did you mean `training`")
  fit <- fitFlow(d$source, d$target, training = tr, verbose = FALSE)
  expect_error(predict(fit, d$source, sovler = SolverParam("euler")), "`sovler`.*did you mean `solver`")
  expect_error(predict(fit, d$source, steps = 4), "solver = SolverParam\\(steps = 4\\)")
  expect_error(predict(fit, d$source, population = rep("a", 60)), "`population` is used only by population models")
  p <- small_pops()
  mfm <- fitFlow(p$src, p$src + 1, population = c(p$pop, p$pop), method = tiny_mfm(), training = tr, verbose = FALSE)
  expect_error(predict(mfm, p$src, population = p$pop, to = 1), "`to` is used only by flow models")
  # Nothing in `...`: no error, the same prediction as before.
  expect_equal(dim(predict(fit, d$source, solver = SolverParam("euler", steps = 2))), c(60, 2))
})

test_that("labels for a model fitted without them, or label columns it was not fitted with, are errors", {
  p <- small_pops()
  tr <- quick_training(3)
  mfm <- fitFlow(p$src, p$src + 1, population = c(p$pop, p$pop), method = tiny_mfm(), training = tr, verbose = FALSE)
  expect_error(predict(mfm, p$src, population = p$pop, label = rep("drug", 120)),
               "`label` is given, but the model was fitted without labels")
  drug <- rep(c("ctrl", "drug", "ctrl"), each = 40)
  cgfm <- fitFlow(p$src, p$src + 1, population = c(p$pop, p$pop), label = data.frame(drug = c(drug, drug)),
                  method = CGFMParam(populations_per_step = 2, cells_per_population = 16), training = tr, verbose = FALSE)
  expect_error(predict(cgfm, p$src[1:40, ], label = data.frame(drug = "ctrl", dose = 1)[rep(1, 40), ]),
               "`label` has the column 'dose', which the model was not fitted with")
  expect_equal(dim(predict(cgfm, p$src[1:40, ], label = data.frame(drug = rep("ctrl", 40)),
                           solver = SolverParam("euler", steps = 2))), c(40, 2))
})

test_that("objects: NA and clashing population ids, bad `cells`, and a recomputed PCA are errors", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- toy_cells()
  with_na <- sce
  with_na$cell_type[3] <- NA
  expect_error(fit_toy(with_na, population = c("patient", "cell_type")),
               "`population` column 'cell_type' is NA for 1 of the cells used")
  clash <- sce
  clash$patient <- ifelse(clash$patient == "P1", "x/y", "x")
  clash$cell_type <- ifelse(clash$cell_type == "A", "z", "y/z")
  expect_error(fit_toy(clash, population = c("patient", "cell_type")), "same population id 'x/y/z'")
  expect_error(fit_toy(sce, cells = c(NA, rep(TRUE, ncol(sce) - 1))), "`cells` contains 1 NA value")
  expect_error(fit_toy(sce, cells = rep(TRUE, 10)), "`cells` is a logical vector of 10 values but `x` has 160 cells")
  expect_error(fit_toy(sce, cells = c(1, 500)), "`cells` has 1 index that is not a cell")
  expect_error(fit_toy(sce, cells = sce$condition == "ctrl"), "`cells` selects no cells with condition == 'stim'")
  # A PCA recomputed on other cells has other loadings: refused at predict; a subset (no loadings) is not.
  fit <- fit_toy(sce, population = c("patient", "cell_type"))
  other <- sce[, sce$patient == "P2"]
  SingleCellExperiment::reducedDim(other, "PCA") <-
    popflow:::principal_components(t(SummarizedExperiment::assay(other, "logcounts")), 3, scale = FALSE)
  expect_error(predict(fit, other), "`newdata` has a PCA 'PCA' with other loadings")
  expect_error(evaluateFlow(fit, other), "`source` has a PCA 'PCA' with other loadings")
  expect_s4_class(predict(fit, sce[, sce$patient == "P2"], solver = SolverParam("euler", steps = 2)),
                  "SingleCellExperiment")
  # A setting given directly to the object method is named too.
  expect_error(fit_toy(sce, steps = 5), "`steps` is not an argument of fitFlow()")
})

test_that("populations with no more than k cells use k = n - 1, named in one message and recorded", {
  p <- small_pops()
  tr <- quick_training(3)
  sizes <- c(p$pop[1:40], rep(c("p2", "p3"), c(10, 5)))  # p1: 40 source cells, p2: 10, p3: 5
  src <- p$src[1:55, ]
  expect_message(mfm <- fitFlow(src, src + 1, population = c(sizes, sizes), method = tiny_mfm(k = 20), training = tr,
                                verbose = FALSE),
                 "2 populations are smaller than the kNN graph's k = 20.*'p2' \\(10 source cells, k = 9\\), 'p3' \\(5 source cells, k = 4\\)")
  expect_equal(mfm$populations$graph_k, c(20L, 9L, 4L))
  expect_message(pred <- predict(mfm, src[1:3, ], population = rep("new", 3), solver = SolverParam("euler", steps = 2)),
                 "'new' \\(3 cells, k = 2\\)")
  expect_true(all(is.finite(pred)))
  expect_message(emb <- embedPopulations(mfm, src, sizes), "2 populations are smaller")
  expect_equal(unname(rowSums(emb^2)), rep(1, 3), tolerance = 1e-5)
  # No graph, no message.
  expect_silent(fitFlow(src, src + 1, population = c(sizes, sizes), training = tr, verbose = FALSE,
                        method = MFMParam(k = 20, encoder = "mean", width = 8, populations_per_step = 2,
                                          cells_per_population = 16)))
})

test_that("the README's object example runs on the built-in Kang data, whose populations are smaller than k", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- kangPBMC()
  fit <- suppressMessages(fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
                                  population = c("patient", "cell_type"), cells = sce$patient != "107",
                                  method = MFMParam(width = 8, layers = 1, populations_per_step = 2,
                                                    cells_per_population = 32),
                                  training = TrainingParam(steps = 2), verbose = FALSE))
  expect_equal(fit$method$k, 50L)
  small <- fit$populations$source_cells <= 50
  expect_true(any(small))
  expect_equal(fit$populations$graph_k[small], fit$populations$source_cells[small] - 1L)
  expect_message(emb <- embedPopulations(fit, sce[, sce$cell_type != "Megakaryocytes"]), "k = n - 1")
  expect_equal(nrow(emb), 3 * 7)
})

test_that("values float32 cannot hold are refused, and undefined R^2 and r are NA with a message", {
  d <- shifted_pair(60)
  expect_error(fitFlow(d$source * 1e-25, d$target * 1e-25, training = quick_training(3), verbose = FALSE),
               "`x` has 2 features whose values are all below 1.08e-19")
  expect_error(wassersteinDistance(d$source * 1e-25, d$target * 1e-25, p = 2), "`x` has 2 features")
  expect_gt(wassersteinDistance(d$source * 1e-15, d$target * 1e-15, p = 2), 0)
  one <- d$source[, 1, drop = FALSE]
  fit <- fitFlow(one, d$target[, 1, drop = FALSE], training = quick_training(3), verbose = FALSE)
  expect_message(ev <- evaluateFlow(fit, one, d$target[, 1, drop = FALSE], solver = SolverParam("euler", steps = 2)),
                 "the model has 1 feature: mean_R2 .* and corr_r .* both are NA")
  two <- fitFlow(d$source, d$target, training = quick_training(3), verbose = FALSE)
  ev2 <- evaluateFlow(two, d$source, d$target, solver = SolverParam("euler", steps = 2), baselines = FALSE)
  expect_true(is.finite(ev2$mean_R2) && is.na(ev2$corr_r) && !is.nan(ev2$corr_r))
  expect_true(all(is.na(ev$mean_R2[ev$prediction != "noise floor"])) && all(is.na(ev$corr_r)))
  expect_false(any(is.nan(as.matrix(ev[, c("mean_R2", "corr_r")]))))
})

test_that("non-finite cells from any solver are one R error; a diverged fit returns a usable model or none", {
  solver <- SolverParam("euler", steps = 2)
  expect_error(popflow:::checked_states(list(states = list(matrix(0, 2, 2), matrix(c(1, NaN, 1, 1), 2))), solver),
               "`object` moved cells to NaN or infinite values \\(solver \"euler\"\\).*Fix:")
  expect_error(popflow:::checked_states(stop("dopri5: the velocity field produced non-finite values"), SolverParam()),
               "`object` moved cells to NaN or infinite values \\(solver \"dopri5\"\\)")
  expect_error(popflow:::checked_states(stop("something else"), solver), "^something else$")
  # Cells scaled by 1000 and lr = 10: the first step's weights already give a non-finite loss or
  # gradient, so no step is usable (test-fit.R has a fit that keeps step 1).
  d <- shifted_pair(100)
  expect_error(fitFlow(d$source * 1000, d$target * 1000, training = quick_training(50, lr = 10), verbose = FALSE),
               "diverged.*before any usable model")
})

# One table of bad inputs across the public API. Each case must give an R
# error (or, where documented, a warning) whose message names the argument
# (backticked, as pf_abort() writes it) and says how to fix it, and never a
# C++ backtrace or LibTorch internals. test-errors.R holds further checks of
# specific messages.

bad_input_fixtures <- function() {
  d <- shifted_pair(60)
  tr <- quick_training(5)
  fit <- fitFlow(d$source, d$target, training = tr, verbose = FALSE)
  named <- d$source
  colnames(named) <- c("a", "b")
  fit_named <- fitFlow(named, d$target, training = tr, verbose = FALSE)
  set.seed(2)
  src <- matrix(rnorm(240), ncol = 2)
  pop <- rep(c("p1", "p2", "p3"), each = 40)
  mfm <- fitFlow(src, src + 1, population = c(pop, pop), training = tr, verbose = FALSE,
                 method = MFMParam(k = 5, layers = 1, width = 8, populations_per_step = 2, cells_per_population = 16))
  drug <- rep(c("ctrl", "drug", "ctrl"), each = 40)
  cgfm <- fitFlow(src, src + 1, population = c(pop, pop), label = c(drug, drug), training = tr, verbose = FALSE,
                  method = CGFMParam(populations_per_step = 2, cells_per_population = 16))
  saved <- tempfile(fileext = ".popflow")
  saveFlow(fit, saved)
  bytes <- readBin(saved, "raw", file.size(saved))
  truncated <- tempfile(fileext = ".popflow")
  writeBin(bytes[seq_len(length(bytes) - 100)], truncated)
  foreign <- tempfile(fileext = ".rds")
  saveRDS(d$source, foreign)
  with_value <- function(m, i, j, v) {
    m[i, j] <- v
    m
  }
  list(d = d, tr = tr, fit = fit, fit_named = fit_named, src = src, pop = pop, mfm = mfm, cgfm = cgfm, drug = drug,
       truncated = truncated, foreign = foreign, with_value = with_value)
}

# description, the call (evaluated with the fixtures in scope), the argument
# the message must name, and "error" or "warning".
bad_input_cases <- list(
  # fitFlow(): cells
  list("NA in source cells", quote(fitFlow(with_value(d$source, 2, 1, NA), d$target, training = tr, verbose = FALSE)), "x"),
  list("NaN in target cells", quote(fitFlow(d$source, with_value(d$target, 5, 2, NaN), training = tr, verbose = FALSE)), "target"),
  list("-Inf in time-course cells", quote(fitFlow(with_value(d$source, 1, 1, -Inf), time = rep(0:1, 30), training = tr, verbose = FALSE)), "x"),
  list("logical matrix", quote(fitFlow(d$source > 0, d$target, training = tr, verbose = FALSE)), "x"),
  list("complex matrix", quote(fitFlow(d$source + 0i, d$target, training = tr, verbose = FALSE)), "x"),
  list("data.frame with a factor column", quote(fitFlow(data.frame(a = d$source[, 1], b = factor(d$source[, 2] > 0)), d$target, verbose = FALSE)), "x"),
  list("a list instead of a matrix", quote(fitFlow(list(d$source), d$target, verbose = FALSE)), "x"),
  list("NULL cells", quote(fitFlow(NULL, d$target, verbose = FALSE)), "x"),
  list("no feature columns", quote(fitFlow(d$source[, 0], d$target[, 0], verbose = FALSE)), "x"),
  list("empty source population", quote(fitFlow(d$source[0, ], d$target, training = tr, verbose = FALSE)), "x"),
  list("a single source cell", quote(fitFlow(d$source[1, , drop = FALSE], d$target, training = tr, verbose = FALSE)), "x"),
  list("a single cell at one time point", quote(fitFlow(d$source, time = c(1, rep(0, 59)), training = tr, verbose = FALSE)), "time"),
  list("target-FM population of one cell", quote(fitFlow(d$target[1, , drop = FALSE], method = "targetfm", training = tr, verbose = FALSE)), "x"),
  list("huge values that overflow float32", quote(fitFlow(with_value(d$source, 1, 1, 1e300), d$target, training = tr, verbose = FALSE)), "x"),
  list("sparse matrix with NA", quote(fitFlow(Matrix::Matrix(with_value(d$source, 1, 1, NA), sparse = TRUE), d$target, training = tr, verbose = FALSE)), "x"),
  list("sparse matrix too large to densify", quote(fitFlow(Matrix::sparseMatrix(i = 1, j = 1, x = 1, dims = c(1e5, 5e4)), d$target, verbose = FALSE)), "x"),
  list("zero-variance feature (documented warning)", quote(fitFlow(cbind(d$source, 1), cbind(d$target, 1), training = tr, verbose = FALSE)), "x", "warning"),
  list("values too small for float32", quote(fitFlow(d$source * 1e-25, d$target * 1e-25, training = tr, verbose = FALSE)), "x"),
  # Arguments that would vanish into `...`
  list("a training setting given to fitFlow() directly", quote(fitFlow(d$source, d$target, steps = 10, verbose = FALSE)), "steps"),
  list("an object argument for a matrix", quote(fitFlow(d$source, d$target, cells = 1:10, training = tr, verbose = FALSE)), "cells"),
  list("a misspelt argument of fitFlow()", quote(fitFlow(d$source, d$target, trainig = tr, verbose = FALSE)), "trainig"),
  list("a misspelt solver in predict()", quote(predict(fit, d$source, sovler = SolverParam("rk4"))), "sovler"),
  list("a solver setting given to predict() directly", quote(predict(fit, d$source, steps = 4)), "steps"),
  list("population given to a flow's predict()", quote(predict(fit, d$source, population = rep("a", 60))), "population"),
  list("`to` given to a population model's predict()", quote(predict(mfm, src, population = pop, to = 1)), "to"),
  list("labels for a model fitted without labels", quote(predict(mfm, src, population = pop, label = rep("x", 120))), "label"),
  list("a label column the model was not fitted with", quote(predict(cgfm, src[1:40, ], label = data.frame(label = rep("ctrl", 40), dose = 1))), "label"),
  # fitFlow(): labels of cells and settings
  list("logical time labels", quote(fitFlow(d$source, time = rep(c(TRUE, FALSE), 30), verbose = FALSE)), "time"),
  list("NA in time labels", quote(fitFlow(d$source, time = c(NA, rep(0:1, length.out = 59)), verbose = FALSE)), "time"),
  list("NA in group", quote(fitFlow(d$source, d$target, group = c(NA, rep("a", 119)), verbose = FALSE)), "group"),
  list("zero steps", quote(fitFlow(d$source, d$target, training = TrainingParam(steps = 0), verbose = FALSE)), "steps"),
  list("negative learning rate", quote(TrainingParam(lr = -1e-3)), "lr"),
  list("NaN learning rate", quote(TrainingParam(lr = NaN)), "lr"),
  list("infinite batch size", quote(TrainingParam(batch_size = Inf)), "batch_size"),
  list("negative seed", quote(TrainingParam(seed = -1)), "seed"),
  list("NA for TF32", quote(TrainingParam(tf32 = NA)), "tf32"),
  list("a word for the step graph", quote(TrainingParam(step_graph = "yes")), "step_graph"),
  list("EMA decay of 1", quote(TrainingParam(ema_decay = 1)), "ema_decay"),
  list("threads < 1 in fitFlow", quote(fitFlow(d$source, d$target, threads = 0, verbose = FALSE)), "threads"),
  list("device \"cuda\" without CUDA", quote(fitFlow(d$source, d$target, device = "cuda", verbose = FALSE)), "device"),
  list("unknown device", quote(fitFlow(d$source, d$target, device = "tpu", verbose = FALSE)), "device"),
  list("method given as a number", quote(fitFlow(d$source, d$target, method = 1, verbose = FALSE)), "method"),
  list("network settings as a plain list", quote(fitFlow(d$source, d$target, network = list(width = 8), verbose = FALSE)), "network"),
  list("negative network depth", quote(NetworkParam(depth = -1)), "depth"),
  list("negative sigma", quote(OTCFMParam(sigma = -1)), "sigma"),
  list("zero solver steps", quote(SolverParam("rk4", steps = 0)), "steps"),
  # Population models
  list("k = 0 for the GCN encoder", quote(MFMParam(k = 0)), "k"),
  list("negative k", quote(MFMParam(k = -3, encoder = "mean")), "k"),
  list("MFM without population", quote(fitFlow(src, src + 1, method = "mfm", training = tr, verbose = FALSE)), "population"),
  list("NA in population", quote(fitFlow(src, src + 1, population = c(NA, pop[-1], pop), method = "mfm", verbose = FALSE)), "population"),
  list("NaN in a numeric label", quote(fitFlow(src, src + 1, population = c(pop, pop), label = c(NaN, rep(1, 239)), method = "cgfm", verbose = FALSE)), "label"),
  list("labels of the wrong type (Date)", quote(fitFlow(src, src + 1, population = c(pop, pop), label = Sys.Date() + seq_len(240), method = "cgfm", verbose = FALSE)), "label"),
  list("label varying within a population", quote(fitFlow(src, src + 1, population = c(pop, pop), label = rep(c("a", "b"), 120), method = "cgfm", verbose = FALSE)), "label"),
  list("CGFM without labels", quote(fitFlow(src, src + 1, population = c(pop, pop), method = "cgfm", verbose = FALSE)), "label"),
  # predict(), sampleTrajectories(), evaluateFlow(), embedPopulations()
  list("features differ between fit and predict", quote(predict(fit, cbind(d$source, 0))), "newdata"),
  list("unknown column names at predict", quote(predict(fit_named, `colnames<-`(d$source, c("a", "z"))) ), "newdata"),
  list("NaN in cells to predict", quote(predict(fit, with_value(d$source, 3, 2, NaN))), "newdata"),
  list("predict to a time beyond the fit", quote(predict(fit, d$source, to = 2)), "to"),
  list("threads < 1 in predict", quote(predict(fit, d$source, threads = 0)), "threads"),
  list("non-numeric cells to predict (MFM)", quote(predict(mfm, src > 0, population = pop)), "newdata"),
  list("unseen label at prediction", quote(predict(cgfm, src[1:40, ], label = rep("other", 40))), "label"),
  list("missing label column at prediction", quote(predict(cgfm, src[1:40, ], label = data.frame(dose = rep(1, 40)))), "label"),
  list("trajectory times not monotone", quote(sampleTrajectories(fit, d$source, times = c(0, 1, 0.5))), "times"),
  list("trajectory cells with other features", quote(sampleTrajectories(fit, d$source[, 1, drop = FALSE])), "x"),
  list("Inf in observed cells to evaluate", quote(evaluateFlow(fit, d$source, with_value(d$target, 1, 1, Inf))), "target"),
  list("evaluate something that is not a model", quote(evaluateFlow(list(), d$source, d$target)), "object"),
  list("unknown baseline name", quote(evaluateFlow(fit, d$source, d$target, baselines = c("no change", "median shift"))), "baselines"),
  list("label mean shift for a flow", quote(evaluateFlow(fit, d$source, d$target, baselines = "label mean shift")), "baselines"),
  list("baselines neither a flag nor names", quote(evaluateFlow(fit, d$source, d$target, baselines = 2)), "baselines"),
  list("top_genes below 2", quote(evaluateFlow(fit, d$source, d$target, top_genes = 1)), "top_genes"),
  list("compare something that is not an evaluation", quote(compareToBaselines(d$source)), "evaluation"),
  list("embed populations with a CGFM model", quote(embedPopulations(cgfm, src, pop)), "object"),
  list("threads < 1 in embedPopulations", quote(embedPopulations(mfm, src, pop, threads = -1)), "threads"),
  # Model files
  list("save something that is not a model", quote(saveFlow(d$source, tempfile())), "object"),
  list("save to a missing path", quote(saveFlow(fit, NA_character_)), "file"),
  list("load a truncated model file", quote(loadFlow(truncated)), "file"),
  list("load a file that is not a model", quote(loadFlow(foreign)), "file"),
  list("load a path that does not exist", quote(loadFlow(file.path(tempdir(), "none.popflow"))), "file"),
  # Metrics
  list("distance between sets of other dimensions", quote(wassersteinDistance(d$source, d$target[, 1, drop = FALSE])), "y"),
  list("NA in cells of a distance", quote(energyDistance(with_value(d$source, 1, 1, NA), d$target)), "x"),
  list("MMD with a zero kernel parameter", quote(mmdDistance(d$source, d$target, gammas = c(1, 0))), "gammas"),
  list("Wasserstein order 3", quote(wassersteinDistance(d$source, d$target, p = 3)), "p"),
  list("distance between sets too small for float32", quote(wassersteinDistance(d$source * 1e-25, d$target * 1e-25, p = 2)), "x")
)

test_that("every bad input gives an R condition that names the argument and the fix", {
  skip_if_not_installed("Matrix")
  fx <- bad_input_fixtures()
  env <- list2env(fx, parent = globalenv())
  expect_gte(length(bad_input_cases), 30)
  expect_equal(anyDuplicated(vapply(bad_input_cases, `[[`, "", 1)), 0)
  for (case in bad_input_cases) {
    desc <- case[[1]]
    if (desc == "device \"cuda\" without CUDA" && cudaAvailable()) next
    type <- if (length(case) > 3) case[[4]] else "error"
    cond <- tryCatch({
      suppressMessages(eval(case[[2]], env))
      NULL
    }, error = function(e) e, warning = function(w) w)
    expect_true(inherits(cond, type), info = sprintf("%s: expected an %s, got %s", desc, type,
                                                     if (is.null(cond)) "none" else class(cond)[1]))
    if (is.null(cond)) next
    msg <- conditionMessage(cond)
    expect_true(grepl(sprintf("`%s`", case[[3]]), msg, fixed = TRUE), info = sprintf("%s: %s", desc, msg))
    expect_true(grepl("Fix:", msg, fixed = TRUE), info = sprintf("%s: %s", desc, msg))
    expect_false(grepl("c10::|libtorch|Exception raised from|frame #[0-9]|std::", msg), info = sprintf("%s: %s", desc, msg))
  }
})

test_that("sparse and data-frame cells are accepted and densified, as documented", {
  skip_if_not_installed("Matrix")
  d <- shifted_pair(60)
  sp <- Matrix::Matrix(d$source, sparse = TRUE)
  fit <- fitFlow(sp, Matrix::Matrix(d$target, sparse = TRUE), training = quick_training(5), verbose = FALSE)
  expect_identical(predict(fit, sp), predict(fit, d$source))
  expect_equal(wassersteinDistance(sp, d$target), wassersteinDistance(d$source, d$target))
})

# Population models (MFM, CGFM): small problems that train in seconds on one thread.

# Populations with source N(mu_p, I) and target = source + 2 mu_p: the shift
# depends on the population's mean, which one cell cannot reveal (the
# populations overlap), so a plain flow can only learn an average map.
mean_shift_populations <- function(means, n = 100, seed = 1) {
  set.seed(seed)
  src <- do.call(rbind, lapply(seq_len(nrow(means)), function(p) sweep(matrix(rnorm(2 * n), ncol = 2), 2, means[p, ], "+")))
  shift <- 2 * means[rep(seq_len(nrow(means)), each = n), , drop = FALSE]
  pop <- rep(sprintf("p%02d", seq_len(nrow(means))), each = n)
  list(source = src, target = src + shift, population = pop)
}

grid_means <- as.matrix(expand.grid(c(-1.5, -0.5, 0.5, 1.5), c(-1.5, -0.5, 0.5, 1.5)))
small_mfm <- function(...) MFMParam(k = 10, layers = 2, width = 16, populations_per_step = 8,
                                    cells_per_population = 64, ...)

test_that("MFM predicts an unseen population's mean-dependent shift; plain FM cannot", {
  d <- mean_shift_populations(grid_means)
  tr <- TrainingParam(steps = 1500, lr = 2e-3, seed = 2)
  mfm <- fitFlow(d$source, d$target, population = c(d$population, d$population), method = small_mfm(),
                 training = tr, verbose = FALSE)
  fm <- fitFlow(d$source, d$target, method = "icfm", training = tr, verbose = FALSE)
  expect_s3_class(mfm, "popflow_meta")
  expect_s3_class(mfm, "popflow_flow")
  # An unseen population between the training means.
  set.seed(3)
  mu <- c(1, -1)
  new <- sweep(matrix(rnorm(400), ncol = 2), 2, mu, "+")
  truth <- sweep(new, 2, 2 * mu, "+")
  solver <- SolverParam("rk4", steps = 10)
  p_mfm <- predict(mfm, new, population = rep("new", 200), solver = solver)
  p_fm <- predict(fm, new, solver = solver)
  expect_equal(dim(p_mfm), dim(new))
  err <- function(p) sqrt(mean(rowSums((p - truth)^2)))
  mean_err <- function(p) sqrt(sum((colMeans(p) - colMeans(truth))^2))
  # Measured: MFM 0.4 (cell RMSE) and 0.36 (mean); FM 2.1 and 0.9; no change 2.8.
  expect_lt(mean_err(p_mfm), 0.6)
  expect_lt(err(p_mfm), 0.6)
  expect_gt(err(p_fm), 1.5)
  expect_lt(err(p_mfm), 0.35 * err(p_fm))
  # Rows keep their order: predicting a shuffled population gives the same rows, shuffled.
  perm <- sample(nrow(new))
  p_perm <- predict(mfm, new[perm, ], population = rep("new", 200), solver = solver)
  expect_equal(p_perm, p_mfm[perm, ], tolerance = 1e-5, ignore_attr = TRUE)
  # Several populations in one call: each is embedded on its own cells.
  both <- predict(mfm, rbind(new, -new), population = rep(c("a", "b"), each = 200), solver = solver)
  expect_equal(both[1:200, ], p_mfm, tolerance = 1e-5, ignore_attr = TRUE)
  expect_lt(sqrt(sum((colMeans(both[201:400, ]) - colMeans(-truth))^2)), 0.8)  # shift length 2.8
})

test_that("population embeddings have unit norm, are keyed by population and tell populations apart", {
  d <- mean_shift_populations(grid_means)
  fit <- fitFlow(d$source, d$target, population = c(d$population, d$population), method = small_mfm(),
                 training = TrainingParam(steps = 200, seed = 4), verbose = FALSE)
  emb <- embedPopulations(fit, d$source, d$population)
  expect_equal(dim(emb), c(16, 16))
  expect_equal(rownames(emb), unique(d$population))
  expect_equal(unname(rowSums(emb^2)), rep(1, 16), tolerance = 1e-5)
  far <- sqrt(sum((emb["p01", ] - emb["p16", ])^2))  # means (-1.5, -1.5) and (1.5, 1.5)
  expect_gt(far, 0.1)
  # The embedding is a function of the population: the same cells in another order embed the same.
  rows <- d$population == "p05"
  again <- embedPopulations(fit, d$source[rows, ][sample(sum(rows)), ], rep("x", sum(rows)))
  expect_equal(unname(again[1, ]), unname(emb["p05", ]), tolerance = 1e-5)
})

test_that("CGFM learns label-dependent shifts and refuses unseen labels", {
  set.seed(5)
  src <- matrix(rnorm(1600), ncol = 2)
  lab <- rep(c("up", "down"), each = 400)
  tgt <- src + cbind(ifelse(lab == "up", 2, -2), 0)
  fit <- fitFlow(src, tgt, label = c(lab, lab), method = CGFMParam(populations_per_step = 2, cells_per_population = 128),
                 training = TrainingParam(steps = 400, lr = 2e-3), verbose = FALSE)
  expect_output(print(fit), "CGFM")
  new <- matrix(rnorm(200), ncol = 2)
  solver <- SolverParam("rk4", steps = 10)
  up <- predict(fit, new, label = rep("up", 100), solver = solver)
  down <- predict(fit, new, label = rep("down", 100), solver = solver)
  expect_gt(mean(up[, 1] - new[, 1]), 1.5)
  expect_lt(mean(down[, 1] - new[, 1]), -1.5)
  expect_error(predict(fit, new, label = rep("sideways", 100)),
               "`label` has the value 'sideways'.*not seen in training; known values: down, up")
  expect_error(predict(fit, new), "`label` is missing")
  expect_error(embedPopulations(fit, new, rep("a", 100)), "`object` must be an MFM model")
})

test_that("MFM models with labels, other encoders and OT coupling round-trip through files", {
  d <- mean_shift_populations(grid_means[1:6, ], n = 60)
  pops <- c(d$population, d$population)
  dose <- as.numeric(factor(pops)) / 6
  treat <- ifelse(as.numeric(factor(pops)) %% 2 == 0, "a", "b")
  solver <- SolverParam("rk4", steps = 4)
  for (m in list(small_mfm(coupling = "exact"), MFMParam(encoder = "mean", width = 8, populations_per_step = 3,
                                                         cells_per_population = 32),
                 MFMParam(encoder = "kme", width = 16, populations_per_step = 3, cells_per_population = 32))) {
    fit <- fitFlow(d$source, d$target, population = pops, label = data.frame(treat = treat, dose = dose),
                   method = m, training = TrainingParam(steps = 20), verbose = FALSE)
    new_lab <- data.frame(treat = rep("a", 60), dose = rep(0.5, 60))
    pred <- predict(fit, d$source[1:60, ], population = rep("q", 60), label = new_lab, solver = solver)
    path <- tempfile(fileext = ".popflow")
    saveFlow(fit, path)
    back <- loadFlow(path)
    expect_s3_class(back, "popflow_meta")
    expect_identical(predict(back, d$source[1:60, ], population = rep("q", 60), label = new_lab, solver = solver), pred)
    rds <- tempfile(fileext = ".rds")
    saveRDS(fit, rds)
    expect_identical(predict(readRDS(rds), d$source[1:60, ], population = rep("q", 60), label = new_lab,
                             solver = solver), pred)
    path2 <- tempfile(fileext = ".popflow")
    saveFlow(back, path2)
    expect_identical(readBin(path, "raw", file.size(path)), readBin(path2, "raw", file.size(path2)))
    expect_output(print(fit), "MFM")
    expect_output(print(summary(fit)), sprintf("encoder=%s", m$encoder))
    pdf(NULL)
    expect_invisible(plot(fit))
    dev.off()
  }
  expect_error(predict(fit, d$source[1:60, ], population = rep("q", 60),
                       label = data.frame(treat = rep("c", 60), dose = 0.5)), "value 'c'.*known values: a, b")
  # Trajectories of a population model need its labels, as predict() does (see test-population-eval.R).
  expect_error(sampleTrajectories(fit, d$source[1:5, ]), "`label` is missing")
})

test_that("bad population inputs give R errors that name the argument", {
  d <- mean_shift_populations(grid_means[1:3, ], n = 30)
  pops <- c(d$population, d$population)
  tr <- TrainingParam(steps = 2)
  expect_error(fitFlow(d$source, d$target, method = "mfm", verbose = FALSE), "`population` is missing")
  expect_error(fitFlow(d$source, d$target, population = pops[-1], method = "mfm", verbose = FALSE),
               "`population` has 179 values but there are 180 cells")
  # Populations smaller than k use k = n - 1 (test-new-user.R), with a message naming them all.
  expect_message(fitFlow(d$source, d$target, population = pops, method = MFMParam(k = 50), training = tr,
                         verbose = FALSE), "3 populations are smaller than the kNN graph's k = 50")
  expect_error(fitFlow(d$source, d$target, population = pops, label = seq_along(pops), method = small_mfm(),
                       training = tr, verbose = FALSE), "`label` varies within population 'p01'")
  expect_error(fitFlow(d$source, d$target, population = pops, label = 1:3, method = small_mfm(), verbose = FALSE),
               "`label` has 3 values")
  expect_error(fitFlow(d$source, d$target, method = "cgfm", verbose = FALSE), "`label` is missing")
  expect_error(fitFlow(d$source, population = pops, method = "mfm", verbose = FALSE), "`target` is missing")
  expect_error(fitFlow(d$source, d$target, population = pops, method = "otcfm", verbose = FALSE),
               "`population` is used only by method")
  expect_error(MFMParam(encoder = "transformer"), "`encoder`")
  expect_error(MFMParam(k = 0), "`k` must be >= 1")
  expect_error(MFMParam(encoder = "kme", width = 15), "`width` must be even")
  fit <- fitFlow(d$source, d$target, population = pops, method = small_mfm(), training = tr, verbose = FALSE)
  expect_error(predict(fit, d$source), "`population` is missing")
  expect_error(predict(fit, d$source, population = rep("a", 5)), "`population` has 5 values")
  expect_message(predict(fit, d$source[1:5, ], population = rep("a", 5)), "'a' \\(5 cells, k = 4\\)")
  expect_message(embedPopulations(fit, d$source[1:5, ], rep("a", 5)), "'a' \\(5 cells, k = 4\\)")
  expect_error(predict(fit, cbind(d$source, 1), population = d$population), "`newdata` has 3 features")
})

test_that("TrainingParam(step_graph = TRUE) reaches the engine, and a CPU fit says why it takes the usual steps", {
  # The staged steps themselves are tested in C++ (tests/cpp/test_step_graph.cpp); on the CPU the
  # host reads every step, so the engine keeps the usual steps and the model is the same.
  d <- mean_shift_populations(grid_means[1:4, ], n = 40)
  fit <- function(graph) {
    fitFlow(d$source, d$target, population = c(d$population, d$population), method = small_mfm(),
            training = TrainingParam(steps = 6, seed = 2, step_graph = graph), verbose = FALSE)
  }
  expect_silent(plain <- fit(FALSE))
  expect_message(asked <- fit(TRUE), "step_graph = TRUE.*host reads every step")
  expect_null(plain$step_graph)
  expect_equal(asked$step_graph, "eager: the host reads every step (sync_every = 1)")
  expect_identical(asked$loss, plain$loss)
})

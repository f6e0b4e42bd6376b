# Sources of generative flows (R/sources.R): the ZINB fit against a direct
# maximum-likelihood fit, the engine's draws against the source they come
# from, model files, resume, the three input kinds and the errors.

zinb_counts <- function(n, mu, theta, pi, seed = 1) {
  set.seed(seed)
  y <- sapply(seq_along(mu), function(j) stats::rnbinom(n, mu = mu[j], size = theta[j]) * stats::rbinom(n, 1, 1 - pi[j]))
  colnames(y) <- paste0("g", seq_along(mu))
  y
}

# One gene's ZINB log-likelihood from R's dnbinom, maximised by Nelder-Mead:
# no gradient, no shared code with fitZINB().
direct_zinb <- function(y) {
  nll <- function(p) {
    m <- exp(p[1]); th <- exp(p[2]); q <- stats::plogis(p[3])
    -sum(ifelse(y == 0, log(q + (1 - q) * stats::dnbinom(0, size = th, mu = m)),
                log(1 - q) + stats::dnbinom(y, size = th, mu = m, log = TRUE)))
  }
  o <- stats::optim(c(log(mean(y) + 0.1), 0, 0), nll, control = list(maxit = 5000, reltol = 1e-12))
  c(mu = exp(o$par[1]), theta = exp(o$par[2]), pi = stats::plogis(o$par[3]), loglik = -o$value)
}

test_that("fitZINB() finds the direct maximum-likelihood fit and the simulated parameters", {
  mu <- c(5, 0.8, 20)
  theta <- c(2, 8, 0.8)
  pi <- c(0.3, 0.1, 0.5)
  y <- zinb_counts(4000, mu, theta, pi)
  fit <- fitZINB(y)
  expect_s3_class(fit, "popflow_zinb")
  expect_identical(fit$feature, colnames(y))
  expect_identical(attr(fit, "convergence"), 0L)
  for (j in seq_along(mu)) {
    direct <- direct_zinb(y[, j])
    expect_gte(fit$loglik[j], direct[["loglik"]] - 1e-4)  # at least as high as the direct maximum
    expect_equal(fit$loglik[j], direct[["loglik"]], tolerance = 1e-7)
    expect_equal(c(fit$mu[j], fit$theta[j], fit$pi[j]), unname(direct[c("mu", "theta", "pi")]), tolerance = 1e-2)
  }
  # The simulated parameters lie within the likelihood-ratio region of the fit (99.9%; theta and
  # pi of a gene with few zeros are loosely determined, so a region, not a tolerance on each).
  loglik_at <- function(y, m, th, q) {
    sum(ifelse(y == 0, log(q + (1 - q) * stats::dnbinom(0, size = th, mu = m)),
               log(1 - q) + stats::dnbinom(y, size = th, mu = m, log = TRUE)))
  }
  truth <- vapply(seq_along(mu), function(j) loglik_at(y[, j], mu[j], theta[j], pi[j]), numeric(1))
  expect_true(all(2 * (fit$loglik - truth) < stats::qchisq(0.999, 3)))
  expect_equal(fit$mu, mu, tolerance = 0.05)
  expect_output(print(fit), "ZINB fit of 3 genes to 4000 cells")
})

test_that("sources refuse bad settings, naming the argument and the fix", {
  expect_error(fitZINB(matrix(c(0.5, 1, 2, 3), 2)), "`counts` must hold whole numbers >= 0.*\n  Fix: give raw counts")
  expect_error(fitZINB(matrix(-1:2, 2)), "`counts` must hold whole numbers")
  expect_error(ZINBSource(), "`counts` is missing")
  expect_error(ZINBSource(matrix(0:3, 2), log_base = 1), "`log_base` must be a single number > 1")
  expect_error(ZINBSource(matrix(0:3, 2), size_factor = 0), "`size_factor` must be a single number > 0")
  expect_error(EmpiricalSource(matrix(c(1, NA), 1)), "`cells` contains 1 NA")
  expect_error(TargetFMParam(source = "zinb"), "`source` must be made by GaussianSource\\(\\), ZINBSource\\(\\)")
  expect_error(DiffusionParam(source = OTCFMParam()), "`source` must be made by")
  src <- ZINBSource(zinb_counts(100, c(2, 3), c(1, 1), c(0.2, 0.2)))
  expect_error(fitFlow(matrix(runif(300), ncol = 3), method = TargetFMParam(source = src), verbose = FALSE),
               "`source` has 2 features \\(genes\\) but the cells have 3")
  x <- matrix(runif(200), ncol = 2, dimnames = list(NULL, c("g2", "g1")))
  expect_error(fitFlow(x, method = TargetFMParam(source = src), verbose = FALSE), "`source` has other feature names")
})

test_that("a ZINB source is drawn in the engine as fitted, and a saved model draws the same cells", {
  y <- zinb_counts(400, c(3, 1), c(2, 5), c(0.3, 0))
  src <- ZINBSource(y, size_factor = 0.5, log_base = 2)
  x <- log2(y / 0.5 + 1)
  fit <- fitFlow(x, method = TargetFMParam(source = src), training = quick_training(30), verbose = FALSE)
  expect_output(print(fit), "source: ZINB per gene \\(2 genes, fitted to 400 cells")
  expect_output(print(summary(fit)), "source: ZINB per gene")
  expect_output(print(TargetFMParam(source = src)), "ZINBSource\\(ZINB per gene")
  draws <- popflow:::draw_source(fit$method$source, 40000, 2, seed = 3, handle = popflow:::flow_handle(fit))
  expect_equal(draws, popflow:::draw_source(fit$method$source, 40000, 2, seed = 3, handle = popflow:::flow_handle(fit)))
  # Counts back from the transform are whole numbers with the ZINB's zeros and mean.
  counts <- (2^draws - 1) * 0.5
  expect_equal(counts, round(counts), tolerance = 1e-4)
  z <- fitZINB(y)
  p0 <- z$pi + (1 - z$pi) * (z$theta / (z$theta + z$mu))^z$theta
  expect_equal(colMeans(round(counts) == 0), p0, tolerance = 0.03)
  expect_equal(colMeans(round(counts)), (1 - z$pi) * z$mu, tolerance = 0.03)
  # predict(n = ) starts from the engine's draws; the model file holds the source.
  path <- tempfile(fileext = ".pf")
  saveFlow(fit, path)
  back <- loadFlow(path)
  s <- SolverParam("euler", steps = 4)
  expect_identical(predict(back, n = 50, seed = 9, solver = s), predict(fit, n = 50, seed = 9, solver = s))
  expect_false(identical(predict(fit, n = 50, seed = 9, solver = s), predict(fit, n = 50, seed = 8, solver = s)))
  expect_error(logDensity(fit, x[1:5, ]), "`object` starts from its ZINB source, which has no density .*discrete.*\n  Fix: .*GaussianSource\\(\\)")
})

test_that("an empirical source draws exactly its cells; diffusion takes a source too", {
  set.seed(4)
  control <- matrix(round(rnorm(60) * 4) / 4, ncol = 2)  # quarters: exact in float32
  stim <- control[rep(1:30, 5), ] + matrix(rnorm(300, sd = 0.1), ncol = 2) + 2
  fit <- fitFlow(stim, method = TargetFMParam(source = EmpiricalSource(control)), training = quick_training(30),
                 verbose = FALSE)
  draws <- popflow:::draw_source(fit$method$source, 500, 2, seed = 1, handle = popflow:::flow_handle(fit))
  key <- function(m) paste(m[, 1], m[, 2])
  expect_true(all(key(draws) %in% key(control)))
  expect_gt(length(unique(key(draws))), 25)  # with replacement, from all 30
  # predict(n = ) moves the engine's draws of the source.
  s <- SolverParam("euler", steps = 5)
  start <- popflow:::draw_source(fit$method$source, 200, 2, seed = 2, handle = popflow:::flow_handle(fit))
  expect_identical(predict(fit, n = 200, seed = 2, solver = s), predict(fit, start, solver = s))
  dif <- fitFlow(stim, method = DiffusionParam(source = EmpiricalSource(control)), training = quick_training(20),
                 verbose = FALSE)
  expect_output(print(dif), "empirical source, variance-preserving path")
  expect_true(all(key(popflow:::draw_source(dif$method$source, 100, 2, 1, handle = popflow:::flow_handle(dif))) %in%
                    key(control)))
  expect_error(logDensity(fit, stim[1:3, ]), "it is a finite set of cells")
  expect_error(ReflowParam(fit), "`model` starts from its empirical source; reflow of a generative model draws Gaussian")
})

test_that("a fit with a ZINB source resumes exactly and validates on held-out cells", {
  y <- zinb_counts(300, c(3, 1, 6), c(2, 5, 1), c(0.3, 0, 0.2))
  x <- log2(y + 1)
  method <- TargetFMParam(source = ZINBSource(y))
  full <- fitFlow(x, method = method, training = quick_training(40, seed = 3), verbose = FALSE)
  half <- fitFlow(x, method = method, training = quick_training(20, seed = 3), verbose = FALSE)
  resumed <- fitFlow(x, resume = half, training = quick_training(40, seed = 3), verbose = FALSE)
  expect_identical(resumed$loss, full$loss)
  s <- SolverParam("euler", steps = 4)
  expect_identical(predict(resumed, n = 20, solver = s), predict(full, n = 20, solver = s))
  expect_error(fitFlow(x, resume = half, method = TargetFMParam(), training = quick_training(40, seed = 3),
                       verbose = FALSE), "`resume` was fitted with method \"targetfm\" and other settings")
  val <- fitFlow(x[1:200, ], method = method, training = quick_training(20), held_out = list(x = x[201:300, ]),
                 validation = ValidationParam(every = 10), verbose = FALSE)
  expect_length(val$validation$scores, 2)
  expect_true(all(is.finite(val$validation$scores)))
})

test_that("SingleCellExperiment and Seurat objects fit with a ZINB source of their genes", {
  skip_if_not_installed("SingleCellExperiment")
  y <- zinb_counts(120, c(3, 1, 6), c(2, 5, 1), c(0.3, 0, 0.2))
  logcounts <- t(log2(y + 1))
  colnames(logcounts) <- sprintf("c%03d", seq_len(ncol(logcounts)))
  cells <- data.frame(patient = rep(c("P1", "P2"), 60), row.names = colnames(logcounts))
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = logcounts),
                                                    colData = S4Vectors::DataFrame(cells))
  method <- TargetFMParam(source = ZINBSource(y))
  fit <- fitFlow(sce, assay = "logcounts", method = method, training = quick_training(10), verbose = FALSE)
  expect_equal(dim(predict(fit, n = 7, solver = SolverParam("rk4", steps = 4))), c(7, 3))
  skip_if_not_installed("SeuratObject")
  seu <- popflow:::kang_seurat(logcounts, cells, 2)
  fit <- fitFlow(seu, assay = "RNA", features = colnames(y), method = method, training = quick_training(10),
                 verbose = FALSE)
  expect_equal(dim(predict(fit, n = 7, solver = SolverParam("rk4", steps = 4))), c(7, 3))
})

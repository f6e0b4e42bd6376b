# logDensity() and logLik(): the exact log-likelihood of generative flows
# (instantaneous change of variables, src/core/ode.cpp integrate_divergence).

gaussian_cells <- function(n, seed) {
  set.seed(seed)
  sweep(matrix(rnorm(2 * n), ncol = 2) %*% diag(c(0.5, 1)), 2, c(1, -1), "+")
}
gaussian_log_density <- function(x) {
  stats::dnorm(x[, 1], 1, 0.5, log = TRUE) + stats::dnorm(x[, 2], -1, 1, log = TRUE)
}

fitted_gaussian <- local({
  fit <- NULL
  function() {
    if (is.null(fit)) {
      fit <<- fitFlow(gaussian_cells(2000, 1), method = "targetfm", network = NetworkParam(width = 32),
                      training = quick_training(1500, lr = 2e-3), verbose = FALSE)
    }
    fit
  }
})

test_that("a target FM flow fitted to a Gaussian has its analytic log-density", {
  fit <- fitted_gaussian()
  held_out <- gaussian_cells(300, 2)
  ld <- logDensity(fit, held_out)
  truth <- gaussian_log_density(held_out)
  expect_length(ld, 300)
  expect_true(attr(ld, "exact"))
  expect_lt(abs(mean(ld) - mean(truth)), 0.1)
  expect_lt(mean(abs(ld - truth)), 0.2)
  expect_gt(stats::cor(ld, truth), 0.97)
  # Not the source's density: the flow's change of volume is in it.
  source_only <- rowSums(stats::dnorm(held_out, log = TRUE))
  expect_gt(mean(abs(source_only - truth)), 1)
  ll <- logLik(fit, held_out)
  expect_s3_class(ll, "logLik")
  expect_equal(as.numeric(ll), sum(ld))
  expect_equal(attr(ll, "nobs"), 300)
  expect_gt(attr(ll, "df"), 1000)
})

test_that("Hutchinson's estimate agrees with the exact divergence on the same model", {
  fit <- fitted_gaussian()
  x <- gaussian_cells(400, 3)
  exact <- logDensity(fit, x, density = DensityParam("exact"))
  expect_identical(exact, logDensity(fit, x))  # "auto" is exact in 2 dimensions
  few <- logDensity(fit, x, density = DensityParam("hutchinson", probes = 1))
  expect_false(attr(few, "exact"))
  err <- few - exact
  expect_gt(stats::sd(err), 1e-3)  # an estimate per cell ...
  expect_lt(abs(mean(err)), 4 * stats::sd(err) / sqrt(length(err)))  # ... unbiased
  many <- logDensity(fit, x, density = DensityParam("hutchinson", probes = 64))
  expect_lt(stats::sd(many - exact), 0.3 * stats::sd(err))
  expect_identical(few, logDensity(fit, x, density = DensityParam("hutchinson", probes = 1)))
  expect_false(identical(few, logDensity(fit, x, density = DensityParam("hutchinson", probes = 1, seed = 2))))
})

test_that("held-out log-likelihood prefers the better model; saved models give the same densities", {
  fit <- fitted_gaussian()
  x <- gaussian_cells(300, 4)
  short <- fitFlow(gaussian_cells(2000, 1), method = "targetfm", network = NetworkParam(width = 32),
                   training = quick_training(30, lr = 2e-3), verbose = FALSE)
  expect_gt(as.numeric(logLik(fit, x)), as.numeric(logLik(short, x)) + 30)
  path <- tempfile(fileext = ".popflow")
  on.exit(unlink(path))
  saveFlow(fit, path)
  expect_identical(logDensity(loadFlow(path), x), logDensity(fit, x))
  # A fixed-step solver is close to the adaptive one.
  expect_lt(max(abs(logDensity(fit, x, solver = SolverParam("rk4", steps = 20)) - logDensity(fit, x))), 0.05)
})

test_that("log-densities of models without a density, and bad settings, are clear errors", {
  d <- shifted_pair(60)
  otcfm <- fitFlow(d$source, d$target, training = quick_training(5), verbose = FALSE)
  expect_error(logDensity(otcfm, d$target), "`object` is a OT-CFM model, which moves given cells and has no density")
  expect_error(logLik(otcfm, d$target), "fit with method = \"targetfm\" or \"diffusion\"")
  fit <- fitFlow(d$target, method = "targetfm", training = quick_training(5), verbose = FALSE)
  expect_error(logDensity(fit), "`newdata` is missing")
  expect_error(logLik(fit), "`newdata` is missing")
  expect_error(logDensity(fit, cbind(d$target, 1)), "`newdata` has 3 features but the model was fitted on 2")
  expect_error(logDensity(fit, d$target, density = list()), "`density` must be made by DensityParam()")
  expect_error(logDensity(fit, d$target, solver = DensityParam()), "`solver` must be made by SolverParam()")
  expect_error(DensityParam(probes = 0), "`probes` must be a whole number >= 1")
  # The engine refuses a missing setting rather than assume one.
  expect_error(popflow:::pf_log_density(popflow:::flow_handle(fit), d$target, popflow:::engine_config(SolverParam()),
                                        list(density = list(divergence = "exact", probes = 2)), 1L),
               "density configuration: missing 'seed'")
  expect_error(DensityParam("trace"), "`divergence` must be one of")
  cells <- rbind(d$source, d$target)
  timed <- fitFlow(cells, time = rep(c(0, 1, 2), each = 40), method = "targetfm", training = quick_training(5),
                   verbose = FALSE)
  expect_error(logDensity(timed, d$target), "`object` was fitted on 3 time points")
})

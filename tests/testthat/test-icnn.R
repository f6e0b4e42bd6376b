# The ICNN baseline of CellOT (ICNNParam): convexity of the fitted potential,
# the closed-form OT map between two Gaussians, model files, bad input.

sqrtm_sym <- function(S) {
  e <- eigen(S, symmetric = TRUE)
  e$vectors %*% diag(sqrt(e$values)) %*% t(e$vectors)
}

# The Brenier map of N(m1, S1) -> N(m2, S2): x -> m2 + A (x - m1).
gaussian_ot_matrix <- function(S1, S2) {
  r <- sqrtm_sym(S1)
  ri <- solve(r)
  ri %*% sqrtm_sym(r %*% S2 %*% r) %*% ri
}

gaussians <- local({
  set.seed(11)
  m1 <- c(0, 0)
  m2 <- c(2, -1)
  S1 <- matrix(c(1, 0.3, 0.3, 0.5), 2)
  S2 <- matrix(c(2, -0.4, -0.4, 1), 2)
  n <- 1500
  x <- matrix(rnorm(2 * n), ncol = 2) %*% chol(S1) + matrix(m1, n, 2, byrow = TRUE)
  y <- matrix(rnorm(2 * n), ncol = 2) %*% chol(S2) + matrix(m2, n, 2, byrow = TRUE)
  list(m1 = m1, m2 = m2, S1 = S1, S2 = S2, x = x, y = y, A = gaussian_ot_matrix(S1, S2))
})

icnn_fit <- local({
  fits <- list()
  function(g_convexity = "penalty") {
    if (is.null(fits[[g_convexity]])) {
      fits[[g_convexity]] <<- fitFlow(gaussians$x, gaussians$y,
                                      method = ICNNParam(width = 32, depth = 3, inner_steps = 5,
                                                         g_convexity = g_convexity),
                                      # The map test needs a converged fit; convexity holds at any step.
                                      training = TrainingParam(steps = if (g_convexity == "penalty") 3000 else 600,
                                                               batch_size = 256, seed = 2),
                                      verbose = FALSE)
    }
    fits[[g_convexity]]
  }
})

test_that("the closed-form Gaussian map is right (independent check of the reference)", {
  A <- gaussians$A
  expect_equal(A, t(A))  # symmetric positive definite: the gradient of a convex quadratic
  expect_true(all(eigen(A)$values > 0))
  expect_equal(A %*% gaussians$S1 %*% A, gaussians$S2)  # pushes S1 forward to S2
})

test_that("the ICNN's gradient map recovers the closed-form OT map between two Gaussians", {
  fit <- icnn_fit("penalty")
  expect_s3_class(fit, "popflow_icnn")
  expect_equal(fit$status, "completed")
  g <- gaussians
  # Source cells within two standard deviations (the map is learnt where the data are).
  z <- sqrt(rowSums((g$x %*% solve(sqrtm_sym(g$S1)))^2))
  x <- g$x[z < 2, ]
  exact <- sweep(sweep(x, 2, g$m1) %*% t(g$A), 2, g$m2, "+")
  pred <- predict(fit, x)
  err <- sqrt(rowSums((pred - exact)^2))
  scale <- sqrt(sum(diag(g$S2)))  # root mean squared distance of a target cell from its mean
  # Measured: mean error 0.10 (6% of the scale), 90% quantile 0.16.
  expect_lt(mean(err), 0.1 * scale)
  expect_lt(stats::quantile(err, 0.9), 0.2 * scale)
  # The tolerance tells maps apart: the mean shift (the right means, the wrong covariance) fails it.
  shifted <- sweep(x, 2, g$m2 - g$m1, "+")
  expect_gt(mean(sqrt(rowSums((shifted - exact)^2))), 0.1 * scale)
  # The linear part: a least-squares fit of the predictions is close to A (measured: within 0.012).
  coef <- stats::lm.fit(cbind(1, x), pred)$coefficients
  expect_lt(max(abs(t(coef[-1, ]) - g$A)), 0.1)
  expect_lt(max(abs(coef[1, ] - (g$m2 - g$A %*% g$m1))), 0.2)
})

test_that("the fitted potential is convex along random lines", {
  set.seed(5)
  second_differences <- function(fit) {
    unlist(lapply(1:20, function(i) {
      x0 <- rnorm(2, sd = 1.5)
      v <- rnorm(2)
      v <- v / sqrt(sum(v^2))
      t <- seq(-3, 3, length.out = 61)
      gv <- predict(fit, outer(t, v) + matrix(x0, length(t), 2, byrow = TRUE), type = "potential")
      diff(gv, differences = 2) / max(1, abs(gv))
    }))
  }
  # g clamped non-negative: exactly convex (float32 rounding aside).
  expect_gte(min(second_differences(icnn_fit("clamp"))), -1e-5)
  # g penalised (CellOT's default): convex up to what the penalty leaves.
  expect_gte(min(second_differences(icnn_fit("penalty"))), -1e-3)
  # The check can fail: a concave function's second differences are negative.
  t <- seq(-3, 3, length.out = 61)
  expect_lt(min(diff(-t^2, differences = 2)), -1e-3)
})

test_that("an ICNN model survives saveFlow/loadFlow and saveRDS with the same map and potential", {
  fit <- icnn_fit("clamp")
  x <- gaussians$x[1:50, ]
  path <- tempfile(fileext = ".popflow")
  saveFlow(fit, path)
  back <- loadFlow(path)
  expect_s3_class(back, "popflow_icnn")
  expect_identical(predict(back, x), predict(fit, x))
  expect_identical(predict(back, x, type = "potential"), predict(fit, x, type = "potential"))
  rds <- tempfile(fileext = ".rds")
  saveRDS(fit, rds)
  expect_identical(predict(readRDS(rds), x), predict(fit, x))
  expect_output(print(back), "ICNN \\(CellOT\\)")
  expect_true(any(grepl("inner_steps=5", summary(back)$configuration)))
  # evaluateFlow() scores it like a flow, beside the baselines.
  ev <- evaluateFlow(fit, gaussians$x, gaussians$y)
  expect_true(all(c("W2", "MMD") %in% names(ev)))
})

test_that("ICNN settings and misuse give clear errors", {
  expect_error(ICNNParam(width = 0), "`width` must be a whole number")
  expect_error(ICNNParam(inner_steps = 1.5), "`inner_steps`")
  expect_error(ICNNParam(g_convexity = "soft"), "`g_convexity` must be one of \"penalty\", \"clamp\"")
  expect_error(ICNNParam(lr = -1), "`lr`")
  expect_error(ICNNParam(betas = c(0.5, 1)), "`betas` must be two numbers in \\[0, 1\\)")
  expect_error(ICNNParam(g_penalty = -1), "`g_penalty`")
  x <- gaussians$x[1:40, ]
  y <- gaussians$y[1:40, ]
  tiny <- TrainingParam(steps = 4, batch_size = 16)
  expect_error(fitFlow(x, method = "icnn", training = tiny, verbose = FALSE), "`target` is missing")
  expect_error(fitFlow(x, y, population = rep(c("a", "b"), 40), method = "icnn", training = tiny, verbose = FALSE),
               "`population` is not used by the ICNN.*pooled map.*Fix: .*one model per population")
  expect_error(fitFlow(x, y[, 1, drop = FALSE], method = "icnn", training = tiny, verbose = FALSE),
               "`target` has 1 features")
  bad <- x
  bad[1, 1] <- NA
  expect_error(fitFlow(bad, y, method = "icnn", training = tiny, verbose = FALSE), "`x`.*NA")
  fit <- fitFlow(x, y, method = ICNNParam(width = 8, depth = 1), training = TrainingParam(steps = 4, batch_size = 16, lr = 0.5),
                 verbose = FALSE)
  expect_equal(fit$steps_done, 4)
  expect_equal(fit$training$lr, 1e-3)  # from ICNNParam(), not TrainingParam()
  expect_error(fitFlow(x, y, resume = fit, training = TrainingParam(steps = 8, batch_size = 16), verbose = FALSE),
               "`resume` is not supported by the ICNN")
  # A time limit's message does not offer resuming a fit that cannot resume.
  expect_message(fitFlow(x, y, method = ICNNParam(width = 8, depth = 1),
                         training = TrainingParam(steps = 1e7, batch_size = 16, time_limit = 0.2), verbose = FALSE),
                 "time limit.*cannot be resumed: fit again with more steps or a longer time_limit")
  expect_error(fitFlow(x, y, method = "icnn", training = tiny, held_out = list(x = x, target = y), verbose = FALSE),
               "`held_out` is not used by the ICNN")
  expect_error(sampleTrajectories(fit, x), "the ICNN is a map, not a flow")
  expect_error(predict(fit, x, type = "density"), "`type` must be one of")
  expect_error(predict(fit, x[, 1, drop = FALSE]), "newdata")
  expect_error(logDensity(fit, x))
})

test_that("the ICNN fits and predicts from SingleCellExperiment and Seurat objects", {
  skip_if_not_installed("SingleCellExperiment")
  tiny <- TrainingParam(steps = 3, batch_size = 32)
  method <- ICNNParam(width = 8, depth = 1)
  sce <- kangPBMC()
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", cells = sce$patient != "107",
                 method = method, training = tiny, verbose = FALSE)
  expect_s3_class(fit, "popflow_icnn")
  held <- sce[, sce$patient == "107"]
  pred <- predict(fit, held)
  expect_s4_class(pred, "SingleCellExperiment")
  expect_equal(ncol(pred), sum(held$condition == "ctrl"))
  expect_error(fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", population = "patient",
                       method = method, training = tiny, verbose = FALSE),
               "`population` is not used by the ICNN")
  skip_if_not_installed("SeuratObject")
  seu <- kangPBMC("Seurat", n_pcs = 5)
  fit <- fitFlow(seu, condition = "condition", source = "ctrl", target = "stim", method = method, training = tiny,
                 verbose = FALSE)
  expect_equal(fit$n_features, 5)
  expect_s4_class(predict(fit, seu), "Seurat")
})

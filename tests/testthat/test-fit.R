test_that("every method learns a translation from matrices", {
  d <- shifted_pair()
  for (m in list("icfm", "otcfm", OTCFMParam(ot_mode = "permutation"), "sbcfm")) {
    fit <- fitFlow(d$source, d$target, method = m, training = quick_training(400), verbose = FALSE)
    pred <- predict(fit, d$source, solver = SolverParam("rk4", steps = 20))
    expect_equal(dim(pred), dim(d$source))
    expect_lt(max(abs(colMeans(pred) - colMeans(d$target))), 0.4)
    expect_length(fit$loss, 400)
  }
})

test_that("OT-CFM with the auction solver trains on a shifted, narrower target", {
  set.seed(4)
  source <- matrix(rnorm(400), ncol = 2)
  target <- sweep(matrix(rnorm(400, sd = 0.5), ncol = 2), 2, c(3, 3), "+")
  method <- OTCFMParam(ot_mode = "permutation", ot_solver = "auction")
  fit <- fitFlow(source, target, method = method, training = TrainingParam(steps = 150, batch_size = 64),
                 verbose = FALSE)
  expect_identical(fit$method$ot_solver, "auction")
  expect_output(print(fit), "auction solver")
  pred <- predict(fit, source, solver = SolverParam("rk4", steps = 10))
  expect_lt(max(abs(colMeans(pred) - c(3, 3))), 0.5)
})

test_that("the fitted flow beats the no-change baseline on a rotation plus shift", {
  set.seed(11)
  source <- matrix(rnorm(800), ncol = 2) %*% diag(c(2, 0.5))
  rot <- matrix(c(0, 1, -1, 0), 2)
  target <- source %*% rot + 2
  fit <- fitFlow(source, target, method = "otcfm", training = quick_training(800), verbose = FALSE)
  ev <- evaluateFlow(fit, source, target)
  expect_setequal(ev$prediction, c("OT-CFM", "no change", "mean shift", "oracle shift", "noise floor"))
  expect_named(ev, c("prediction", "W1", "W2", "MMD", "energy", "mean_R2", "corr_r", "cells"))
  model <- ev[ev$prediction == "OT-CFM", ]
  expect_lt(model$W2, ev$W2[ev$prediction == "no change"])
  expect_lt(model$W2, ev$W2[ev$prediction == "mean shift"])
})

test_that("OT-CFM paths are straighter than I-CFM paths: fewer Euler steps are needed", {
  d <- shifted_pair(400, shift = c(4, 2), seed = 3)
  err <- sapply(c("icfm", "otcfm"), function(m) {
    fit <- fitFlow(d$source, d$target, method = m, training = quick_training(800), verbose = FALSE)
    ref <- predict(fit, d$source, solver = SolverParam("dopri5", atol = 1e-7, rtol = 1e-7))
    coarse <- predict(fit, d$source, solver = SolverParam("euler", steps = 2))
    sqrt(mean(rowSums((coarse - ref)^2)))
  })
  expect_lt(err[["otcfm"]], err[["icfm"]])
})

test_that("snapshots at several times train one field; any later time can be predicted", {
  set.seed(12)
  x <- rbind(matrix(rnorm(400), ncol = 2), matrix(rnorm(400, 2), ncol = 2), matrix(rnorm(400, 4), ncol = 2))
  time <- rep(c(0, 1, 2), each = 200)
  fit <- fitFlow(x, time = time, method = "otcfm", training = quick_training(600), verbose = FALSE)
  expect_equal(fit$times, c(0, 1, 2))
  start <- x[time == 0, ]
  expect_lt(max(abs(colMeans(predict(fit, start, from = 0, to = 2)) - 4)), 0.5)
  expect_lt(max(abs(colMeans(predict(fit, start, from = 0, to = 1)) - 2)), 0.5)
  # Interpolating an unseen time between snapshots
  expect_lt(max(abs(colMeans(predict(fit, start, from = 0, to = 1.5)) - 3)), 0.6)
  # Factor time labels in a given order
  tf <- factor(c("early", "mid", "late")[time + 1], levels = c("early", "mid", "late"))
  fit2 <- fitFlow(x, time = tf, training = quick_training(300), verbose = FALSE)
  expect_equal(fit2$time_labels, c("early", "mid", "late"))
  expect_equal(dim(predict(fit2, start, from = "early", to = "late")), dim(start))
})

test_that("groups restrict couplings: cells are paired within their group only", {
  set.seed(13)
  a0 <- matrix(rnorm(400, -5), ncol = 2); a1 <- a0 + 1
  b0 <- matrix(rnorm(400, 5), ncol = 2); b1 <- b0 - 1
  # Across groups the OT pairing would cross; within groups each moves by +-1.
  fit <- fitFlow(rbind(a0, b0), rbind(a1, b1), group = rep(c("a", "b", "a", "b"), each = 200),
                 method = "otcfm", training = quick_training(600, groups_per_step = 2), verbose = FALSE)
  expect_lt(max(abs(colMeans(predict(fit, a0)) - colMeans(a1))), 0.4)
  expect_lt(max(abs(colMeans(predict(fit, b0)) - colMeans(b1))), 0.4)
})

test_that("target FM generates the target population from Gaussian noise", {
  set.seed(14)
  target <- sweep(matrix(rnorm(1000, sd = 0.5), ncol = 2), 2, c(3, -2), "+")
  fit <- fitFlow(target, method = "targetfm", training = quick_training(600), verbose = FALSE)
  gen <- predict(fit, n = 500, seed = 2)
  expect_equal(dim(gen), c(500, 2))
  expect_lt(max(abs(colMeans(gen) - c(3, -2))), 0.3)
  expect_identical(gen, predict(fit, n = 500, seed = 2))
})

test_that("same seed gives bit-identical models and predictions on CPU with one thread", {
  d <- shifted_pair(200)
  f1 <- fitFlow(d$source, d$target, training = quick_training(100, seed = 7), verbose = FALSE)
  f2 <- fitFlow(d$source, d$target, training = quick_training(100, seed = 7), verbose = FALSE)
  f3 <- fitFlow(d$source, d$target, training = quick_training(100, seed = 8), verbose = FALSE)
  expect_identical(f1$loss, f2$loss)
  expect_identical(predict(f1, d$source), predict(f2, d$source))
  expect_false(identical(f1$loss, f3$loss))
})

test_that("trajectories hit the requested times and end where predict() ends", {
  d <- shifted_pair(100)
  fit <- fitFlow(d$source, d$target, training = quick_training(100), verbose = FALSE)
  times <- c(0, 0.25, 0.5, 1)
  for (s in list(SolverParam("dopri5"), SolverParam("rk4", steps = 8), SolverParam("euler", steps = 16),
                 SolverParam("heun", steps = 8), SolverParam("midpoint", steps = 8))) {
    traj <- sampleTrajectories(fit, d$source, times = times, solver = s)
    expect_equal(dim(traj), c(100, 2, 4))
    expect_equal(traj[, , 1], d$source, ignore_attr = TRUE, tolerance = 1e-6)  # float32 engine
    expect_equal(traj[, , 4], predict(fit, d$source, solver = s), ignore_attr = TRUE, tolerance = 1e-3)  # dopri5 steps differ with stops
  }
  # RK4 with many steps agrees with the adaptive solver
  expect_equal(predict(fit, d$source, solver = SolverParam("rk4", steps = 50)),
               predict(fit, d$source, solver = SolverParam("dopri5", atol = 1e-7, rtol = 1e-7)), tolerance = 1e-3)
  # Chunking cells does not change the answer
  expect_equal(predict(fit, d$source, solver = SolverParam("rk4", chunk_size = 7)),
               predict(fit, d$source, solver = SolverParam("rk4")), tolerance = 1e-6)
  # Backwards in time returns (approximately) to the start
  fwd <- predict(fit, d$source, solver = SolverParam("dopri5", atol = 1e-7, rtol = 1e-7))
  back <- predict(fit, fwd, from = 1, to = 0, solver = SolverParam("dopri5", atol = 1e-7, rtol = 1e-7))
  expect_equal(back, d$source, tolerance = 1e-3, ignore_attr = TRUE)
})

test_that("models round-trip through saveFlow/loadFlow and saveRDS/readRDS exactly", {
  d <- shifted_pair(100)
  fit <- fitFlow(d$source, d$target, network = NetworkParam(width = 32, residual = TRUE, fourier_features = 8),
                 training = quick_training(50), verbose = FALSE)
  path <- tempfile(fileext = ".popflow")
  saveFlow(fit, path)
  back <- loadFlow(path)
  expect_identical(predict(back, d$source), predict(fit, d$source))
  expect_identical(back$loss, fit$loss)
  rds <- tempfile(fileext = ".rds")
  saveRDS(fit, rds)
  again <- readRDS(rds)
  expect_identical(predict(again, d$source), predict(fit, d$source))
  # Saving the loaded model again gives the same file
  path2 <- tempfile(fileext = ".popflow")
  saveFlow(back, path2)
  expect_identical(readBin(path, "raw", file.size(path)), readBin(path2, "raw", file.size(path2)))
})

test_that("print, summary and plot describe the model", {
  d <- shifted_pair(100)
  fit <- fitFlow(d$source, d$target, method = SBCFMParam(sigma = 0.3), training = quick_training(50),
                 verbose = FALSE)
  expect_output(print(fit), "SB-CFM")
  expect_output(print(fit), "50 steps")
  expect_output(print(summary(fit)), "path=sbcfm")
  pdf(NULL)
  on.exit(dev.off())
  expect_invisible(plot(fit))
})

test_that("a time limit stops training early and keeps a usable model", {
  d <- shifted_pair(100)
  expect_message(fit <- fitFlow(d$source, d$target, training = TrainingParam(steps = 1e7, time_limit = 0.3),
                                verbose = FALSE), "time limit.*continue with fitFlow\\(\\.\\.\\., resume = fit\\)")
  expect_equal(fit$status, "time_limit")
  expect_lt(fit$steps_done, 1e7)
  expect_length(fit$loss, fit$steps_done)
  expect_true(all(is.finite(predict(fit, d$source))))
})

test_that("a diverging fit is reported with its step and a hint", {
  d <- shifted_pair(100)
  # lr = 30: the weights of step 2 give a non-finite loss or gradient, so the model holds step 1, whose
  # velocities are finite; lr = 1e30 blows up the first step's weights: there is no usable model.
  expect_warning(fit <- fitFlow(d$source, d$target, training = quick_training(200, lr = 30), verbose = FALSE),
                 "diverged after step 1.*the model holds step 1")
  expect_equal(fit$status, "nonfinite")
  expect_equal(fit$steps_done, 1)
  expect_length(fit$loss, 1)
  expect_true(all(is.finite(predict(fit, d$source, solver = SolverParam("euler", steps = 4)))))
  expect_error(fitFlow(d$source, d$target, training = quick_training(200, lr = 1e30), verbose = FALSE),
               "diverged.*before any usable model.*Fix: lower `lr`")
})

test_that("the progress bar reports while training and is silent with verbose = FALSE", {
  d <- shifted_pair(100)
  withr_opts <- options(cli.progress_show_after = 0, cli.dynamic = FALSE)
  on.exit(options(withr_opts))
  out <- capture.output(f <- fitFlow(d$source, d$target, training = quick_training(50), verbose = TRUE),
                        type = "message")
  expect_true(any(grepl("Training", out)))
  quiet <- capture.output(f <- fitFlow(d$source, d$target, training = quick_training(50), verbose = FALSE),
                          type = "message")
  expect_length(quiet, 0)
})

test_that("Ctrl-C during training stops cleanly and keeps the last completed step", {
  skip_on_os("windows")
  d <- shifted_pair(100)
  x <- rbind(d$source, d$target)
  cfg <- popflow:::fit_config(ICFMParam(), NetworkParam(), TrainingParam(steps = 100000, batch_size = 64), "cpu", 1L,
                              dim = 2L, times = c(0, 1))
  # A real SIGINT to this R process at step 20, as Ctrl-C sends it.
  hook <- function(step, loss) {
    tryCatch({
      if (step == 20) tools::pskill(Sys.getpid(), tools::SIGINT)
      TRUE
    }, interrupt = function(e) FALSE)
  }
  res <- popflow:::pf_fit(x, rep(0:1, each = 100), integer(0), NULL, cfg, hook, 1L, NULL, raw(0))
  expect_equal(res$status, "interrupted")
  expect_true(res$user_interrupt)
  expect_gte(res$steps_done, 20)
  expect_lt(res$steps_done, 100000)
  expect_length(res$loss, res$steps_done)
  fit <- popflow:::new_flow(res$bytes, list(method = ICFMParam(), times = c(0, 1), time_labels = c(0, 1),
                                            feature_names = NULL, n_features = 2L, threads = 1L, device = "cpu"))
  expect_true(all(is.finite(predict(fit, d$source))))
  expect_warning(popflow:::report_training_status(list(status = "interrupted", steps_done = 20, bytes = res$bytes), 100),
                 "interrupted at step 20 of 100.*continue with fitFlow\\(\\.\\.\\., resume = fit\\)")
  # The interrupted model resumes: 10 more steps, and the run matches one that was never interrupted.
  total <- res$steps_done + 10
  cfg$training$steps <- total
  resumed <- popflow:::pf_fit(x, rep(0:1, each = 100), integer(0), NULL, cfg, NULL, 1L, res$bytes, raw(0))
  straight <- popflow:::pf_fit(x, rep(0:1, each = 100), integer(0), NULL, cfg, NULL, 1L, NULL, raw(0))
  expect_equal(resumed$status, "completed")
  expect_identical(resumed$loss, straight$loss)
  expect_identical(resumed$bytes, straight$bytes)
})

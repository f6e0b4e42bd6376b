# Evaluation, trajectories, unseen labels and the alternating schedule of population models.

# Source N(mu_p, I), target = source + 2 mu_p: the shift depends on the population.
shifted_populations <- function(means, n = 100, seed = 1) {
  set.seed(seed)
  src <- do.call(rbind, lapply(seq_len(nrow(means)), function(p) sweep(matrix(rnorm(2 * n), ncol = 2), 2, means[p, ], "+")))
  pop <- rep(sprintf("p%02d", seq_len(nrow(means))), each = n)
  list(source = src, target = src + 2 * means[rep(seq_len(nrow(means)), each = n), , drop = FALSE], population = pop)
}
grid <- as.matrix(expand.grid(c(-1.5, -0.5, 0.5, 1.5), c(-1.5, -0.5, 0.5, 1.5)))
tiny_mfm <- function(populations_per_step = 8, ...) {
  MFMParam(k = 10, layers = 2, width = 16, populations_per_step = populations_per_step, cells_per_population = 64, ...)
}
rk4 <- SolverParam("rk4", steps = 10)

test_that("evaluateFlow scores a population model per population, beside the baselines", {
  d <- shifted_populations(grid)
  fit <- fitFlow(d$source, d$target, population = c(d$population, d$population), method = tiny_mfm(),
                 training = TrainingParam(steps = 1000, lr = 2e-3, seed = 2), verbose = FALSE)
  # The mean-shift baseline: the average over training populations of target - source means (here 2 * mean(grid) = 0).
  expect_equal(popflow:::population_mean_shift(fit), 2 * colMeans(grid), tolerance = 1e-8, ignore_attr = TRUE)
  new <- shifted_populations(rbind(c(1, -1), c(-1, 1)), n = 150, seed = 5)
  ev <- evaluateFlow(fit, new$source, new$target, population = new$population, solver = rk4, max_cells = 150)
  expect_named(ev, c("population", "prediction", "W1", "W2", "MMD", "energy", "mean_R2", "corr_r", "cells"))
  expect_equal(ev$population, rep(c("p01", "p02"), each = 5))
  expect_equal(ev$prediction, rep(c("MFM", "no change", "mean shift", "oracle shift", "noise floor"), 2))
  expect_equal(ev$cells, rep(150L, 10))
  model <- ev[ev$prediction == "MFM", ]
  none <- ev[ev$prediction == "no change", ]
  # Measured: MFM W1 about 0.4 against 2.8 for "no change" (a shift of length 2.8).
  expect_true(all(model$W1 < 0.5 * none$W1))
  expect_true(all(model$W2 < 0.5 * none$W2))
  expect_true(all(model$MMD < none$MMD))
  # No change, scored directly.
  i <- new$population == "p01"
  expect_equal(none$W1[1], wassersteinDistance(new$source[i, ], new$target[i, ]), tolerance = 1e-8)
  # Target cells given with their own populations (unpaired, in another order).
  perm <- sample(nrow(new$target))
  ev2 <- evaluateFlow(fit, new$source, new$target[perm, ], population = new$population,
                      target_population = new$population[perm], solver = rk4, max_cells = 150, baselines = FALSE)
  expect_equal(ev2$prediction, c("MFM", "MFM"))
  expect_error(evaluateFlow(fit, new$source, new$target[1:10, ], population = new$population),
               "`target_population` is missing")
  expect_error(evaluateFlow(fit, new$source, new$target, population = new$population, target_population = rep("p01", 300)),
               "has no cells of population 'p02'")
  expect_error(evaluateFlow(fit, new$source, new$target, population = new$population, from = 0), "`from` is not used")
  # Plain flows keep their interface and refuse population arguments.
  fm <- fitFlow(d$source, d$target, method = "icfm", training = TrainingParam(steps = 20), verbose = FALSE)
  expect_error(evaluateFlow(fm, new$source, new$target, population = new$population), "only by population models")
})

test_that("sampleTrajectories follows a population model's cells from source to prediction", {
  d <- shifted_populations(grid[1:4, ])
  fit <- fitFlow(d$source, d$target, population = c(d$population, d$population),
                 method = tiny_mfm(populations_per_step = 4), training = TrainingParam(steps = 100, seed = 1),
                 verbose = FALSE)
  x <- d$source[1:200, ]
  pop <- d$population[1:200]
  traj <- sampleTrajectories(fit, x, times = c(0, 0.5, 1), population = pop, solver = rk4)
  expect_equal(dim(traj), c(200, 2, 3))
  expect_equal(dimnames(traj)[[3]], c("0", "0.5", "1"))
  expect_equal(traj[, , 1], x, tolerance = 1e-6, ignore_attr = TRUE)  # float32 engine
  expect_equal(traj[, , 3], predict(fit, x, population = pop, solver = rk4), tolerance = 1e-5, ignore_attr = TRUE)
  expect_error(sampleTrajectories(fit, x, solver = rk4), "`population` is missing")
  fm <- fitFlow(d$source, d$target, method = "icfm", training = TrainingParam(steps = 20), verbose = FALSE)
  expect_error(sampleTrajectories(fm, x, population = pop), "only by population models")
})

test_that("CGFM conditions an unseen label on the mean of the learnt label embeddings on request", {
  set.seed(1)
  src <- matrix(rnorm(1600), ncol = 2)
  lab <- rep(c("up", "down"), each = 400)
  tgt <- src + cbind(ifelse(lab == "up", 3, -3), 0)
  fit <- fitFlow(src, tgt, label = c(lab, lab), method = CGFMParam(populations_per_step = 2, cells_per_population = 128),
                 training = TrainingParam(steps = 600, lr = 2e-3, seed = 1), verbose = FALSE)
  new <- matrix(rnorm(400), ncol = 2)
  expect_error(predict(fit, new, label = rep("sideways", 200), solver = rk4), "not seen in training")
  up <- predict(fit, new, label = rep("up", 200), solver = rk4)
  avg <- predict(fit, new, label = rep("sideways", 200), solver = rk4, unseen_label = "average")
  expect_gt(mean(up[, 1] - new[, 1]), 2.5)
  # Between the two learnt shifts (+3, -3): the average condition.
  expect_lt(abs(mean(avg[, 1] - new[, 1])), 1.5)
  expect_error(predict(fit, new, label = rep("up", 200), unseen_label = "guess"), "`unseen_label` must be one of")
})

test_that("the alternating schedule trains MFM and is kept in saved models", {
  d <- shifted_populations(grid)
  fit <- fitFlow(d$source, d$target, population = c(d$population, d$population),
                 method = tiny_mfm(schedule = "alternating", encoder_lr = 2e-3),
                 training = TrainingParam(steps = 1500, lr = 2e-3, seed = 2), verbose = FALSE)
  expect_equal(fit$steps_done, 1500)
  expect_true(all(is.finite(fit$loss)))
  expect_lt(mean(tail(fit$loss, 100)), 0.5 * mean(head(fit$loss, 20)))
  set.seed(3)
  mu <- c(1, -1)
  new <- sweep(matrix(rnorm(400), ncol = 2), 2, mu, "+")
  truth <- sweep(new, 2, 2 * mu, "+")
  p <- predict(fit, new, population = rep("new", 200), solver = rk4)
  # Measured: cell RMSE about 0.5; a plain flow gets about 2.1, no change 2.8.
  expect_lt(sqrt(mean(rowSums((p - truth)^2))), 1)
  f <- tempfile(fileext = ".pflow")
  saveFlow(fit, f)
  back <- loadFlow(f)
  expect_equal(back$method$schedule, "alternating")
  expect_true(length(grepRaw("schedule=alternating", back$bytes)) > 0)  # the engine's own configuration
  expect_true(length(grepRaw("encoder_lr=0.002", back$bytes)) > 0)
  expect_equal(predict(back, new, population = rep("new", 200), solver = rk4), p, tolerance = 1e-6)
  expect_output(print(fit), "alternating")
  expect_error(MFMParam(schedule = "sometimes"), "`schedule` must be one of")
  expect_error(MFMParam(encoder_lr = 0), "`encoder_lr`")
})

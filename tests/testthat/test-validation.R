# Validation during training (fitFlow(held_out = , validation = )): the
# record, the best weights, early stopping, resuming, and bad held-out data.

val_solver <- SolverParam("rk4", steps = 5)

# Training learns a shift of +3 while the held-out target is the source
# itself: the held-out score is best before the flow has learnt much and
# worsens from then on, so the best step is an early one.
diverging_fit <- function(steps = 60, ...) {
  d <- shifted_pair(150)
  set.seed(2)
  val <- matrix(rnorm(120), ncol = 2)
  fit <- fitFlow(d$source, d$target, method = "icfm", training = quick_training(steps, seed = 1), verbose = FALSE,
                 held_out = list(x = val, target = val),
                 validation = ValidationParam(every = 10, max_cells = 0, solver = val_solver, ...))
  list(fit = fit, val = val, data = d)
}

test_that("validation keeps the best step: the returned model reproduces the best score", {
  r <- diverging_fit()
  fit <- r$fit
  v <- fit$validation
  expect_equal(v$steps, c(10, 20, 30, 40, 50, 60))
  expect_length(v$scores, 6)
  expect_equal(v$best_score, min(v$scores))
  expect_equal(v$best_step, v$steps[which.min(v$scores)])
  expect_lt(v$best_step, fit$steps_done)  # an early step, not the last
  expect_equal(fit$steps_done, 60)
  expect_gt(v$scores[6], 1.2 * v$best_score)
  # Predicting with the returned model scores the best validation score, not the last.
  pred <- predict(fit, r$val, solver = val_solver)
  expect_equal(wassersteinDistance(pred, r$val, p = 2), v$best_score, tolerance = 1e-5)
  # Without keep_best the model holds the last step, which scores the last score.
  last <- diverging_fit(keep_best = FALSE)$fit
  expect_equal(last$validation$scores, v$scores)
  expect_equal(wassersteinDistance(predict(last, r$val, solver = val_solver), r$val, p = 2),
               utils::tail(v$scores, 1), tolerance = 1e-5)
  # Validation does not change training: the same losses, and without
  # keep_best the same model as a fit without validation.
  plain <- fitFlow(r$data$source, r$data$target, method = "icfm", training = quick_training(60, seed = 1),
                   verbose = FALSE)
  expect_identical(last$loss, plain$loss)
  expect_identical(fit$loss, plain$loss)
  expect_identical(predict(last, r$val), predict(plain, r$val))
  expect_null(plain$validation)
})

test_that("patience stops training early and says so", {
  expect_message(r <- diverging_fit(steps = 200, patience = 2), "stopped early at step 30 of 200")
  fit <- r$fit
  expect_equal(fit$status, "early_stop")
  expect_equal(fit$steps_done, 30)
  expect_equal(fit$validation$steps, c(10, 20, 30))
  expect_equal(fit$validation$best_step, 10)
  expect_match(paste(capture.output(print(fit)), collapse = "\n"), "best .* at step 10 \\(the model's weights\\)")
})

test_that("the validation record survives saveFlow()/loadFlow() and shows in print, summary and plotLoss", {
  fit <- diverging_fit(steps = 30)$fit
  path <- tempfile(fileext = ".popflow")
  saveFlow(fit, path)
  back <- loadFlow(path)
  expect_equal(back$validation$scores, fit$validation$scores)
  expect_equal(back$validation$best_step, fit$validation$best_step)
  expect_s3_class(back$validation$param, "ValidationParam")
  expect_match(paste(capture.output(print(back)), collapse = "\n"), "validation: W2 on 1 held-out set, 3 scores")
  s <- summary(back)
  expect_equal(s$validation$curve$score, fit$validation$scores)
  expect_match(paste(capture.output(print(s)), collapse = "\n"), "validation: W2")
  p <- plotLoss(back)
  expect_equal(nrow(p$data), 2 * length(fit$loss) + 3)
  expect_equal(levels(p$data$panel), c("flow-matching loss", "validation W2 (held out)"))
  expect_true("GeomVline" %in% layer_geoms(p))
  expect_equal(nrow(ggplot2::ggplot_build(p)$layout$layout), 2)  # two panels
  expect_equal(nlevels(plotLoss(back, validation = FALSE)$data$panel), 1)
  expect_error(plotLoss(back, validation = NA), "`validation`")
})

test_that("a population model validates on held-out populations and keeps the best weights", {
  set.seed(4)
  means <- c(-1, 0, 1, 2, 0.5, 1.5)
  src <- do.call(rbind, lapply(means, function(m) matrix(rnorm(120, m), ncol = 2)))
  pop <- rep(paste0("p", seq_along(means)), each = 60)
  tgt <- src + 2 * rep(means, each = 60)
  train <- pop %in% paste0("p", 1:4)
  method <- MFMParam(k = 5, layers = 2, width = 8, populations_per_step = 2, cells_per_population = 32)
  held_out <- list(x = src[!train, ], target = tgt[!train, ], population = rep(pop[!train], 2))
  fit <- fitFlow(src[train, ], tgt[train, ], population = rep(pop[train], 2), method = method,
                 training = quick_training(40, seed = 3), verbose = FALSE, held_out = held_out,
                 validation = ValidationParam(every = 10, max_cells = 0, solver = val_solver))
  v <- fit$validation
  expect_equal(v$sets, 2)
  expect_equal(v$steps, c(10, 20, 30, 40))
  expect_equal(v$best_score, min(v$scores))
  # The mean over held-out populations of evaluateFlow()'s W2, with the returned weights.
  ev <- evaluateFlow(fit, src[!train, ], tgt[!train, ], population = pop[!train], solver = val_solver,
                     baselines = FALSE, max_cells = 1000)
  expect_equal(mean(ev$W2), v$best_score, tolerance = 1e-5)
})

test_that("validation is not resumed, and resuming a best-weights model continues from its last step", {
  r <- diverging_fit(steps = 30)
  first <- r$fit
  expect_lt(first$validation$best_step, 30)
  # Continued without held-out data: no validation, and exactly the uninterrupted run's model.
  resumed <- fitFlow(r$data$source, r$data$target, training = quick_training(60, seed = 1), resume = first,
                     verbose = FALSE)
  full <- fitFlow(r$data$source, r$data$target, method = "icfm", training = quick_training(60, seed = 1),
                  verbose = FALSE)
  expect_null(resumed$validation)
  expect_identical(resumed$loss, full$loss)
  expect_identical(predict(resumed, r$val), predict(full, r$val))
  # Continued with held-out data: the record covers the new steps only.
  again <- fitFlow(r$data$source, r$data$target, training = quick_training(60, seed = 1), resume = first,
                   verbose = FALSE, held_out = list(x = r$val, target = r$val),
                   validation = ValidationParam(every = 10, max_cells = 0, solver = val_solver))
  expect_equal(again$validation$steps, c(40, 50, 60))
  expect_identical(again$loss, full$loss)
})

test_that("a time course validates between consecutive held-out time points, per group", {
  set.seed(5)
  x <- matrix(rnorm(600), ncol = 2)
  time <- rep(c(0, 1, 2), each = 100)
  x[, 1] <- x[, 1] + time
  val <- matrix(rnorm(240), ncol = 2)
  vtime <- rep(c(0, 1, 2), each = 40)
  val[, 1] <- val[, 1] + vtime
  fit <- fitFlow(x, time = time, method = "icfm", training = quick_training(20), verbose = FALSE,
                 held_out = list(x = val, time = vtime, group = rep(c("a", "b"), 60)),
                 validation = ValidationParam(every = 10, metric = "MMD", solver = val_solver))
  expect_equal(fit$validation$sets, 4)  # 2 groups x 2 intervals
  expect_equal(fit$validation$param$metric, "MMD")
  expect_length(fit$validation$scores, 2)
})

test_that("validation on a single-cell object reads held-out cells with the same columns", {
  skip_if_not_installed("SingleCellExperiment")
  sce <- kangPBMC()
  keep <- sce$cell_type %in% c("B cells", "CD14+ Monocytes")
  fit <- fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
                 population = c("patient", "cell_type"), method = "icfm", cells = keep & sce$patient != "107",
                 training = quick_training(20), verbose = FALSE, held_out = sce[, keep & sce$patient == "107"],
                 validation = ValidationParam(every = 10, solver = val_solver))
  expect_equal(fit$validation$sets, 2)  # patient 107's two populations (the flow's groups)
  expect_length(fit$validation$scores, 2)
  no_patient <- sce[, keep & sce$patient == "107"]
  no_patient$patient <- NULL
  expect_error(fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
                       population = c("patient", "cell_type"), method = "icfm", cells = keep,
                       training = quick_training(5), verbose = FALSE, held_out = no_patient),
               "`held_out` lacks the colData column 'patient'")
})

test_that("bad validation input names the argument and the fix", {
  d <- shifted_pair(60)
  fit_with <- function(held_out, validation = ValidationParam(every = 5), method = "icfm", ...) {
    fitFlow(d$source, d$target, method = method, training = quick_training(5), verbose = FALSE,
            held_out = held_out, validation = validation, ...)
  }
  ok <- list(x = d$source, target = d$target)
  expect_error(ValidationParam(metric = "W3"), "`metric` must be one of \"W2\", \"W1\", \"MMD\", \"energy\"")
  expect_error(ValidationParam(every = 0), "`every`")
  expect_error(ValidationParam(solver = "rk4"), "`solver` must be made by SolverParam")
  expect_error(fit_with(NULL), "`validation` is given but `held_out` is missing")
  expect_error(fit_with(ok, validation = list(every = 5)), "`validation` must be made by ValidationParam")
  expect_error(fit_with(d$source), "`held_out` must be a named list")
  expect_error(fit_with(list(x = d$source, targets = d$target)), "'targets'.*Fix: name the elements")
  expect_error(fit_with(list(x = d$source[, 1, drop = FALSE], target = d$target[, 1, drop = FALSE])),
               "`held_out\\$x` has 1 features but the training cells have 2")
  expect_error(fit_with(list(x = d$source, target = cbind(d$target, 1))), "`held_out\\$target` has 3 features")
  expect_error(fit_with(list(x = d$source)), "neither `target` nor `time`")
  expect_error(fit_with(list(x = d$source, target = d$target, population = rep("a", 120))),
               "only population models")
  expect_error(fit_with(list(x = d$source, time = rep(5, 60))), "`held_out\\$time` must be a time label")
  # Population models: held-out populations must fit the model.
  pop <- rep(c("a", "b"), 60)
  method <- CGFMParam(populations_per_step = 2, cells_per_population = 16)
  cgfm <- function(held_out, ...) {
    fitFlow(d$source, d$target, population = pop, label = pop, method = method, training = quick_training(5),
            verbose = FALSE, held_out = held_out, ...)
  }
  unseen <- list(x = d$source, target = d$target, population = rep("c", 120), label = rep("c", 120))
  expect_error(cgfm(unseen), "in `held_out`: `label` has the value 'c'.*unseen_label = \"average\"")
  fit <- cgfm(unseen, validation = ValidationParam(every = 5, unseen_label = "average"))
  expect_length(fit$validation$scores, 1)
  expect_error(cgfm(list(x = d$source, target = d$target, population = rep("c", 120))),
               "in `held_out`: `label` is missing")
  expect_error(cgfm(list(x = d$source, target = d$target[1:10, ], label = rep("a", 70),
                         population = rep(c("a", "b"), c(60, 10)))),
               "`held_out\\$population` 'a' has no target cells")
})

# Reflow (ReflowParam()): a flow retrained on its own pairs along straight paths.

# Euler with one step against a tight adaptive solution: the error of a curved flow.
one_step_error <- function(fit, x) {
  exact <- predict(fit, x, solver = SolverParam("dopri5", atol = 1e-6, rtol = 1e-6))
  sqrt(mean(rowSums((predict(fit, x, solver = SolverParam("euler", steps = 1)) - exact)^2)))
}

test_that("reflow straightens a flow between populations and keeps where it sends cells", {
  set.seed(31)
  source <- matrix(rnorm(800), ncol = 2)
  target <- cbind(rnorm(400, sd = 0.4) + 3 * sample(c(-1, 1), 400, replace = TRUE), rnorm(400, sd = 0.4) + 2)
  base <- fitFlow(source, target, method = "icfm", training = quick_training(600), verbose = FALSE)
  fit <- fitFlow(source, method = ReflowParam(base), training = quick_training(600), verbose = FALSE)
  expect_s3_class(fit$method, "ReflowParam")
  expect_null(fit$method$model)  # the model records how it was made, not the model it was made from
  expect_lt(one_step_error(fit, source), 0.5 * one_step_error(base, source))
  new <- matrix(rnorm(400), ncol = 2)
  moved <- predict(fit, new, solver = SolverParam("rk4", steps = 10))
  expect_lt(sqrt(mean(rowSums((moved - predict(base, new))^2))), 0.5)
  expect_output(print(fit), "Reflow: 1 round of reflow of an I-CFM flow, straight paired paths")
  expect_match(pf_model_config(fit$bytes), "coupling=paired", fixed = TRUE)
  path <- tempfile(fileext = ".popflow")
  on.exit(unlink(path))
  saveFlow(fit, path)
  expect_identical(predict(loadFlow(path), new), predict(fit, new))
  expect_identical(fit$time_labels, base$time_labels)
})

test_that("reflow of a generative model stays generative, over several rounds", {
  set.seed(32)
  cells <- cbind(rnorm(600, sd = 0.3) + 2 * sample(c(-1, 1), 600, replace = TRUE), rnorm(600, sd = 0.3))
  base <- fitFlow(cells, method = "targetfm", training = quick_training(600), verbose = FALSE)
  two <- fitFlow(cells, method = ReflowParam(base, rounds = 2, n = 500), training = quick_training(300),
                 verbose = FALSE)
  expect_true(is_generative(two$method))
  expect_equal(two$n_cells[[2]], 500)
  noise <- matrix(rnorm(400), ncol = 2)
  expect_lt(one_step_error(two, noise), 0.5 * one_step_error(base, noise))
  gen <- predict(two, n = 300, seed = 1)
  expect_equal(dim(gen), c(300, 2))
  # Nearly the base model's samples from the same noise, and as close to the cells.
  base_gen <- predict(base, n = 300, seed = 1)
  expect_lt(wassersteinDistance(gen, base_gen, p = 2), 0.35)
  expect_lt(wassersteinDistance(gen, cells, p = 2), wassersteinDistance(base_gen, cells, p = 2) + 0.15)
  expect_output(print(two), "2 rounds of reflow of a Target FM flow")
  expect_error(logDensity(two, cells[1:5, ]), "path is 'icfm'")
})

test_that("bad reflow settings are clear errors", {
  d <- shifted_pair(60)
  fit <- fitFlow(d$source, d$target, training = quick_training(5), verbose = FALSE)
  expect_error(fitFlow(d$source, method = "reflow", verbose = FALSE), "use method = ReflowParam\\(fit\\)")
  expect_error(ReflowParam(d$source), "`model` must be a model from fitFlow()")
  expect_error(ReflowParam(fit, rounds = 0), "`rounds` must be a whole number >= 1")
  reflowed <- fitFlow(d$source, method = ReflowParam(fit), training = quick_training(5), verbose = FALSE)
  expect_error(fitFlow(d$source, training = quick_training(10), resume = reflowed, verbose = FALSE),
               "`resume` is not supported by reflow")
  expect_error(fitFlow(d$source, method = ReflowParam(fit), held_out = list(x = d$source, target = d$target),
                       verbose = FALSE), "`held_out` is not used by reflow")
  expect_error(fitFlow(cbind(d$source, 1), method = ReflowParam(fit), verbose = FALSE),
               "`x` has 3 features but the model was fitted on 2")
  timed <- fitFlow(rbind(d$source, d$target), time = rep(1:3, each = 40), training = quick_training(5),
                   verbose = FALSE)
  expect_error(ReflowParam(timed), "`model` was fitted on 3 time points")
  expect_error(fitFlow(d$source, time = rep(1:2, 30), method = ReflowParam(fit), verbose = FALSE),
               "`time` is not used by reflow")
})

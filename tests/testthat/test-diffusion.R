# Diffusion as flow matching: the variance-preserving path (DiffusionParam()).

test_that("diffusion models generate the target population (cosine and linear schedules)", {
  set.seed(21)
  target <- sweep(matrix(rnorm(1200, sd = 0.5), ncol = 2), 2, c(3, -2), "+")
  for (schedule in c("cosine", "linear")) {
    fit <- fitFlow(target, method = DiffusionParam(schedule), training = quick_training(600), verbose = FALSE)
    expect_s3_class(fit, "popflow_flow")
    gen <- predict(fit, n = 500, seed = 2)
    expect_equal(dim(gen), c(500, 2))
    expect_lt(max(abs(colMeans(gen) - c(3, -2))), 0.3)
    expect_lt(max(abs(apply(gen, 2, stats::sd) - 0.5)), 0.25)
    expect_identical(gen, predict(fit, n = 500, seed = 2))
    expect_match(pf_model_config(fit$bytes), paste0("path=vp_", schedule), fixed = TRUE)
    # A generative model has a log-density.
    expect_true(all(is.finite(logDensity(fit, target[1:20, ], solver = SolverParam("rk4", steps = 50)))))
  }
})

test_that("diffusion settings, printing, saving and resuming", {
  expect_identical(attr(as_flow_param("diffusion"), "kind"), "diffusion")
  expect_identical(as_flow_param("diffusion")$schedule, "cosine")
  expect_identical(engine_config(DiffusionParam("linear"))$flow$path, "vp_linear")
  expect_error(DiffusionParam("quadratic"), "`schedule` must be one of \"cosine\", \"linear\"")
  expect_error(fitFlow(matrix(rnorm(20), 10), method = "diffuse", verbose = FALSE), "\"diffusion\"")
  d <- shifted_pair(100)
  fit <- fitFlow(d$target, method = DiffusionParam("linear"), training = quick_training(20), verbose = FALSE)
  expect_output(print(fit), "VP diffusion: Gaussian source, variance-preserving path, linear schedule")
  expect_output(print(summary(fit)), "VP diffusion flow, 20 steps")
  expect_output(print(DiffusionParam()), "schedule=cosine")
  path <- tempfile(fileext = ".popflow")
  on.exit(unlink(path))
  saveFlow(fit, path)
  back <- loadFlow(path)
  expect_s3_class(back$method, "DiffusionParam")
  expect_identical(predict(back, n = 50, seed = 3), predict(fit, n = 50, seed = 3))
  # Resuming continues the same run.
  train <- function(steps) TrainingParam(steps = steps, batch_size = 64, seed = 5)
  full <- fitFlow(d$target, method = "diffusion", training = train(20), verbose = FALSE)
  resumed <- fitFlow(d$target, method = "diffusion", training = train(20), verbose = FALSE,
                     resume = fitFlow(d$target, method = "diffusion", training = train(10), verbose = FALSE))
  expect_identical(resumed$bytes, full$bytes)
  # Population models and paired cells have no place for a Gaussian source.
  expect_error(fitFlow(d$source, d$target, population = rep("a", 200), method = "diffusion", verbose = FALSE),
               "`population` is used only by method = \"mfm\" or \"cgfm\"")
})

# The parameter objects are the only holders of the engine's settings:
# engine_config() gives exactly the engine's keys, and the glue hands them to
# the engine's readers, which refuse a missing or unknown key.

flow_keys <- c("path", "sigma", "sigma_min", "coupling", "ot_mode", "ot_solver", "sinkhorn_reg", "sinkhorn_iters")
population_keys <- c("encoder", "layers", "encoder_width", "bandwidth", "k", "max_cells", "label_dim", "schedule",
                     "encoder_lr", "cells_per_population", "populations_per_step")
sections <- function(x) lapply(popflow:::engine_config(x), names)

test_that("engine_config() gives the engine's keys of every parameter object", {
  for (m in list(ICFMParam(), OTCFMParam(), SBCFMParam(), TargetFMParam(), DiffusionParam(), ReflowParam())) {
    expect_equal(sections(m), list(flow = flow_keys))
    expect_s3_class(m, c("popflow_flow_param", "popflow_param"))
  }
  for (m in list(MFMParam(), CGFMParam())) {
    expect_equal(sections(m), list(flow = flow_keys, population = population_keys))
    expect_s3_class(m, c("popflow_population_param", "popflow_param"))
  }
  expect_equal(sections(NetworkParam()), list(flow = c("width", "depth", "residual", "activation", "time_dim",
                                                       "fourier_features", "fourier_scale")))
  expect_equal(sections(TrainingParam()), list(
    training = c("steps", "batch_size", "groups_per_step", "lr", "weight_decay", "clip_norm", "ema_decay", "seed",
                 "time_limit", "tf32", "sync_every", "accumulate", "step_graph"),
    checkpoint = c("every", "file")))
  expect_equal(sections(SolverParam()), list(solver = c("solver", "steps", "atol", "rtol", "max_steps", "chunk_size")))
  expect_equal(sections(DensityParam()), list(density = c("divergence", "probes", "seed")))
  config <- popflow:::engine_config
  expect_equal(config(DiffusionParam("linear"))$flow[c("path", "sigma", "coupling")],
               list(path = "vp_linear", sigma = 0, coupling = "independent"))
  expect_equal(config(ReflowParam())$flow[c("path", "sigma", "coupling")],
               list(path = "icfm", sigma = 0, coupling = "paired"))
  expect_equal(config(DensityParam("hutchinson", probes = 4))$density, list(divergence = "hutchinson", probes = 4L,
                                                                           seed = 1L))
  expect_equal(config(SBCFMParam(sigma = 0.5))$flow$sinkhorn_reg, 0.5)
  expect_equal(config(OTCFMParam(ot_mode = "permutation"))$flow$ot_mode, "permutation")
  expect_equal(config(OTCFMParam())$flow$ot_solver, "exact")
  expect_equal(config(OTCFMParam(ot_solver = "auction"))$flow$ot_solver, "auction")
  expect_equal(config(TargetFMParam(sigma_min = 0.01))$flow[c("sigma", "sigma_min")], list(sigma = 0, sigma_min = 0.01))
  expect_equal(config(MFMParam(width = 32, schedule = "alternating", encoder_lr = 1e-4))$population[
    c("encoder_width", "schedule", "encoder_lr")], list(encoder_width = 32L, schedule = "alternating", encoder_lr = 1e-4))
  expect_equal(config(CGFMParam(cells_per_population = 50))$population[c("encoder", "cells_per_population")],
               list(encoder = "none", cells_per_population = 50L))
  expect_equal(config(SolverParam("rk4", steps = 7))$solver[c("solver", "steps")], list(solver = "rk4", steps = 7L))
  expect_equal(config(TrainingParam())$checkpoint, list(every = 0L, file = ""))
})

test_that("the engine refuses a configuration with a missing or unknown key", {
  d <- shifted_pair(50)
  x <- rbind(d$source, d$target)
  fit <- function(cfg) popflow:::pf_fit(x, rep(0:1, each = 50), integer(0), NULL, cfg, NULL, 1L, NULL, raw(0))
  cfg <- popflow:::fit_config(ICFMParam(), NetworkParam(width = 8), TrainingParam(steps = 2), "cpu", 1L, dim = 2L,
                              times = c(0, 1))
  expect_equal(fit(cfg)$steps_done, 2)
  no_lr <- cfg
  no_lr$training$lr <- NULL
  expect_error(fit(no_lr), "training configuration: missing 'lr'")
  misspelt <- cfg
  misspelt$flow$sigmaa <- 0.1
  expect_error(fit(misspelt), "sigmaa")
  expect_error(fit(cfg[c("flow", "training")]), "no 'checkpoint' section")
})

# Resuming and checkpoints. Every step's randomness depends only on (seed,
# step), so on CPU with one thread N steps + resume to 2N == 2N steps, bit for bit.

resume_training <- function(steps, ...) TrainingParam(steps = steps, batch_size = 64, seed = 3, ...)

test_that("a flow fitted N steps and resumed to 2N equals one fitted 2N steps", {
  d <- shifted_pair(150)
  for (ema in c(0, 0.9)) {  # with an average, the raw weights travel in the model too
    full <- fitFlow(d$source, d$target, training = resume_training(30, ema_decay = ema), verbose = FALSE)
    half <- fitFlow(d$source, d$target, training = resume_training(15, ema_decay = ema), verbose = FALSE)
    resumed <- fitFlow(d$source, d$target, training = resume_training(30, ema_decay = ema), resume = half,
                       verbose = FALSE)
    expect_equal(resumed$steps_done, 30)
    expect_equal(resumed$status, "completed")
    expect_identical(resumed$loss, full$loss)
    expect_identical(utils::tail(resumed$loss, 15), utils::tail(full$loss, 15))
    expect_identical(predict(resumed, d$source), predict(full, d$source))
    expect_identical(resumed$bytes, full$bytes)
  }
})

test_that("an MFM model fitted N steps and resumed to 2N equals one fitted 2N steps", {
  set.seed(4)
  means <- c(-1, 0, 1, 2)
  src <- do.call(rbind, lapply(means, function(m) matrix(rnorm(120, m), ncol = 2)))
  pop <- rep(paste0("p", seq_along(means)), each = 60)
  tgt <- src + 2 * rep(means, each = 60)
  method <- MFMParam(k = 5, layers = 2, width = 8, populations_per_step = 2, cells_per_population = 32)
  fit <- function(steps, resume = NULL) {
    fitFlow(src, tgt, population = c(pop, pop), method = method, training = resume_training(steps),
            resume = resume, verbose = FALSE)
  }
  full <- fit(20)
  resumed <- fit(20, resume = fit(10))
  expect_identical(resumed$loss, full$loss)
  expect_identical(predict(resumed, src, population = pop), predict(full, src, population = pop))
  expect_identical(embedPopulations(resumed, src, pop), embedPopulations(full, src, pop))
})

test_that("a fit stopped by its time limit resumes to the uninterrupted result", {
  d <- shifted_pair(100)
  expect_message(limited <- fitFlow(d$source, d$target, training = resume_training(1e7, time_limit = 0.2),
                                    verbose = FALSE), "resume")
  expect_equal(limited$status, "time_limit")
  total <- limited$steps_done + 5
  resumed <- fitFlow(d$source, d$target, training = resume_training(total), resume = limited, verbose = FALSE)
  full <- fitFlow(d$source, d$target, training = resume_training(total), verbose = FALSE)
  expect_identical(resumed$loss, full$loss)
  expect_identical(predict(resumed, d$source), predict(full, d$source))
})

test_that("checkpoint files are complete models and resuming from one matches the uninterrupted run", {
  d <- shifted_pair(100)
  path <- tempfile(fileext = ".popflow")
  tr <- resume_training(20, checkpoint_every = 8, checkpoint_file = path)
  full <- fitFlow(d$source, d$target, training = tr, verbose = FALSE)
  # The last checkpoint is step 16 (every 8 steps): a loadable model of that step.
  expect_true(file.exists(path))
  expect_false(file.exists(paste0(path, ".partial")))
  ckpt <- loadFlow(path)
  expect_equal(ckpt$steps_done, 16)
  expect_equal(ckpt$status, "checkpoint")
  expect_output(print(ckpt), "training: 16 steps on cpu, final loss .*\\[checkpoint\\]")
  expect_identical(ckpt$loss, full$loss[1:16])
  expect_true(all(is.finite(predict(ckpt, d$source))))
  early <- fitFlow(d$source, d$target, training = resume_training(16), verbose = FALSE)
  expect_identical(predict(ckpt, d$source), predict(early, d$source))
  # `training` (20 steps) defaults to the checkpoint's own.
  resumed <- fitFlow(d$source, d$target, resume = path, verbose = FALSE)
  expect_identical(resumed$loss, full$loss)
  expect_identical(predict(resumed, d$source), predict(full, d$source))
})

test_that("resuming with other settings or data is a clear error naming the argument", {
  d <- shifted_pair(100)
  base <- fitFlow(d$source, d$target, training = resume_training(10), verbose = FALSE)
  more <- resume_training(20)
  expect_error(fitFlow(d$source, d$target, network = NetworkParam(width = 32), training = more, resume = base,
                       verbose = FALSE), "`resume` was fitted with a different network[^\n]*\n  Fix:")
  expect_error(fitFlow(d$source, d$target, method = "icfm", training = more, resume = base, verbose = FALSE),
               "`resume` was fitted with method \"otcfm\"")
  extra <- matrix(rnorm(200), ncol = 1)
  expect_error(fitFlow(cbind(d$source, extra[1:100]), cbind(d$target, extra[101:200]), training = more, resume = base,
                       verbose = FALSE),
               "`resume` was fitted on 2 features; the data have 3 features")
  expect_error(fitFlow(d$source, d$target, training = resume_training(10), resume = base, verbose = FALSE),
               "`training` asks for 10 steps in total but `resume` has already completed 10")
  expect_error(fitFlow(d$source, d$target, training = more, resume = "no-such-file.popflow", verbose = FALSE),
               "`resume` must be a fitted model or the path")
  expect_error(fitFlow(d$source, d$target, training = more, resume = list(), verbose = FALSE), "`resume` must be")
  path <- tempfile()
  saveFlow(base, path, resumable = FALSE)
  expect_error(fitFlow(d$source, d$target, training = more, resume = path, verbose = FALSE),
               "`resume` holds no training state")
  saveFlow(base, path)
  expect_equal(fitFlow(d$source, d$target, training = more, resume = path, verbose = FALSE)$steps_done, 20)
  # The engine's own check, should the R-side checks be bypassed.
  x <- rbind(d$source, d$target)
  cfg <- popflow:::fit_config(OTCFMParam(), NetworkParam(width = 16), more, "cpu", 1L, dim = 2L, times = c(0, 1))
  expect_error(popflow:::pf_fit(x, rep(0:1, each = 100), integer(0), NULL, cfg, NULL, 1L, base$bytes, raw(0)),
               "`resume` holds a model fitted with other settings \\(width=64 there, width=16 here\\)")
  expect_error(TrainingParam(checkpoint_every = 5), "`checkpoint_file` is missing")
  expect_error(TrainingParam(checkpoint_file = tempfile()), "`checkpoint_every` is 0")
  expect_error(TrainingParam(checkpoint_every = 5, checkpoint_file = "/no/such/dir/f.popflow"),
               "`checkpoint_file` is in the folder .*, which does not exist")
})

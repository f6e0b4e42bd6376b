# Data-parallel training (ParallelParam, Gloo): two processes on 127.0.0.1.
# W ranks average their gradients every step, so they give the model that one
# process gives with TrainingParam(accumulate = W), to float rounding.

skip_without_gloo <- function() {
  skip_if_not("gloo" %in% distributedBackends(), "popflow was built without Gloo (install libgloo-dev)")
  skip_on_os("windows")
}

# Environment variables back as they were (`old`: Sys.getenv(names, unset = NA)).
restore_env <- function(old) {
  Sys.unsetenv(names(old))
  set <- old[!is.na(old)]
  if (length(set)) do.call(Sys.setenv, as.list(set))
}

par_training <- function(steps, ...) TrainingParam(steps = steps, batch_size = 16, seed = 5, ...)

test_that("two workers give the model one process gives with the combined batch (flow), with checkpoints and resume", {
  skip_without_gloo()
  d <- shifted_pair(60)
  ckpt <- tempfile(fileext = ".popflow")
  two <- fitFlow(d$source, d$target, method = "icfm", verbose = FALSE,
                 training = par_training(8, checkpoint_every = 4, checkpoint_file = ckpt),
                 parallel = ParallelParam(workers = 2))
  one <- fitFlow(d$source, d$target, method = "icfm", training = par_training(8, accumulate = 2), verbose = FALSE)
  plain <- fitFlow(d$source, d$target, method = "icfm", training = par_training(8), verbose = FALSE)
  expect_equal(two$steps_done, 8)
  expect_equal(two$status, "completed")
  expect_equal(two$loss, one$loss, tolerance = 1e-6)
  expect_equal(predict(two, d$source), predict(one, d$source), tolerance = 1e-5)
  # The test can fail: the second rank's draws change the model.
  expect_gt(max(abs(predict(two, d$source) - predict(plain, d$source))), 1e-3)
  # Rank 0 wrote the checkpoint (the last step's); resuming it on two workers
  # continues as one process with the combined batch would.
  expect_true(file.exists(ckpt))
  expect_equal(loadFlow(ckpt)$steps_done, 8)
  more <- fitFlow(d$source, d$target, method = "icfm", training = par_training(12), resume = ckpt, verbose = FALSE,
                  parallel = ParallelParam(workers = 2))
  one_more <- fitFlow(d$source, d$target, method = "icfm", training = par_training(12, accumulate = 2), verbose = FALSE)
  expect_equal(more$steps_done, 12)
  expect_equal(more$loss, one_more$loss, tolerance = 1e-6)
  expect_equal(predict(more, d$source), predict(one_more, d$source), tolerance = 1e-5)
})

test_that("two workers give the MFM model one process gives with the combined batch", {
  skip_without_gloo()
  set.seed(4)
  means <- c(-1, 0, 1, 2)
  src <- do.call(rbind, lapply(means, function(m) matrix(rnorm(80, m), ncol = 2)))
  pop <- rep(paste0("p", seq_along(means)), each = 40)
  tgt <- src + 2 * rep(means, each = 40)
  method <- MFMParam(k = 5, layers = 2, width = 8, populations_per_step = 2, cells_per_population = 16)
  fit <- function(...) {
    fitFlow(src, tgt, population = c(pop, pop), method = method, verbose = FALSE, ...)
  }
  two <- fit(training = par_training(6), parallel = ParallelParam(workers = 2, threads = 1))
  one <- fit(training = par_training(6, accumulate = 2))
  expect_s3_class(two, "popflow_population")
  expect_equal(two$loss, one$loss, tolerance = 1e-6)
  expect_equal(predict(two, src, population = pop), predict(one, src, population = pop), tolerance = 1e-5)
  expect_equal(embedPopulations(two, src, pop), embedPopulations(one, src, pop), tolerance = 1e-5)
})

test_that("two workers train from a population store, each reading only the blocks of its own draws", {
  skip_without_gloo()
  set.seed(6)
  means <- c(-2, -1, 0, 1, 2, 3)
  src <- do.call(rbind, lapply(means, function(m) matrix(rnorm(60, m), ncol = 2)))
  pop <- rep(paste0("p", seq_along(means)), each = 30)
  store <- writePopulationStore(src, tempfile(fileext = ".pfstore"), target = src + rep(means, each = 30),
                                population = c(pop, pop))
  method <- MFMParam(k = 5, layers = 2, width = 8, populations_per_step = 2, cells_per_population = 16)
  fit <- function(...) fitFlow(store, method = method, verbose = FALSE, ...)
  two <- fit(training = par_training(6), parallel = ParallelParam(workers = 2, threads = 1))
  one <- fit(training = par_training(6, accumulate = 2))
  plain <- fit(training = par_training(6))
  expect_equal(two$loss, one$loss, tolerance = 1e-6)
  expect_equal(predict(two, src, population = pop), predict(one, src, population = pop), tolerance = 1e-5)
  # Rank 0 makes draw 0 of each step, the plain fit's: it reads the blocks the plain fit reads, fewer than
  # one process making both draws.
  expect_equal(two$store_stats[["blocks_read"]], plain$store_stats[["blocks_read"]])
  expect_lt(two$store_stats[["blocks_read"]], one$store_stats[["blocks_read"]])
  # With two draws a step, the prefetcher reads each draw's blocks ahead: only the first draw reads its own
  # (2 populations: at most 4 blocks).
  expect_lte(one$store_stats[["blocks_read_in_step"]], 4)
  expect_gt(one$store_stats[["blocks_read_in_step"]], 0)
})

# A second rank in a fresh R process (a one-worker PSOCK cluster), started
# without waiting, so that this process can be rank 0 of a launched-style fit.
start_rank1 <- function(job, port, ...) {
  cl <- parallel::makePSOCKcluster(1)
  set_libs <- function(l) invisible(.libPaths(l))
  environment(set_libs) <- globalenv()
  environment(job) <- globalenv()
  parallel::clusterCall(cl, set_libs, .libPaths())
  parallel::clusterEvalQ(cl, suppressPackageStartupMessages(library(popflow)))
  pid <- parallel::clusterCall(cl, Sys.getpid)[[1]]
  parallel:::sendCall(cl[[1]], job, list(port, ...))
  list(cl = cl, pid = pid)
}

rank1_fit <- function(port, steps, x_cols = 2, version = NULL, time_limit = 0) {
  if (!is.null(version)) utils::assignInNamespace("popflow_version", function() version, "popflow")
  set.seed(1)
  x <- matrix(rnorm(60 * x_cols), ncol = x_cols)
  try(popflow::fitFlow(x, x + 3, method = "icfm", verbose = FALSE,
                       training = popflow::TrainingParam(steps = steps, batch_size = 16, time_limit = time_limit),
                       parallel = popflow::ParallelParam(rank = 1, world_size = 2, port = port, timeout = 20)),
      silent = TRUE)
}

rank0_fit <- function(port, steps, timeout = 20) {
  set.seed(1)
  x <- matrix(rnorm(120), ncol = 2)
  fitFlow(x, x + 3, method = "icfm", verbose = FALSE, training = TrainingParam(steps = steps, batch_size = 16),
          parallel = ParallelParam(rank = 0, world_size = 2, port = port, timeout = timeout))
}

test_that("a rank that dies becomes an R error on the others within seconds", {
  skip_without_gloo()
  port <- popflow:::free_port()
  r1 <- start_rank1(rank1_fit, port, steps = 1e7)
  on.exit(try(parallel::stopCluster(r1$cl), silent = TRUE))
  system(sprintf("(sleep 3; kill -9 %d)", r1$pid), wait = FALSE)  # R appends the &
  start <- Sys.time()
  expect_error(rank0_fit(port, 1e7), "rank 0 of 2 lost contact with the other processes")
  expect_lt(as.numeric(difftime(Sys.time(), start, units = "secs")), 15)
  # The surviving process stays usable: it trains again as rank 0 with a new second rank.
  port <- popflow:::free_port()
  r2 <- start_rank1(rank1_fit, port, steps = 5)
  on.exit(try(parallel::stopCluster(r2$cl), silent = TRUE), add = TRUE)
  again <- rank0_fit(port, 5)
  expect_equal(again$status, "completed")
  expect_equal(again$steps_done, 5)
})

test_that("the ranks stop together when one reaches its time limit", {
  skip_without_gloo()
  port <- popflow:::free_port()
  r1 <- start_rank1(rank1_fit, port, steps = 1e7, time_limit = 0.5)
  on.exit(try(parallel::stopCluster(r1$cl), silent = TRUE))
  start <- Sys.time()
  expect_message(fit <- rank0_fit(port, 1e7), "time limit")  # rank 0 has none of its own
  expect_equal(fit$status, "time_limit")
  expect_gt(fit$steps_done, 0)
  expect_lt(as.numeric(difftime(Sys.time(), start, units = "secs")), 15)
})

test_that("ranks with another popflow version or other data stop with clear errors", {
  skip_without_gloo()
  port <- popflow:::free_port()
  r1 <- start_rank1(rank1_fit, port, steps = 5, version = "0.0.1")
  on.exit(try(parallel::stopCluster(r1$cl), silent = TRUE))
  expect_error(rank0_fit(port, 5), "rank 1 runs popflow 0.0.1 .*install the same popflow version")

  port <- popflow:::free_port()
  r2 <- start_rank1(rank1_fit, port, steps = 5, x_cols = 3)
  on.exit(try(parallel::stopCluster(r2$cl), silent = TRUE), add = TRUE)
  expect_error(rank0_fit(port, 5), "fit different problems \\(parameter count")
})

test_that("bad parallel settings are clear R errors", {
  skip_without_gloo()
  d <- shifted_pair(30)
  # A port in use.
  port <- popflow:::free_port()
  busy <- serverSocket(port)
  on.exit(close(busy))
  expect_error(fitFlow(d$source, d$target, training = par_training(2), verbose = FALSE,
                       parallel = ParallelParam(workers = 2, port = port)),
               "port .* in use.*Fix: give ParallelParam\\(port = \\) another port")
  # A rank that never arrives: an error after the timeout, not a hang.
  expect_error(rank0_fit(popflow:::free_port(), 5, timeout = 1), "did not join")
  # Workers that cannot start.
  expect_error(popflow:::start_workers(1, timeout = 1, rscript = "/nonexistent/Rscript"),
               "`parallel` could not start 1 worker")
  # Methods fitted in one process, launch variables missing, bad values.
  expect_error(fitFlow(d$source, d$target, method = "icnn", parallel = ParallelParam(workers = 2)),
               "`parallel` is not supported for the ICNN baseline")
  old <- Sys.getenv(c("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"), unset = NA)
  Sys.unsetenv(names(old))
  on.exit(restore_env(old), add = TRUE)
  expect_error(fitFlow(d$source, d$target, parallel = ParallelParam(), verbose = FALSE),
               "found no launcher's variables")
  expect_error(ParallelParam(workers = 0), "`workers` must be a whole number >= 1")
  expect_error(ParallelParam(port = 70000), "`port` must be a TCP port")
  expect_error(ParallelParam(rank = 2, world_size = 2), "`rank` is 2 but ranks run from 0 to")
  expect_error(ParallelParam(workers = 2, rank = 0), "is set together with `workers`")
  expect_error(fitFlow(d$source, d$target, parallel = list(workers = 2)), "`parallel` must be made by ParallelParam")
})

test_that("ParallelParam() reads torchrun's and srun's variables", {
  old <- Sys.getenv(c("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                      "SLURM_NNODES", "LOCAL_RANK", "SLURM_LOCALID"), unset = NA)
  on.exit(restore_env(old))
  Sys.unsetenv(names(old))
  Sys.setenv(RANK = "1", WORLD_SIZE = "4", MASTER_ADDR = "node7", MASTER_PORT = "29611")
  p <- ParallelParam()
  expect_equal(p[c("rank", "world_size", "address", "port", "launcher")],
               list(rank = 1L, world_size = 4L, address = "node7", port = 29611L, launcher = "RANK/WORLD_SIZE"))
  Sys.unsetenv(c("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
  Sys.setenv(SLURM_PROCID = "2", SLURM_NTASKS = "3", SLURM_NNODES = "1")
  p <- ParallelParam()
  expect_equal(p[c("rank", "world_size", "address", "port", "launcher")],
               list(rank = 2L, world_size = 3L, address = "127.0.0.1", port = 29500L,
                    launcher = "SLURM_PROCID/SLURM_NTASKS"))
  Sys.setenv(SLURM_NNODES = "2")
  expect_null(ParallelParam()$address)
  expect_error(popflow:::check_parallel(ParallelParam(), ICFMParam(), "cpu"), "MASTER_ADDR is unset")
  # The local rank (a rank's GPU with NCCL): the launcher's, else the rank.
  expect_equal(ParallelParam()$local_rank, 2L)
  Sys.setenv(SLURM_LOCALID = "0")
  expect_equal(ParallelParam()$local_rank, 0L)
  Sys.setenv(RANK = "5", WORLD_SIZE = "8", LOCAL_RANK = "1")
  expect_equal(ParallelParam()$local_rank, 1L)
  Sys.setenv(LOCAL_RANK = "gpu1")
  expect_error(ParallelParam(), "found LOCAL_RANK=\"gpu1\" in the environment, which is not a whole number.*Fix: unset LOCAL_RANK")
})

test_that("NCCL ranks train on the GPU of their local rank; other settings keep their device", {
  config <- list(training = list(device = "cuda", steps = 5L))
  nccl <- function(local_rank) list(backend = "nccl", local_rank = local_rank)
  expect_equal(popflow:::rank_config(config, nccl(3L))$training$device, "cuda:3")
  expect_equal(popflow:::rank_config(config, nccl(0L))$training, list(device = "cuda:0", steps = 5L))
  expect_equal(popflow:::rank_config(list(training = list(device = "cuda:1")), nccl(3L))$training$device, "cuda:1")
  expect_equal(popflow:::rank_config(config, list(backend = "gloo", local_rank = 3L)), config)
  expect_equal(popflow:::rank_config(config, NULL), config)
  # fitFlow's workers are ranks 0 .. workers - 1 on this machine.
  settings <- popflow:::engine_parallel(ParallelParam(workers = 2, backend = "nccl"), 0L, 29500L)
  expect_equal(settings$local_rank, 0L)
})

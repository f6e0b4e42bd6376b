# Data-parallel MFM training: one process against two Gloo workers on this machine.
#
#   R_LIBS=/work/lib-dist OMP_WAIT_POLICY=passive Rscript bench/distributed.R
#
# Model: MFM (GCN encoder, k = 20, 3 layers of width 64; a width-256 field of depth 3) on
# synthetic 10-d populations of 400 source and 400 target cells; each rank draws
# DIST_POPS populations of 128 cells a step. Three runs, one thread per process:
#   one      one process, DIST_POPS populations a step
#   one_acc2 one process, TrainingParam(accumulate = 2): the batch of two workers, in sequence
#   two      ParallelParam(workers = 2): two processes, DIST_POPS populations each, gradients
#            averaged over Gloo every step (gives the model one_acc2 gives)
#   spmd     the same as two scripts started with RANK / WORLD_SIZE / MASTER_PORT (as srun or
#            torchrun would), each timing its own CPU use (user + system seconds)
# speed-up = time of one_acc2 / time of two (the same work per step). On a machine busy with
# other work, wall times mostly measure the contention; CPU times do not: CPU(one_acc2) over the
# larger rank's CPU is the speed-up two free cores would give. The workers also time their
# exchanges themselves (POPFLOW_DISTRIBUTED_TIMES, src/core/distributed.cpp). "train s" is the
# engine's training time of rank 0 (after the workers started and met); "wall s" includes
# starting the workers. The runs alternate DIST_REPS times; the table gives medians.
#
# Settings (environment): DIST_STEPS (200), DIST_REPS (3), DIST_POPS (4).
# Writes bench/results/distributed_runs.csv and prints a markdown table.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()
if (!("gloo" %in% distributedBackends())) stop("popflow was built without Gloo: install libgloo-dev and reinstall")

`%||%` <- function(a, b) if (is.null(a)) b else a
steps <- env_int("DIST_STEPS", 200)
reps <- env_int("DIST_REPS", 3)
per_step <- env_int("DIST_POPS", 4)
n_pop <- 24L; n_cells <- 400L; d <- 10L

set.seed(1)
centres <- matrix(rnorm(n_pop * d, sd = 2), n_pop)
src <- do.call(rbind, lapply(seq_len(n_pop), function(p) sweep(matrix(rnorm(n_cells * d), ncol = d), 2, centres[p, ], "+")))
pop <- rep(sprintf("p%02d", seq_len(n_pop)), each = n_cells)
tgt <- src + matrix(rep(centres[, 1], each = n_cells), nrow(src), d) * 0.5 + 1
method <- MFMParam(k = 20, layers = 3, width = 64, populations_per_step = per_step, cells_per_population = 128)
network <- NetworkParam(width = 256, depth = 3)

# The fit of one run; with `parallel`, of one rank. Returns its timings, CPU time included
# (user + system of this process: what the work costs whatever else runs on the machine).
fit_once <- function(accumulate = 1, parallel = NULL) {
  t0 <- proc.time()
  fit <- fitFlow(src, tgt, population = c(pop, pop), method = method, network = network,
                 training = TrainingParam(steps = steps, seed = 1, accumulate = accumulate), verbose = FALSE,
                 parallel = parallel)
  dt <- proc.time() - t0
  list(train_s = fit$seconds, wall_s = dt[["elapsed"]], cpu_s = dt[["user.self"]] + dt[["sys.self"]],
       final_loss = utils::tail(fit$loss, 1))
}

# A rank of the "spmd" run: started by this script itself with RANK, WORLD_SIZE and MASTER_PORT set.
if (nzchar(Sys.getenv("DIST_RANK_OUT"))) {
  saveRDS(fit_once(parallel = ParallelParam()), Sys.getenv("DIST_RANK_OUT"))
  quit(save = "no")
}

# Each worker appends "rank exchanges seconds" here when it leaves the group (distributed.cpp).
times_file <- tempfile()
Sys.setenv(POPFLOW_DISTRIBUTED_TIMES = times_file)
exchange_times <- function() {
  exch <- if (file.exists(times_file)) utils::read.table(times_file, col.names = c("rank", "n", "s"))
  c(exchange_s_rank0 = if (is.null(exch)) NA else exch$s[exch$rank == 0],
    exchange_s_rank1 = if (is.null(exch)) NA else exch$s[exch$rank == 1])
}

# Two ranks as two scripts, the way srun or torchrun starts them: their own CPU times.
spmd_run <- function() {
  port <- popflow:::free_port()
  outs <- c(tempfile(), tempfile())
  script <- normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1]))
  t0 <- proc.time()[["elapsed"]]
  for (r in 0:1) {
    system2(file.path(R.home("bin"), "Rscript"), shQuote(script), wait = FALSE, stdout = FALSE, stderr = FALSE,
            env = c(sprintf("RANK=%d", r), "WORLD_SIZE=2", sprintf("MASTER_PORT=%d", port),
                    sprintf("DIST_RANK_OUT=%s", outs[r + 1])))
  }
  while (!all(file.exists(outs))) {
    if (proc.time()[["elapsed"]] - t0 > 600) stop("the spmd ranks did not finish")
    Sys.sleep(0.2)
  }
  Sys.sleep(0.2)  # saveRDS done
  ranks <- lapply(outs, readRDS)
  list(train_s = ranks[[1]]$train_s, wall_s = proc.time()[["elapsed"]] - t0,
       cpu_s = ranks[[1]]$cpu_s, cpu_s_rank1 = ranks[[2]]$cpu_s, final_loss = ranks[[1]]$final_loss)
}

run <- function(kind) {
  unlink(times_file)
  res <- switch(kind, one = fit_once(), one_acc2 = fit_once(accumulate = 2),
                two = fit_once(parallel = ParallelParam(workers = 2)), spmd = spmd_run())
  data.frame(kind = kind, steps = steps, train_s = res$train_s, wall_s = res$wall_s, cpu_s = res$cpu_s,
             cpu_s_rank1 = res$cpu_s_rank1 %||% NA, final_loss = res$final_loss, t(exchange_times()))
}

runs <- do.call(rbind, lapply(seq_len(reps), function(r) {
  do.call(rbind, lapply(c("one", "one_acc2", "two", "spmd"), function(k) cbind(rep = r, run(k))))
}))
utils::write.csv(runs, file.path(RESULTS, "distributed_runs.csv"), row.names = FALSE)

med <- function(k, col) stats::median(runs[runs$kind == k, col])
tab <- data.frame(
  run = c("one process", "one process, accumulate = 2", "two Gloo workers (fitFlow starts them)",
          "two Gloo ranks (launched scripts)"),
  populations_per_step = per_step * c(1, 2, 2, 2),
  train_s = sapply(c("one", "one_acc2", "two", "spmd"), med, col = "train_s"),
  wall_s = sapply(c("one", "one_acc2", "two", "spmd"), med, col = "wall_s"),
  cpu_s_rank0 = c(med("one", "cpu_s"), med("one_acc2", "cpu_s"), NA, med("spmd", "cpu_s")),
  cpu_s_rank1 = c(NA, NA, NA, med("spmd", "cpu_s_rank1"))
)
tab$steps_per_s <- steps / tab$train_s
cat(sprintf("MFM, %d steps, %d populations of %d cells per rank and step, %d-d, %d reps (medians); %s; load average %s\n",
            steps, per_step, 128L, d, reps, format(Sys.time(), "%Y-%m-%d %H:%M"),
            paste(utils::head(strsplit(readLines("/proc/loadavg"), " ")[[1]], 3), collapse = " ")))
md_table(tab)
cat(sprintf("\nmeasured speed-up of two workers over one process with the same batch (accumulate = 2): %.2fx (fitFlow's workers), %.2fx (launched ranks)\n",
            med("one_acc2", "train_s") / med("two", "train_s"), med("one_acc2", "train_s") / med("spmd", "train_s")))
cat(sprintf("CPU time per step: one process %.1f ms, accumulate = 2 %.1f ms, each launched rank %.1f / %.1f ms; with a free core per rank the speed-up would be about %.2fx\n",
            1000 * med("one", "cpu_s") / steps, 1000 * med("one_acc2", "cpu_s") / steps,
            1000 * med("spmd", "cpu_s") / steps, 1000 * med("spmd", "cpu_s_rank1") / steps,
            med("one_acc2", "cpu_s") / max(med("spmd", "cpu_s"), med("spmd", "cpu_s_rank1"))))
cat(sprintf("time in the gradient exchange (allreduce, waiting for the other rank included), fitFlow's workers: rank 0 %.2f ms a step (%.0f%% of its training time), rank 1 %.2f ms\n",
            1000 * med("two", "exchange_s_rank0") / steps, 100 * med("two", "exchange_s_rank0") / med("two", "train_s"),
            1000 * med("two", "exchange_s_rank1") / steps))

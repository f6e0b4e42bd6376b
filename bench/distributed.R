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
# speed-up = time of one_acc2 / time of two (the same work per step); the communication share
# is (two - one) / two per step: what two workers spend beyond one worker's own work
# (the allreduce of the flat gradient and waiting for the slower rank); the workers also time
# their exchanges themselves (POPFLOW_DISTRIBUTED_TIMES, src/core/distributed.cpp). "train s" is the
# engine's training time of rank 0 (after the workers started and met); "wall s" includes
# starting the workers. The runs alternate DIST_REPS times; the table gives medians.
#
# Settings (environment): DIST_STEPS (200), DIST_REPS (3), DIST_POPS (4).
# Writes bench/results/distributed_runs.csv and prints a markdown table.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()
if (!("gloo" %in% distributedBackends())) stop("popflow was built without Gloo: install libgloo-dev and reinstall")

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

# Each worker appends "rank exchanges seconds" here when it leaves the group (distributed.cpp).
times_file <- tempfile()
Sys.setenv(POPFLOW_DISTRIBUTED_TIMES = times_file)

run <- function(kind) {
  training <- TrainingParam(steps = steps, seed = 1, accumulate = if (kind == "one_acc2") 2 else 1)
  unlink(times_file)
  wall <- system.time(fit <- fitFlow(src, tgt, population = c(pop, pop), method = method, network = network,
                                     training = training, verbose = FALSE,
                                     parallel = if (kind == "two") ParallelParam(workers = 2)))[["elapsed"]]
  exch <- if (file.exists(times_file)) utils::read.table(times_file, col.names = c("rank", "n", "s")) else NULL
  data.frame(kind = kind, steps = steps, train_s = fit$seconds, wall_s = wall, final_loss = utils::tail(fit$loss, 1),
             exchange_s_rank0 = if (is.null(exch)) NA else exch$s[exch$rank == 0],
             exchange_s_rank1 = if (is.null(exch)) NA else exch$s[exch$rank == 1])
}

runs <- do.call(rbind, lapply(seq_len(reps), function(r) {
  do.call(rbind, lapply(c("one", "one_acc2", "two"), function(k) cbind(rep = r, run(k))))
}))
utils::write.csv(runs, file.path(RESULTS, "distributed_runs.csv"), row.names = FALSE)

med <- function(k, col) stats::median(runs[runs$kind == k, col])
tab <- data.frame(
  run = c("one process", "one process, accumulate = 2", "two Gloo workers"),
  populations_per_step = per_step * c(1, 2, 2),
  train_s = c(med("one", "train_s"), med("one_acc2", "train_s"), med("two", "train_s")),
  wall_s = c(med("one", "wall_s"), med("one_acc2", "wall_s"), med("two", "wall_s"))
)
tab$steps_per_s <- steps / tab$train_s
tab$populations_per_s <- tab$steps_per_s * tab$populations_per_step
cat(sprintf("MFM, %d steps, %d populations of %d cells per rank and step, %d-d, %d reps (medians); %s\n",
            steps, per_step, 128L, d, reps, format(Sys.time(), "%Y-%m-%d %H:%M")))
md_table(tab)
cat(sprintf("\nspeed-up of two workers over one process with the same batch (accumulate = 2): %.2fx\n",
            med("one_acc2", "train_s") / med("two", "train_s")))
cat(sprintf("time two workers spend per step beyond one worker's work: %.2f ms, %.0f%% of a step\n",
            1000 * (med("two", "train_s") - med("one", "train_s")) / steps,
            100 * (med("two", "train_s") - med("one", "train_s")) / med("two", "train_s")))
cat(sprintf("time in the gradient exchange (allreduce, waiting for the other rank included): rank 0 %.2f ms a step (%.0f%% of its training time), rank 1 %.2f ms\n",
            1000 * med("two", "exchange_s_rank0") / steps, 100 * med("two", "exchange_s_rank0") / med("two", "train_s"),
            1000 * med("two", "exchange_s_rank1") / steps))

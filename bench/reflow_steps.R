# Reflow (rectified flow): how many Euler steps before and after one and two rounds.
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/reflow_steps.R
#
# The 2-d mixture of eight Gaussians of bench/diffusion_steps.R (radius 4, sd 0.4; 4000 training
# cells, 2000 fresh test cells). A target-FM model (default network, 3000 steps, batch 256, lr
# 1e-3) is reflowed once and twice (ReflowParam(rounds = 1, 2): 4000 noise draws carried by dopri5
# to their images, then a paired straight-path fit of 3000 steps per round). From the same 2000
# noise draws: Euler at 1-64 steps vs each model's own dopri5 reference (atol = rtol = 1e-7),
# exact W2; and the W2 of each model's dopri5 samples to the test cells (does reflow keep the
# distribution?).
#
# RF_FROM_CSV=1 prints the tables from the CSVs of an earlier run, without training.
# Settings (environment): RF_STEPS (3000 training steps per fit), RF_SEEDS (1,2,3).
# Writes bench/results/reflow_steps_runs.csv, reflow_steps_samples.csv and reflow_steps.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

train_steps <- env_int("RF_STEPS", 3000)
seeds <- env_ints("RF_SEEDS", "1,2,3")
euler_steps <- c(1, 2, 4, 8, 16, 32, 64)
n_gen <- 2000

train_cells <- eight_gaussians(4000, 100)
test_cells <- eight_gaussians(n_gen, 200)
cat(sprintf("eight Gaussians: %d training, %d test cells; %d training steps per fit; %s\n", nrow(train_cells),
            nrow(test_cells), train_steps, versions_line()))

models <- c("target FM", "1 reflow", "2 reflows")
if (Sys.getenv("RF_FROM_CSV") == "1") {
  # Tables only, from the CSVs of an earlier run.
  runs <- utils::read.csv(file.path(RESULTS, "reflow_steps_runs.csv"), check.names = FALSE)
  samples <- utils::read.csv(file.path(RESULTS, "reflow_steps_samples.csv"), check.names = FALSE)
  seeds <- sort(unique(runs$seed))
} else {
  runs <- list()
  samples <- list()
  for (s in seeds) {
    set.seed(1000 + s)
    noise <- matrix(rnorm(2 * n_gen), n_gen, 2)
    training <- TrainingParam(steps = train_steps, batch_size = 256, lr = 1e-3, seed = s)
    fits <- list()
    fits[["target FM"]] <- fitFlow(train_cells, method = "targetfm", training = training, threads = 1L, verbose = FALSE)
    # A second round is a reflow of the first (the same as ReflowParam(rounds = 2): same noise, same seed).
    for (r in 1:2) {
      fits[[models[r + 1]]] <- fitFlow(train_cells, method = ReflowParam(fits[[models[r]]]), training = training,
                                       threads = 1L, verbose = FALSE)
    }
    for (m in models) {
      fit <- fits[[m]]
      ref <- predict(fit, noise, solver = SolverParam("dopri5", atol = 1e-7, rtol = 1e-7))
      samples[[length(samples) + 1]] <- data.frame(model = m, seed = s, w2_test = w2(ref, test_cells),
                                                   w2_target_fm = w2(ref, predict(fits[["target FM"]], noise)))
      cat(sprintf("%s seed %d: W2 to test cells %.3f\n", m, s, samples[[length(samples)]]$w2_test))
      for (n in euler_steps) {
        pred <- predict(fit, noise, solver = SolverParam("euler", steps = n))
        runs[[length(runs) + 1]] <- data.frame(model = m, seed = s, steps = n, w2 = w2(pred, ref))
      }
    }
  }
  runs <- do.call(rbind, runs)
  samples <- do.call(rbind, samples)
  utils::write.csv(runs, file.path(RESULTS, "reflow_steps_runs.csv"), row.names = FALSE)
  utils::write.csv(samples, file.path(RESULTS, "reflow_steps_samples.csv"), row.names = FALSE)
}

noise_floor <- w2(eight_gaussians(n_gen, 300), test_cells)
cat(sprintf("\n### Samples (dopri5): exact W2 (mean ± sd over seeds %s); two independent draws of the data: %.3f\n\n",
            paste(seeds, collapse = ","), noise_floor))
md_table(data.frame(model = models, check.names = FALSE,
                    `W2 to test cells` = vapply(models, function(m) mean_sd(samples$w2_test[samples$model == m], 3), ""),
                    `W2 to target FM's samples` = vapply(models, function(m) {
                      mean_sd(samples$w2_target_fm[samples$model == m], 3)
                    }, "")))

tab <- data.frame(`Euler steps` = euler_steps, check.names = FALSE)
for (m in models) tab[[m]] <- vapply(euler_steps, function(n) mean_sd(runs$w2[runs$model == m & runs$steps == n], 3, "g"), "")
utils::write.csv(tab, file.path(RESULTS, "reflow_steps.csv"), row.names = FALSE)
cat(sprintf("\n### Euler steps: exact W2 to each model's dopri5 (1e-7) reference from the same noise (mean ± sd over seeds %s)\n\n",
            paste(seeds, collapse = ",")))
md_table(tab)

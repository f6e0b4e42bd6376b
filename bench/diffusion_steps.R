# Diffusion as flow matching vs target FM: the same samples, and how many Euler steps each needs.
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/diffusion_steps.R
#
# A 2-d mixture of eight Gaussians (radius 4, sd 0.4; 4000 training cells, 2000 fresh test cells).
# Train target FM (straight path from N(0, I), sigma_min 1e-4) and diffusion as flow matching
# (variance-preserving path, cosine and linear schedules) with the same network and training
# (default network, 3000 steps, batch 256, lr 1e-3). (a) Do the samples match? Exact W2 between
# 2000 cells drawn by each model (dopri5, atol = rtol = 1e-5) and the test cells, and between the
# diffusion models' and target FM's samples (same noise). (b) How many steps? From the same 2000
# noise draws, Euler at 1-256 steps vs each model's own dopri5 reference (atol = rtol = 1e-7):
# exact W2. Straight paths should need fewer steps.
#
# DS_FROM_CSV=1 prints the tables from the CSVs of an earlier run, without training.
# Settings (environment): DS_STEPS (3000 training steps), DS_SEEDS (1,2,3).
# Writes bench/results/diffusion_steps_runs.csv, diffusion_steps_samples.csv and diffusion_steps.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

train_steps <- env_int("DS_STEPS", 3000)
seeds <- env_ints("DS_SEEDS", "1,2,3")
euler_steps <- c(1, 2, 4, 8, 16, 32, 64, 128, 256)
n_gen <- 2000

train_cells <- eight_gaussians(4000, 100)
test_cells <- eight_gaussians(n_gen, 200)
cat(sprintf("eight Gaussians: %d training, %d test cells; %d training steps; %s\n", nrow(train_cells),
            nrow(test_cells), train_steps, versions_line()))

methods <- list(`target FM` = TargetFMParam(), `diffusion, cosine` = DiffusionParam("cosine"),
                `diffusion, linear` = DiffusionParam("linear"))
with_seed_matrix <- function(seed, n) {
  set.seed(1000 + seed)
  matrix(rnorm(2 * n), n, 2)
}
if (Sys.getenv("DS_FROM_CSV") == "1") {
  # Tables only, from the CSVs of an earlier run.
  runs <- utils::read.csv(file.path(RESULTS, "diffusion_steps_runs.csv"), check.names = FALSE)
  samples <- utils::read.csv(file.path(RESULTS, "diffusion_steps_samples.csv"), check.names = FALSE)
  seeds <- sort(unique(runs$seed))
} else {
  runs <- list()
  samples <- list()
  for (s in seeds) {
    noise <- with_seed_matrix(s, n_gen)
    gen <- list()
    for (m in names(methods)) {
      fit <- fitFlow(train_cells, method = methods[[m]],
                     training = TrainingParam(steps = train_steps, batch_size = 256, lr = 1e-3, seed = s),
                     threads = 1L, verbose = FALSE)
      gen[[m]] <- predict(fit, noise, solver = SolverParam("dopri5"))
      ref <- predict(fit, noise, solver = SolverParam("dopri5", atol = 1e-7, rtol = 1e-7))
      samples[[length(samples) + 1]] <- data.frame(method = m, seed = s, train_seconds = fit$seconds,
                                                   w2_test = w2(gen[[m]], test_cells),
                                                   w2_target_fm = if (m == "target FM") 0 else w2(gen[[m]], gen[["target FM"]]))
      cat(sprintf("%s seed %d: trained in %.1f s, W2 to test cells %.3f\n", m, s, fit$seconds,
                  samples[[length(samples)]]$w2_test))
      for (n in euler_steps) {
        pred <- predict(fit, noise, solver = SolverParam("euler", steps = n))
        runs[[length(runs) + 1]] <- data.frame(method = m, seed = s, steps = n, w2 = w2(pred, ref))
      }
    }
  }
  runs <- do.call(rbind, runs)
  samples <- do.call(rbind, samples)
  utils::write.csv(runs, file.path(RESULTS, "diffusion_steps_runs.csv"), row.names = FALSE)
  utils::write.csv(samples, file.path(RESULTS, "diffusion_steps_samples.csv"), row.names = FALSE)
}

noise_floor <- w2(eight_gaussians(n_gen, 300), test_cells)
cat(sprintf("\n### Samples: exact W2 (mean ± sd over seeds %s); two independent draws of the data: %.3f\n\n",
            paste(seeds, collapse = ","), noise_floor))
md_table(data.frame(method = names(methods), check.names = FALSE,
                    `W2 to test cells` = vapply(names(methods), function(m) mean_sd(samples$w2_test[samples$method == m], 3), ""),
                    `W2 to target FM's samples` = vapply(names(methods), function(m) {
                      if (m == "target FM") "-" else mean_sd(samples$w2_target_fm[samples$method == m], 3)
                    }, ""),
                    `train s` = vapply(names(methods), function(m) sprintf("%.1f", mean(samples$train_seconds[samples$method == m])), "")))

tab <- data.frame(`Euler steps` = euler_steps, check.names = FALSE)
for (m in names(methods)) {
  tab[[m]] <- vapply(euler_steps, function(n) mean_sd(runs$w2[runs$method == m & runs$steps == n], 3, "g"), "")
}
utils::write.csv(tab, file.path(RESULTS, "diffusion_steps.csv"), row.names = FALSE)
cat(sprintf("\n### Euler steps: exact W2 to each model's dopri5 (1e-7) reference from the same noise (mean ± sd over seeds %s)\n\n",
            paste(seeds, collapse = ",")))
md_table(tab)

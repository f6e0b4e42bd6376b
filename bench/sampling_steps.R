# How many ODE steps does sampling need? popflow I-CFM vs OT-CFM on the EMT time course.
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/sampling_steps.R
#
# Train I-CFM and OT-CFM (sigma 0.1, default network) on all four EMT snapshots. Move the cells
# of time 0 (a) to time 1, one snapshot interval, and (b) to time 3, the whole course, with
# Euler and RK4 at 1, 2, 4, 8, 16, 32 steps (over [from, to]), and report the exact W2 between
# each prediction and a tight dopri5 reference (atol = rtol = 1e-7) from the same cells.
# Straighter paths (OT-CFM) should need fewer steps for the same error.
#
# Settings (environment): SS_STEPS (2000 training steps), SS_SEEDS (1,2,3), SS_SIGMA (0.1).
# Writes bench/results/sampling_steps_runs.csv and sampling_steps.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

train_steps <- env_int("SS_STEPS", 2000)
seeds <- env_ints("SS_SEEDS", "1,2,3")
sigma <- as.numeric(Sys.getenv("SS_SIGMA", "0.1"))
ode_steps <- c(1, 2, 4, 8, 16, 32)
targets <- c(1, 3)

emt <- read_emt()
src <- emt$x[emt$time == 0, , drop = FALSE]
cat(sprintf("EMT %d cells; source: %d cells of time 0; %d training steps, sigma %g; %s\n",
            nrow(emt$x), nrow(src), train_steps, sigma, versions_line()))

methods <- list(`I-CFM` = ICFMParam(sigma = sigma), `OT-CFM` = OTCFMParam(sigma = sigma))
runs <- list()
for (m in names(methods)) for (s in seeds) {
  fit <- fitFlow(emt$x, time = emt$time, method = methods[[m]],
                 training = TrainingParam(steps = train_steps, batch_size = 256, lr = 1e-3, seed = s),
                 threads = 1L, verbose = FALSE)
  cat(sprintf("%s seed %d: trained in %.1f s\n", m, s, fit$seconds))
  for (to in targets) {
    ref <- predict(fit, src, from = 0, to = to, solver = SolverParam("dopri5", atol = 1e-7, rtol = 1e-7))
    for (solver in c("euler", "rk4")) for (n in ode_steps) {
      pred <- predict(fit, src, from = 0, to = to, solver = SolverParam(solver, steps = n))
      runs[[length(runs) + 1]] <- data.frame(
        method = m, seed = s, to = to, solver = solver, steps = n, nfe = n * c(euler = 1, rk4 = 4)[[solver]],
        w2 = wassersteinDistance(pred, ref, p = 2, max_cells = 100000),
        rmse_paired = sqrt(mean(rowSums((pred - ref)^2))))
    }
  }
}
runs <- do.call(rbind, runs)
utils::write.csv(runs, file.path(RESULTS, "sampling_steps_runs.csv"), row.names = FALSE)

grid <- unique(runs[, c("solver", "steps", "nfe")])
tab <- grid
for (to in targets) for (m in names(methods)) {
  tab[[sprintf("%s, 0→%d", m, to)]] <- vapply(seq_len(nrow(grid)), function(i) {
    mean_sd(runs$w2[runs$method == m & runs$to == to & runs$solver == grid$solver[i] & runs$steps == grid$steps[i]],
            digits = 3, format = "g")
  }, "")
}
rownames(tab) <- NULL
utils::write.csv(tab, file.path(RESULTS, "sampling_steps.csv"), row.names = FALSE)
cat(sprintf("\n### Sampling steps: exact W2 to a dopri5 (1e-7) reference, cells of time 0 (mean ± sd over seeds %s)\n\n",
            paste(seeds, collapse = ",")))
md_table(tab)

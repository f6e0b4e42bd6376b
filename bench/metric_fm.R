# Metric flow matching (MetricFMParam) against OT-CFM on the EMT time course,
# leave one intermediate time point out (the protocol of bench/emt_holdout.R).
#
#   R_LIBS=/tmp/rlib OMP_NUM_THREADS=1 Rscript bench/metric_fm.R
#
# For each held-out time k in {1, 2}: train on the other snapshots, move the
# cells of time k-1 to time k (dopri5, atol = rtol = 1e-5) and report exact W1
# (all 10 dimensions) to the real cells of time k; mean ± sd over seeds. The
# held-out interval is where metric FM's curved paths matter: its straight
# lines span two snapshots.
# Rows: popflow OT-CFM (`steps` velocity steps); metric FM with the same
# velocity steps after `interpolant_steps` steps of its interpolant (same
# velocity budget); metric FM within the same total steps (interpolant steps
# counted in); the "no change" and "mean shift" baselines (as in
# bench/emt_holdout.R); and the noise
# floor, two random halves of the held-out cells, one against the other
# (a half-size sample: W1 between samples of one population is not 0).
# Settings (environment): MFM_STEPS (2000), MFM_SEEDS (1,2,3), MFM_HOLDOUT (1,2),
# MFM_BATCH (256), MFM_SIGMA (0.1), MFM_LR (0.001), MFM_INTERPOLANT_STEPS (500),
# MFM_EPS (0.01), MFM_ROWS (otcfm,metricfm,metricfm_total), MFM_TAG (file name suffix),
# MFM_FROM (comma-separated runs CSVs of earlier calls, e.g. one per holdout run in parallel:
# no fitting, only the table from them).
# Writes bench/results/metric_fm<tag>_runs.csv and metric_fm<tag>.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

steps <- env_int("MFM_STEPS", 2000)
seeds <- env_ints("MFM_SEEDS", "1,2,3")
holdouts <- env_ints("MFM_HOLDOUT", "1,2")
batch <- env_int("MFM_BATCH", 256)
sigma <- as.numeric(Sys.getenv("MFM_SIGMA", "0.1"))
lr <- as.numeric(Sys.getenv("MFM_LR", "0.001"))
phi_steps <- env_int("MFM_INTERPOLANT_STEPS", 500)
eps <- as.numeric(Sys.getenv("MFM_EPS", "0.01"))
rows <- strsplit(Sys.getenv("MFM_ROWS", "otcfm,metricfm,metricfm_total"), ",")[[1]]
tag <- Sys.getenv("MFM_TAG", "")
solver <- SolverParam("dopri5", atol = 1e-5, rtol = 1e-5)

emt <- read_emt()
cat(sprintf("EMT: %d cells x %d features; steps %d, batch %d per interval, lr %g, sigma %g, seeds %s\n",
            nrow(emt$x), ncol(emt$x), steps, batch, lr, sigma, paste(seeds, collapse = ",")))
cat(sprintf("metric FM: LAND, bandwidth from the data, eps %g, %d interpolant steps; %s\n", eps, phi_steps,
            versions_line()))

mfm <- MetricFMParam(sigma = sigma, eps = eps, interpolant_steps = phi_steps)
all_variants <- list(
  otcfm = list(label = sprintf("OT-CFM (%d steps)", steps), method = OTCFMParam(sigma = sigma), steps = steps),
  metricfm = list(label = sprintf("Metric FM (%d interpolant + %d velocity steps)", phi_steps, steps),
                  method = mfm, steps = steps + phi_steps),
  metricfm_total = list(label = sprintf("Metric FM (%d interpolant + %d velocity steps)", phi_steps,
                                        steps - phi_steps), method = mfm, steps = steps)
)
variants <- all_variants[rows]
if (anyNA(names(variants))) stop("MFM_ROWS: unknown row; use ", paste(names(all_variants), collapse = ","))

runs <- list()
from <- Sys.getenv("MFM_FROM", "")
if (nzchar(from)) {
  runs <- lapply(strsplit(from, ",")[[1]], utils::read.csv, check.names = FALSE)
  holdouts <- sort(unique(unlist(lapply(runs, `[[`, "holdout"))))
  seeds <- sort(setdiff(unique(unlist(lapply(runs, `[[`, "seed"))), 0))
  variants <- list()
}
for (k in if (nzchar(from)) integer(0) else holdouts) {
  keep <- emt$time != k
  src <- emt$x[emt$time == k - 1, , drop = FALSE]
  real <- emt$x[emt$time == k, , drop = FALSE]
  w1 <- function(pred) wassersteinDistance(pred, real, p = 1, max_cells = 100000)
  add <- function(row, seed, d, fit = NULL) {
    runs[[length(runs) + 1]] <<- data.frame(row = row, holdout = k, seed = seed, w1 = d,
                                            train_seconds = if (is.null(fit)) NA else fit$seconds)
  }
  add("no change (cells of time k-1)", 0, w1(src))
  add("mean shift (training means, interpolated)", 0, w1(emt_mean_shift(emt, k)))
  for (s in seeds) add("noise floor (halves of the held-out cells)", s, noise_floor_w1(real, s))
  for (v in variants) {
    for (s in seeds) {
      fit <- fitFlow(emt$x[keep, ], time = emt$time[keep], method = v$method,
                     training = TrainingParam(steps = v$steps, batch_size = batch, lr = lr, seed = s),
                     threads = 1L, verbose = FALSE)
      d <- w1(predict(fit, src, from = k - 1, to = k, solver = solver))
      cat(sprintf("%s holdout=%d seed=%d: W1=%.4f, train %.1f s\n", v$label, k, s, d, fit$seconds))
      add(v$label, s, d, fit)
      # Written after every fit: an interrupted run keeps what it finished.
      utils::write.csv(do.call(rbind, runs), file.path(RESULTS, sprintf("metric_fm%s_runs.csv", tag)),
                       row.names = FALSE)
    }
  }
}
runs <- do.call(rbind, runs)
utils::write.csv(runs, file.path(RESULTS, sprintf("metric_fm%s_runs.csv", tag)), row.names = FALSE)

order <- unique(runs$row)
tab <- data.frame(method = order, stringsAsFactors = FALSE)
for (k in holdouts) {
  tab[[sprintf("W1, t=%d held out", k)]] <- vapply(order, function(r) mean_sd(runs$w1[runs$row == r & runs$holdout == k]), "")
}
tab[["train s / fit (shared CPU)"]] <- vapply(order, function(r) {
  v <- runs$train_seconds[runs$row == r]
  if (all(is.na(v))) "-" else sprintf("%.0f", mean(v, na.rm = TRUE))
}, "")
utils::write.csv(tab, file.path(RESULTS, sprintf("metric_fm%s.csv", tag)), row.names = FALSE)
cat(sprintf("\n### EMT leave-one-time-point-out, metric FM vs OT-CFM: exact W1 (mean ± sd over seeds %s)\n\n",
            paste(seeds, collapse = ",")))
md_table(tab)

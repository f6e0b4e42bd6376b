# Unbalanced flows (UnbalancedParam) against balanced OT-CFM.
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/unbalanced.R
#
# 1. simulateGrowth(): three regions whose mass changes by exp(growth) = 2, 1, 0.5 between the
#    snapshots (n cells per region at time 0). Per seed: fit on both snapshots, predict the
#    cells of time 0, and report, per region, the mean predicted weight of the cells that
#    start there (truth: 2, 1, 0.5), the largest relative error of the three, and the largest
#    error of the weighted region proportions of the predicted cells (regions by nearest
#    observed cell at time 1) against the observed proportions at time 1, and the weighted share
#    of cells that end in another region than they started in ("moved across"). OT-CFM's
#    weights are all 1: it matches the proportions by moving cells from the dying region into
#    the growing one, which "moved across" shows.
# 2. EMT time course, leave one intermediate time point out (the protocol of
#    bench/emt_holdout.R): train on the other snapshots, move the cells of time k-1 to k
#    (dopri5, atol = rtol = 1e-5), exact W1 to the real cells of time k, weighted by the
#    predicted weights for the unbalanced flow. Sizes: the cell counts (the default).
#
# Settings (environment): UB_GROWTH (1: run part 1), UB_STEPS (2000), UB_SEEDS (1,2,3), UB_N (300), UB_BATCH (64; part 1 also
# uses lr 2e-3 and a 0.995 moving average), UB_EMT (1: run part 2), UB_EMT_STEPS (2000),
# UB_EMT_SEEDS (1,2), UB_EMT_BATCH (256).
# Writes bench/results/unbalanced_growth.csv and unbalanced_emt.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()
`%||%` <- function(a, b) if (is.null(a)) b else a

steps <- env_int("UB_STEPS", 2000)
seeds <- env_ints("UB_SEEDS", "1,2,3")
n <- env_int("UB_N", 300)
batch <- env_int("UB_BATCH", 64)
solver <- SolverParam("dopri5", atol = 1e-5, rtol = 1e-5)
cat(sprintf("steps %d, batch %d, seeds %s; %s\n", steps, batch, paste(seeds, collapse = ","), versions_line()))

# ---- 1. known growth and death ----
rows <- list()
if (Sys.getenv("UB_GROWTH", "1") == "1") for (s in seeds) {
  sim <- simulateGrowth(n = n, seed = s)
  src <- sim$cells[sim$time == 0, ]
  region <- sim$region[sim$time == 0]
  obs <- cellProportions(sim$region[sim$time == 1])
  for (m in list(list(label = "popflow unbalanced OT-CFM, reg_m 0.1", method = UnbalancedParam(reg_m = 0.1)),
                 list(label = "popflow unbalanced OT-CFM, reg_m 1", method = UnbalancedParam(reg_m = 1)),
                 list(label = "popflow OT-CFM (balanced)", method = OTCFMParam()))) {
    fit <- fitFlow(sim$cells, time = sim$time, method = m$method,
                   training = TrainingParam(steps = steps, batch_size = batch, lr = 2e-3, ema_decay = 0.995, seed = s),
                   verbose = FALSE)
    pred <- predict(fit, src, solver = solver)
    w <- attr(pred, "weight") %||% rep(1, nrow(src))
    factor <- tapply(w, region, mean)
    lands <- sim$region[sim$time == 1][popflow:::nearest_rows(pred, sim$cells[sim$time == 1, ])]
    prop <- cellProportions(pred, labels = sim$region[sim$time == 1], reference = sim$cells[sim$time == 1, ],
                            weights = w)
    rows[[length(rows) + 1]] <- data.frame(method = m$label, seed = s, A = factor[["A"]], B = factor[["B"]],
                                           C = factor[["C"]], max_rel_err = max(abs(factor / exp(sim$growth) - 1)),
                                           prop_err = max(abs(prop - obs)),
                                           moved = sum(w[lands != region]) / sum(w),
                                           W1 = wassersteinDistance(pred, sim$cells[sim$time == 1, ], x_weights = w),
                                           train_s = fit$seconds)
    cat(sprintf("%s seed %d: growth A %.3f B %.3f C %.3f (truth 2, 1, 0.5), proportions off by %.3f, moved across %.3f, %.0f s\n",
                m$label, s, factor[["A"]], factor[["B"]], factor[["C"]], rows[[length(rows)]]$prop_err,
                rows[[length(rows)]]$moved, fit$seconds))
  }
}
if (length(rows)) {
growth <- do.call(rbind, rows)
utils::write.csv(growth, file.path(RESULTS, "unbalanced_growth.csv"), row.names = FALSE)
tab <- do.call(rbind, lapply(split(growth, growth$method), function(d) {
  data.frame(method = d$method[1], `growth A (2)` = mean_sd(d$A, 3), `growth B (1)` = mean_sd(d$B, 3),
             `growth C (0.5)` = mean_sd(d$C, 3), `max rel. error` = mean_sd(d$max_rel_err, 3),
             `proportion error` = mean_sd(d$prop_err, 3), `moved across` = mean_sd(d$moved, 3), `W1 (weighted)` = mean_sd(d$W1, 3), check.names = FALSE)
}))
cat(sprintf("\n### simulateGrowth(n = %d): per-region mass change recovered (mean ± sd over seeds %s; %d steps)\n\n",
            n, paste(seeds, collapse = ","), steps))
md_table(tab)
}

# ---- 2. EMT, leave one time point out ----
if (Sys.getenv("UB_EMT", "1") == "1") {
  emt <- read_emt()
  emt_steps <- env_int("UB_EMT_STEPS", 2000)
  emt_seeds <- env_ints("UB_EMT_SEEDS", "1,2")
  emt_batch <- env_int("UB_EMT_BATCH", 256)
  runs <- list()
  for (k in c(1, 2)) {
    keep <- emt$time != k
    src <- emt$x[emt$time == k - 1, , drop = FALSE]
    real <- emt$x[emt$time == k, , drop = FALSE]
    for (m in list(list(label = "popflow unbalanced OT-CFM", method = UnbalancedParam()),
                   list(label = "popflow OT-CFM (balanced)", method = OTCFMParam()))) {
      for (s in emt_seeds) {
        fit <- fitFlow(emt$x[keep, ], time = emt$time[keep], method = m$method,
                       training = TrainingParam(steps = emt_steps, batch_size = emt_batch, seed = s), verbose = FALSE)
        pred <- predict(fit, src, from = k - 1, to = k, solver = solver)
        d <- wassersteinDistance(pred, real, p = 1, max_cells = 100000)
        runs[[length(runs) + 1]] <- data.frame(method = m$label, holdout = k, seed = s, w1 = d,
                                               mean_weight = mean(attr(pred, "weight") %||% 1), train_s = fit$seconds)
        cat(sprintf("EMT %s holdout %d seed %d: W1 %.4f, mean weight %.3f, %.0f s\n", m$label, k, s, d,
                    runs[[length(runs)]]$mean_weight, fit$seconds))
      }
    }
  }
  runs <- do.call(rbind, runs)
  utils::write.csv(runs, file.path(RESULTS, "unbalanced_emt.csv"), row.names = FALSE)
  tab <- do.call(rbind, lapply(split(runs, runs$method), function(d) {
    data.frame(method = d$method[1], `W1, t=1 held out` = mean_sd(d$w1[d$holdout == 1]),
               `W1, t=2 held out` = mean_sd(d$w1[d$holdout == 2]),
               `mean weight t=1, t=2` = paste(sprintf("%.3f", tapply(d$mean_weight, d$holdout, mean)), collapse = ", "),
               check.names = FALSE)
  }))
  cat(sprintf("\n### EMT leave-one-time-point-out, exact W1 (weighted for the unbalanced flow; seeds %s; %d steps)\n\n",
              paste(emt_seeds, collapse = ","), emt_steps))
  cat(sprintf("cells per time: %s\n\n", paste(names(table(emt$time)), table(emt$time), sep = ":", collapse = " ")))
  md_table(tab)
}

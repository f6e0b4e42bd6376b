# EMT time course, leave one intermediate time point out: popflow vs TorchCFM's OT-CFM.
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/emt_holdout.R
#
# For each held-out time k in {1, 2}: train on the other snapshots (time labels kept as they
# are, so the held-out interval is twice as long), move the cells of time k-1 from k-1 to k
# with dopri5 (atol = rtol = 1e-5) and report exact W1 (Euclidean cost, all 10 dimensions)
# to the real cells of time k. Several seeds; mean ± sd.
# Rows: popflow I-CFM, OT-CFM, SB-CFM (default network: MLP 64 x 3, SELU, sinusoidal time
# embedding of size 16), popflow OT-CFM with raw t as input (time_dim = 0: the same input layer
# as the peer's MLP), the "no change" baseline (the cells of time k-1 themselves), the "mean
# shift" baseline (those cells moved by the change of the training mean, interpolated at k; the
# two are evaluateFlow()'s fair baselines), the noise floor (two random halves of the held-out
# cells, one against the other, one split per seed: W1 between samples of one population is not
# 0; noise_floor_w1() in common.R; the log adds the floor at n/8 and n/4 cells), and the peer,
# TorchCFM's ExactOptimalTransportConditionalFlowMatcher (and its ConditionalFlowMatcher) with an
# MLP of the same size on [x, t] (bench/emt_holdout_torchcfm.py), same batch per interval,
# steps, lr and sigma. Both W1s are exact (popflow: LEMON network simplex; peer: POT ot.emd2);
# the no-change row is computed by both as a cross-check.
#
# Settings (environment): EMT_STEPS (2000), EMT_SEEDS (1,2,3), EMT_HOLDOUT (1,2),
# EMT_BATCH (256), EMT_SIGMA (0.1), EMT_LR (0.001), EMT_PARALLEL (1: the peer runs in a
# second process beside popflow; each uses one thread), EMT_METHODS (popflow rows:
# icfm,otcfm,sbcfm,otcfm_rawt), EMT_PEER_METHODS (otcfm,icfm).
# Writes bench/results/emt_holdout_runs.csv and emt_holdout.csv.
# Cost: popflow's SB-CFM step (log-domain Sinkhorn, reg = 2 sigma^2 = 0.02, up to 500
# iterations) dominates; EMT_METHODS=icfm,otcfm keeps the run near 10 minutes.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

steps <- env_int("EMT_STEPS", 2000)
seeds <- env_ints("EMT_SEEDS", "1,2,3")
holdouts <- env_ints("EMT_HOLDOUT", "1,2")
batch <- env_int("EMT_BATCH", 256)
sigma <- as.numeric(Sys.getenv("EMT_SIGMA", "0.1"))
lr <- as.numeric(Sys.getenv("EMT_LR", "0.001"))
parallel_peer <- Sys.getenv("EMT_PARALLEL", "1") == "1"
methods <- strsplit(Sys.getenv("EMT_METHODS", "icfm,otcfm,sbcfm,otcfm_rawt"), ",")[[1]]
peer_methods <- Sys.getenv("EMT_PEER_METHODS", "otcfm,icfm")
solver <- SolverParam("dopri5", atol = 1e-5, rtol = 1e-5)

emt <- read_emt()
cat(sprintf("EMT: %d cells x %d features; cells per time: %s\n", nrow(emt$x), ncol(emt$x),
            paste(names(table(emt$time)), table(emt$time), sep = ":", collapse = " ")))
cat(sprintf("steps %d, batch %d per interval, lr %g, sigma %g, seeds %s; %s\n", steps, batch, lr,
            sigma, paste(seeds, collapse = ","), versions_line()))

# ---- the peer, started first (in the background when EMT_PARALLEL=1) ----
peer_csv <- file.path(tempdir(), "emt_holdout_torchcfm.csv")
peer_log <- file.path(tempdir(), "emt_holdout_torchcfm.log")
peer_status_file <- file.path(tempdir(), "emt_holdout_torchcfm.status")
peer_args <- c("--holdout", paste(holdouts, collapse = ","), "--seeds", paste(seeds, collapse = ","),
               "--methods", peer_methods, "--steps", steps, "--batch", batch,
               "--lr", lr, "--sigma", sigma, "--width", 64, "--depth", 3, "--solver", "dopri5",
               "--atol", 1e-5, "--rtol", 1e-5, "--threads", 1, "--out", shQuote(peer_csv))
peer_cmd <- sprintf("%s %s %s > %s 2>&1; echo $? > %s", shQuote(PEER_PYTHON),
                    shQuote(file.path(BENCH, "emt_holdout_torchcfm.py")), paste(peer_args, collapse = " "),
                    shQuote(peer_log), shQuote(peer_status_file))
unlink(c(peer_csv, peer_status_file))
if (file.exists(PEER_PYTHON)) {
  system2("sh", c("-c", shQuote(peer_cmd)), wait = !parallel_peer)
} else {
  message("SKIP: no Python at ", PEER_PYTHON, " (set PEER_PYTHON); the TorchCFM peer is skipped")
}

# ---- popflow ----
all_variants <- list(
  icfm = list(label = "popflow I-CFM", method = ICFMParam(sigma = sigma), network = NetworkParam()),
  otcfm = list(label = "popflow OT-CFM", method = OTCFMParam(sigma = sigma), network = NetworkParam()),
  sbcfm = list(label = "popflow SB-CFM", method = SBCFMParam(sigma = sigma), network = NetworkParam()),
  otcfm_rawt = list(label = "popflow OT-CFM, raw t (time_dim = 0)", method = OTCFMParam(sigma = sigma),
                    network = NetworkParam(time_dim = 0))
)
variants <- all_variants[methods]
if (anyNA(names(variants))) stop("EMT_METHODS: unknown method; use ", paste(names(all_variants), collapse = ","))

runs <- list()
for (k in holdouts) {
  keep <- emt$time != k
  src <- emt$x[emt$time == k - 1, , drop = FALSE]
  real <- emt$x[emt$time == k, , drop = FALSE]
  w1 <- function(pred) wassersteinDistance(pred, real, p = 1, max_cells = 100000)
  runs[[length(runs) + 1]] <- data.frame(impl = "baseline", row = "no change (cells of time k-1)",
                                         holdout = k, seed = 0, w1 = w1(src), train_seconds = NA,
                                         final_loss = NA)
  runs[[length(runs) + 1]] <- data.frame(impl = "baseline", row = "mean shift (training means, interpolated)",
                                         holdout = k, seed = 0, w1 = w1(emt_mean_shift(emt, k)),
                                         train_seconds = NA, final_loss = NA)
  for (s in seeds) {
    runs[[length(runs) + 1]] <- data.frame(impl = "baseline", row = "noise floor (halves of the held-out cells)",
                                           holdout = k, seed = s, w1 = noise_floor_w1(real, s),
                                           train_seconds = NA, final_loss = NA)
  }
  # How the floor falls with the sample size (log only): two samples of n/8, n/4 cells.
  for (m in nrow(real) %/% c(8, 4)) {
    v <- vapply(seeds, function(s) noise_floor_w1(real, s, size = m), 0)
    cat(sprintf("noise floor at t=%d, two samples of %d cells: W1 %s\n", k, m, mean_sd(v)))
  }
  for (v in variants) {
    for (s in seeds) {
      fit <- fitFlow(emt$x[keep, ], time = emt$time[keep], method = v$method, network = v$network,
                     training = TrainingParam(steps = steps, batch_size = batch, lr = lr, seed = s),
                     threads = 1L, verbose = FALSE)
      pred <- predict(fit, src, from = k - 1, to = k, solver = solver)
      d <- w1(pred)
      cat(sprintf("%s holdout=%d seed=%d: W1=%.4f, train %.1f s\n", v$label, k, s, d, fit$seconds))
      runs[[length(runs) + 1]] <- data.frame(impl = "popflow", row = v$label, holdout = k, seed = s, w1 = d,
                                             train_seconds = fit$seconds,
                                             final_loss = mean(utils::tail(fit$loss, 50)))
      # Written after every fit: an interrupted run keeps what it finished.
      utils::write.csv(do.call(rbind, runs), file.path(RESULTS, "emt_holdout_runs.csv"), row.names = FALSE)
    }
  }
}

# ---- collect the peer ----
if (file.exists(PEER_PYTHON)) {
  while (!file.exists(peer_status_file) || !length(readLines(peer_status_file, warn = FALSE))) Sys.sleep(2)
  status <- as.integer(readLines(peer_status_file, warn = FALSE)[1])
  cat(readLines(peer_log), sep = "\n")
  if (status == 0L && file.exists(peer_csv)) {
    p <- utils::read.csv(peer_csv)
    label <- ifelse(p$impl == "POT", "no change (cells of time k-1), W1 by POT",
                    paste("TorchCFM", c(otcfm = "OT-CFM", icfm = "I-CFM", sbcfm = "SB-CFM")[p$method]))
    runs[[length(runs) + 1]] <- data.frame(impl = ifelse(p$impl == "POT", "baseline", "TorchCFM"), row = label,
                                           holdout = p$holdout, seed = p$seed, w1 = p$w1,
                                           train_seconds = ifelse(p$impl == "POT", NA, p$train_seconds),
                                           final_loss = p$final_loss)
  } else if (status == 77L) {
    message("SKIP: TorchCFM peer not available; its rows are omitted (see ", peer_log, ")")
  } else {
    stop("the TorchCFM peer failed with status ", status, "; see ", peer_log)
  }
}

runs <- do.call(rbind, runs)
utils::write.csv(runs, file.path(RESULTS, "emt_holdout_runs.csv"), row.names = FALSE)

order <- unique(runs$row)
tab <- data.frame(method = order, stringsAsFactors = FALSE)
for (k in holdouts) {
  tab[[sprintf("W1, t=%d held out", k)]] <- vapply(order, function(r) mean_sd(runs$w1[runs$row == r & runs$holdout == k]), "")
}
tab[["train s / fit"]] <- vapply(order, function(r) {
  v <- runs$train_seconds[runs$row == r]
  if (all(is.na(v))) "-" else sprintf("%.1f", mean(v, na.rm = TRUE))
}, "")
utils::write.csv(tab, file.path(RESULTS, "emt_holdout.csv"), row.names = FALSE)
cat(sprintf("\n### EMT leave-one-time-point-out: exact W1 to the held-out cells (mean ± sd over seeds %s; %d steps)\n\n",
            paste(seeds, collapse = ","), steps))
md_table(tab)

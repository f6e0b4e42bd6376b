# Training throughput and peak memory: popflow vs a TorchCFM + PyTorch training loop.
#
#   R_LIBS=/tmp/rlib Rscript bench/throughput.R
#
# Same synthetic 10-d data (4096 source cells N(0, I), 4096 target cells from a two-component
# Gaussian mixture), same network (MLP with `depth` hidden layers of `width`, SELU, input
# [x, t]), same batch (cells per side), Adam lr 1e-3, sigma 0.1, one interval.
# Methods: I-CFM and exact OT-CFM (both draw pairs from the exact minibatch plan: popflow's
# LEMON network simplex vs TorchCFM's POT ot.emd). One thread on both sides
# (OMP_NUM_THREADS=1, OMP_WAIT_POLICY=passive; popflow threads = 1L, torch.set_num_threads(1)).
# Every configuration runs in its own process under `/usr/bin/time -v`, the two
# implementations back to back, so peak RSS ("Maximum resident set size") is per
# configuration. steps/s excludes start-up: popflow = steps / fit$seconds after a 10-step
# warm-up fit in the same process; TorchCFM = time around the loop after 10 warm-up steps.
# The "idle" row is the RSS of a process that only loads the library (R + popflow, or
# Python + torch + POT + torchcfm).
#
# Settings (environment): TP_WIDTHS (64,256), TP_BATCHES (256,1024), TP_METHODS (icfm,otcfm),
# TP_DEPTH (3), TP_STEPS_ICFM (3000), TP_STEPS_OT256 (300), TP_STEPS_OT1024 (30) (an exact OT
# step costs ~50x an I-CFM step, so OT runs fewer steps), TP_REPS (1: repeats; the table shows
# the median steps/s and the max RSS over repeats). R_LIBS must name popflow's library.
# "ratio, CPU time": the same ratio from each process's CPU time over the timed
# steps (one thread), which other work on the machine distorts far less than wall time.
# Writes bench/results/throughput_runs.csv and throughput.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

widths <- env_ints("TP_WIDTHS", "64,256")
batches <- env_ints("TP_BATCHES", "256,1024")
methods <- strsplit(Sys.getenv("TP_METHODS", "icfm,otcfm"), ",")[[1]]
depth <- env_int("TP_DEPTH", 3)
reps <- env_int("TP_REPS", 1)
steps_for <- function(method, batch) {
  if (method == "icfm") return(env_int("TP_STEPS_ICFM", 3000))
  if (batch <= 256) return(env_int("TP_STEPS_OT256", 300))
  if (batch >= 1024) return(env_int("TP_STEPS_OT1024", 30))
  max(10L, as.integer(env_int("TP_STEPS_OT256", 300) * (256 / batch)^2))
}
time_bin <- Sys.getenv("GNU_TIME", "/usr/bin/time")
if (!file.exists(time_bin)) stop("GNU time not found at ", time_bin, " (apt-get install -y time)")

# ---- the shared data ----
data_file <- file.path(tempdir(), "throughput_data.csv")
set.seed(0)
n <- 4096
dim <- 10
x0 <- matrix(stats::rnorm(n * dim), n, dim)
centre <- c(3, 1, rep(0, dim - 2))
sgn <- ifelse(stats::runif(n) < 0.5, -1, 1)
x1 <- 0.5 * matrix(stats::rnorm(n * dim), n, dim) + outer(sgn, centre)
d <- data.frame(side = rep(0:1, each = n), rbind(x0, x1))
names(d) <- c("side", paste0("x", seq_len(dim)))
utils::write.csv(d, data_file, row.names = FALSE)

env <- c("OMP_NUM_THREADS=1", "OMP_WAIT_POLICY=passive", "MKL_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1")
run_measured <- function(cmd, args) {
  out <- system2("env", c(env, time_bin, "-v", cmd, args), stdout = TRUE, stderr = TRUE)
  status <- attr(out, "status")
  res <- grep("^RESULT ", out, value = TRUE)
  rss <- grep("Maximum resident set size", out, value = TRUE)
  list(ok = is.null(status) || status == 0L, status = status %||% 0L, out = out,
       result = if (length(res)) sub("^RESULT ", "", res[length(res)]) else NA_character_,
       rss_mb = if (length(rss)) as.numeric(sub(".*: *", "", rss[1])) / 1024 else NA_real_)
}
`%||%` <- function(a, b) if (is.null(a)) b else a
rscript <- file.path(R.home("bin"), "Rscript")

rows <- list()
add <- function(impl, method, width, batch, steps, rep, steps_per_s, seconds, rss_mb, cpu_seconds = NA) {
  rows[[length(rows) + 1]] <<- data.frame(impl = impl, method = method, width = width, depth = depth,
                                          batch = batch, steps = steps, rep = rep, seconds = seconds,
                                          steps_per_s = steps_per_s, peak_rss_mb = rss_mb,
                                          cpu_steps_per_s = steps / cpu_seconds)
}

# Idle (start-up) memory of each side.
r <- run_measured(rscript, c("-e", shQuote("suppressPackageStartupMessages(library(popflow)); cat('RESULT idle\\n')")))
add("popflow", "idle", NA, NA, NA, 1, NA, NA, r$rss_mb)
peer_ok <- file.exists(PEER_PYTHON)
if (peer_ok) {
  r <- run_measured(PEER_PYTHON, c(shQuote(file.path(BENCH, "throughput_torchcfm.py")), "--idle"))
  if (r$status == 77L || !r$ok) {
    message("SKIP: TorchCFM peer not available; its rows are omitted:\n", paste(r$out, collapse = "\n"))
    peer_ok <- FALSE
  } else {
    add("TorchCFM", "idle", NA, NA, NA, 1, NA, NA, r$rss_mb)
  }
} else {
  message("SKIP: no Python at ", PEER_PYTHON, "; the TorchCFM peer is skipped")
}

for (method in methods) for (width in widths) for (batch in batches) for (rep in seq_len(reps)) {
  steps <- steps_for(method, batch)
  r <- run_measured(rscript, c(shQuote(file.path(BENCH, "throughput_popflow.R")), shQuote(data_file),
                               method, width, depth, batch, steps))
  if (!r$ok || is.na(r$result)) stop("popflow run failed:\n", paste(r$out, collapse = "\n"))
  f <- strsplit(r$result, ",")[[1]]
  add("popflow", method, width, batch, steps, rep, as.numeric(f[9]), as.numeric(f[8]), r$rss_mb, as.numeric(f[11]))
  cat(sprintf("popflow  %-5s w=%-3d b=%-4d: %8.1f steps/s, peak RSS %.0f MB\n", method, width, batch,
              as.numeric(f[9]), r$rss_mb))
  if (peer_ok) {
    r <- run_measured(PEER_PYTHON, c(shQuote(file.path(BENCH, "throughput_torchcfm.py")), "--data",
                                     shQuote(data_file), "--method", method, "--width", width, "--depth", depth,
                                     "--batch", batch, "--steps", steps, "--warmup", 10, "--threads", 1))
    if (!r$ok || is.na(r$result)) stop("TorchCFM run failed:\n", paste(r$out, collapse = "\n"))
    j <- r$result
    sps <- as.numeric(sub('.*"steps_per_s": ([0-9.eE+-]+).*', "\\1", j))
    secs <- as.numeric(sub('.*"seconds": ([0-9.eE+-]+).*', "\\1", j))
    cpu <- as.numeric(sub('.*"cpu_seconds": ([0-9.eE+-]+).*', "\\1", j))
    add("TorchCFM", method, width, batch, steps, rep, sps, secs, r$rss_mb, cpu)
    cat(sprintf("TorchCFM %-5s w=%-3d b=%-4d: %8.1f steps/s, peak RSS %.0f MB\n", method, width, batch, sps, r$rss_mb))
  }
}

runs <- do.call(rbind, rows)
runs$depth[runs$method == "idle"] <- NA
utils::write.csv(runs, file.path(RESULTS, "throughput_runs.csv"), row.names = FALSE)

cfg <- unique(runs[runs$method != "idle", c("method", "width", "batch", "steps")])
tab <- do.call(rbind, lapply(seq_len(nrow(cfg)), function(i) {
  sel <- function(impl) runs$impl == impl & runs$method == cfg$method[i] & runs$width == cfg$width[i] &
    runs$batch == cfg$batch[i] & !is.na(runs$width)
  p <- runs[sel("popflow"), ]
  q <- runs[sel("TorchCFM"), ]
  ps <- stats::median(p$steps_per_s)
  qs <- if (nrow(q)) stats::median(q$steps_per_s) else NA
  pc <- stats::median(p$cpu_steps_per_s)
  qc <- if (nrow(q)) stats::median(q$cpu_steps_per_s) else NA
  data.frame(method = c(icfm = "I-CFM", otcfm = "OT-CFM (exact)", sbcfm = "SB-CFM")[cfg$method[i]],
             width = cfg$width[i], depth = depth, batch = cfg$batch[i], steps = cfg$steps[i],
             `popflow steps/s` = sprintf("%.1f", ps),
             `TorchCFM steps/s` = if (is.na(qs)) "-" else sprintf("%.1f", qs),
             `ratio popflow/TorchCFM` = if (is.na(qs)) "-" else sprintf("%.2f", ps / qs),
             `ratio, CPU time` = if (is.na(qc)) "-" else sprintf("%.2f", pc / qc),
             `popflow peak RSS (MB)` = sprintf("%.0f", max(p$peak_rss_mb)),
             `TorchCFM peak RSS (MB)` = if (nrow(q)) sprintf("%.0f", max(q$peak_rss_mb)) else "-",
             check.names = FALSE)
}))
idle <- runs[runs$method == "idle", ]
tab <- rbind(tab, data.frame(method = "idle (library loaded, no training)", width = NA, depth = NA, batch = NA,
                             steps = NA, `popflow steps/s` = "-", `TorchCFM steps/s` = "-",
                             `ratio popflow/TorchCFM` = "-", `ratio, CPU time` = "-",
                             `popflow peak RSS (MB)` = sprintf("%.0f", idle$peak_rss_mb[idle$impl == "popflow"]),
                             `TorchCFM peak RSS (MB)` = if (any(idle$impl == "TorchCFM"))
                               sprintf("%.0f", idle$peak_rss_mb[idle$impl == "TorchCFM"]) else "-",
                             check.names = FALSE))
rownames(tab) <- NULL
tab[is.na(tab)] <- ""
utils::write.csv(tab, file.path(RESULTS, "throughput.csv"), row.names = FALSE)
cat(sprintf("\n### Training throughput, 1 thread, 10-d data (%s)\n\n", versions_line()))
md_table(tab)

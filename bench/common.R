# Shared helpers for the popflow benchmark scripts (sourced, not a package file).
#
# popflow is loaded from the library in R_LIBS (e.g. R_LIBS=/tmp/rlib); the TorchCFM peer
# scripts run with PEER_PYTHON (default /usr/bin/python3, Debian's, which has torch and POT).

bench_dir <- function() {
  args <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", args[grep("^--file=", args)])
  if (length(f)) return(normalizePath(dirname(f[1])))
  normalizePath("bench")
}

BENCH <- bench_dir()
RESULTS <- file.path(BENCH, "results")
dir.create(RESULTS, showWarnings = FALSE, recursive = TRUE)
PEER_PYTHON <- Sys.getenv("PEER_PYTHON", "/usr/bin/python3")

load_popflow <- function() {
  libs <- strsplit(Sys.getenv("R_LIBS", ""), ":", fixed = TRUE)[[1]]
  libs <- libs[nzchar(libs)]
  suppressPackageStartupMessages(library(popflow, lib.loc = c(libs, .libPaths())))
}

data_dir <- function() {
  d <- Sys.getenv("POPFLOW_BENCH_DATA", file.path(BENCH, "..", "..", "shared", "data"))
  if (!dir.exists(d)) d <- "/work/shared/data"
  normalizePath(d)
}

read_emt <- function() {
  d <- utils::read.csv(file.path(data_dir(), "emt_timecourse.csv.gz"))
  list(time = d$samples, x = as.matrix(d[, grep("^x[0-9]+$", names(d))]))
}

# Integer-valued environment setting with a default (lets the driver shrink runs for a smoke test).
env_int <- function(name, default) as.integer(Sys.getenv(name, as.character(default)))
env_ints <- function(name, default) as.integer(strsplit(Sys.getenv(name, default), ",")[[1]])

# "mean ± sd"; format = "f" gives `digits` decimals, "g" gives `digits` significant digits.
mean_sd <- function(v, digits = 4, format = "f") {
  v <- v[is.finite(v)]
  if (!length(v)) return("NA")
  if (length(v) == 1) return(formatC(v, digits = digits, format = format))
  sprintf("%s ± %s", formatC(mean(v), digits = digits, format = format),
          formatC(stats::sd(v), digits = if (format == "g") 2 else digits, format = format))
}

md_table <- function(df) {
  df[] <- lapply(df, function(col) if (is.numeric(col)) format(col, digits = 4) else as.character(col))
  cat("| ", paste(names(df), collapse = " | "), " |\n", sep = "")
  cat("|", paste(rep("---", ncol(df)), collapse = "|"), "|\n", sep = "")
  for (i in seq_len(nrow(df))) cat("| ", paste(unlist(df[i, ]), collapse = " | "), " |\n", sep = "")
  invisible(df)
}

# Run a peer (Python) script. Returns the exit status; 77 means "peer absent, skipped".
run_peer <- function(script, args, stdout = "", stderr = "") {
  if (!file.exists(PEER_PYTHON)) {
    message("SKIP: no Python at ", PEER_PYTHON, " (set PEER_PYTHON); the TorchCFM peer is skipped")
    return(77L)
  }
  status <- system2(PEER_PYTHON, c(shQuote(file.path(BENCH, script)), args), stdout = stdout, stderr = stderr)
  if (status == 77L) message("SKIP: TorchCFM peer not available; its rows are omitted")
  status
}

versions_line <- function() {
  sprintf("R %s, popflow %s (LibTorch %s)", getRversion(), utils::packageVersion("popflow"),
          tryCatch(popflow:::pf_torch_version(), error = function(e) "?"))
}

# The 2-d generative example of bench/diffusion_steps.R and bench/reflow_steps.R: eight Gaussians
# (sd 0.4) on a circle of radius 4, each point's component drawn uniformly.
eight_gaussians <- function(n, seed) {
  set.seed(seed)
  k <- sample.int(8, n, replace = TRUE)
  angle <- 2 * pi * k / 8
  cbind(4 * cos(angle), 4 * sin(angle)) + matrix(rnorm(2 * n, sd = 0.4), n, 2)
}

# The "mean shift" baseline of a held-out EMT time k (evaluateFlow()'s, for a flow): the cells of
# time k-1 moved by the change of the training mean from k-1 to k, linearly interpolated between
# the training snapshots k-1 and k+1 (time k is not seen).
emt_mean_shift <- function(emt, k) {
  src <- emt$x[emt$time == k - 1, , drop = FALSE]
  shift <- (colMeans(emt$x[emt$time == k + 1, , drop = FALSE]) - colMeans(src)) / 2
  sweep(src, 2, shift, "+")
}

# The noise floor of exact W1 at a held-out time point: W1 between two random halves of its real
# cells (halves drawn with set.seed(seed)). W1 between two samples of one population is not 0;
# it shrinks as the samples grow, so half-size samples overstate the floor at the full sample
# size. `size` instead compares two disjoint random samples of `size` cells each (to see how
# fast the floor falls with the sample size).
noise_floor_w1 <- function(real, seed, size = NULL) {
  set.seed(seed)
  n <- nrow(real)
  if (is.null(size)) {
    a <- sort(sample.int(n, n %/% 2))
    b <- setdiff(seq_len(n), a)
  } else {
    i <- sample.int(n, 2 * size)
    a <- i[seq_len(size)]
    b <- i[-seq_len(size)]
  }
  popflow::wassersteinDistance(real[a, , drop = FALSE], real[b, , drop = FALSE], p = 1, max_cells = 100000)
}

# Exact W2 of whole samples (no subsampling up to 100,000 cells).
w2 <- function(a, b) popflow::wassersteinDistance(a, b, p = 2, max_cells = 100000)

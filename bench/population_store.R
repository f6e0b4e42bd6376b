# Population stores: MFM training from a store against the same cells in
# memory (steps/s, peak RSS), and against the number of populations with the
# graph cache on. Synthetic cells: population p's source cells N(mu_p, I) in
# 50 dimensions, its targets the sources shifted by mu_p; written block by
# block from a matrix-like object that makes its rows on demand (the input is
# never dense as a whole).
#
#   R_LIBS=/work/lib-store Rscript bench/population_store.R
#
# Environment: STORE_DIR (where the stores go; default tempdir(), deleted
# afterwards), BENCH_CELLS (default 2e7), BENCH_POPULATIONS (2e4),
# BENCH_MEMORY_CELLS (largest in-memory comparison, default 2e6), BENCH_STEPS
# (150), BENCH_SWEEP (populations of the sweep, default 100,1000,10000,100000).
# Each fit runs in a fresh R process so that its peak RSS (VmHWM) is its own.
# read_ms_per_step: the engine's time in pread() per step (mostly on the
# prefetch thread, overlapping the step), from fit$store_stats.
# Results: bench/results/population_store.csv and .log.

source(file.path(local({
  a <- commandArgs(FALSE)
  f <- sub("^--file=", "", a[grep("^--file=", a)])
  if (length(f)) dirname(f[1]) else "bench"
}), "common.R"))

DIM <- 50L

# A cells x DIM matrix-like object whose rows are made on demand: rows of
# population p (block-sized runs) are N(mu_p, I) (+ mu_p for targets).
synthetic <- function(n_pop, per_pop, shift) structure(list(n_pop = n_pop, per_pop = per_pop, shift = shift), class = "synthetic_cells")
dim.synthetic_cells <- function(x) c(x$n_pop * x$per_pop, DIM)
dimnames.synthetic_cells <- function(x) NULL
`[.synthetic_cells` <- function(x, i, j, drop = FALSE) {
  pop <- (i - 1) %/% x$per_pop + 1
  set.seed(i[1])
  mu <- sin(outer(pop, seq_len(DIM)))  # a population's mean, from its number
  matrix(stats::rnorm(length(i) * DIM), length(i)) + (1 + x$shift) * mu
}

write_synthetic <- function(path, n_cells, n_pop) {
  per_pop <- n_cells %/% (2 * n_pop)
  pop <- rep(sprintf("p%06d", seq_len(n_pop)), each = per_pop)
  t0 <- proc.time()[["elapsed"]]
  writePopulationStore(synthetic(n_pop, per_pop, 0), path, target = synthetic(n_pop, per_pop, 1),
                       population = c(pop, pop), chunk_rows = 200000L, overwrite = TRUE)
  proc.time()[["elapsed"]] - t0
}

peak_rss_mb <- function() {
  s <- readLines("/proc/self/status")
  as.numeric(sub("[^0-9]*([0-9]+).*", "\\1", s[grep("^VmHWM", s)])) / 1024
}

# One fit in this process (called as `Rscript population_store.R fit <json-ish args>`).
fit_once <- function(source, steps, path = NULL, n_cells = 0, n_pop = 0) {
  method <- MFMParam()  # the defaults: 10 populations a step, 700 cells each, GCN with k = 50, 1 GiB graph cache
  training <- TrainingParam(steps = steps, seed = 1)
  if (source == "store") {
    store <- PopulationStore(path)
    fit <- fitFlow(store, method = method, training = training, verbose = FALSE)
  } else {
    per_pop <- n_cells %/% (2 * n_pop)
    x <- synthetic(n_pop, per_pop, 0)[seq_len(n_cells / 2), ]
    target <- synthetic(n_pop, per_pop, 1)[seq_len(n_cells / 2), ]
    pop <- rep(sprintf("p%06d", seq_len(n_pop)), each = per_pop)
    fit <- fitFlow(x, target, population = c(pop, pop), method = method, training = training, verbose = FALSE)
  }
  st <- fit$store_stats
  if (is.null(st)) st <- c(graphs_built = NA, evictions = NA, cache_peak_bytes = NA, read_seconds = NA, read_bytes = NA)
  cat(sprintf("RESULT %s %.4f %.1f %.3f %.0f %.0f %.1f %.1f\n", source, fit$steps_done / fit$seconds, peak_rss_mb(),
              1000 * st[["read_seconds"]] / fit$steps_done, st[["graphs_built"]], st[["evictions"]],
              st[["cache_peak_bytes"]] / 2^20, st[["read_bytes"]] / fit$steps_done / 2^20))
}

args <- commandArgs(trailingOnly = TRUE)
load_popflow()
if (length(args) && args[1] == "fit") {
  fit_once(args[2], as.integer(args[3]), if (args[4] != "-") args[4], as.numeric(args[5]), as.numeric(args[6]))
  quit(save = "no")
}

store_dir <- Sys.getenv("STORE_DIR", tempdir())
n_cells <- as.numeric(Sys.getenv("BENCH_CELLS", "2e7"))
n_pop <- as.numeric(Sys.getenv("BENCH_POPULATIONS", "2e4"))
mem_cells <- as.numeric(Sys.getenv("BENCH_MEMORY_CELLS", "2e6"))
steps <- env_int("BENCH_STEPS", 150)
sweep <- as.numeric(strsplit(Sys.getenv("BENCH_SWEEP", "100,1000,10000,100000"), ",")[[1]])
script <- normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1]))
log_file <- file.path(RESULTS, "population_store.log")
say <- function(...) {
  line <- sprintf(...)
  cat(line, "\n")
  cat(line, "\n", file = log_file, append = TRUE)
}
cat("", file = log_file)
say("population store bench, %s; machine shared with other compiles: timings are indicative", format(Sys.time()))

run_fit <- function(source, path, cells, pops) {
  out <- system2(file.path(R.home("bin"), "Rscript"), c(script, "fit", source, steps, if (is.null(path)) "-" else path,
                                                         format(cells, scientific = FALSE), format(pops, scientific = FALSE)),
                 stdout = TRUE, stderr = TRUE)
  res <- grep("^RESULT", out, value = TRUE)
  if (!length(res)) stop(paste(out, collapse = "\n"))
  v <- strsplit(res, " ")[[1]]
  v[v == "NA"] <- NA  # the in-memory fit has no store statistics
  data.frame(source = source, cells = cells, populations = pops, steps = steps, steps_per_s = as.numeric(v[3]),
             peak_rss_mb = as.numeric(v[4]), read_ms_per_step = as.numeric(v[5]), graphs_built = as.numeric(v[6]),
             evictions = as.numeric(v[7]), graph_cache_peak_mb = as.numeric(v[8]), read_mb_per_step = as.numeric(v[9]))
}

rows <- list()
# 1. Store against memory at the in-memory size, then the store at full size.
mem_pops <- n_pop * mem_cells / n_cells
small <- file.path(store_dir, "bench_small.pfstore")
say("write %g cells in %g populations: %.1f s", mem_cells, mem_pops, write_synthetic(small, mem_cells, mem_pops))
rows[[length(rows) + 1]] <- run_fit("memory", NULL, mem_cells, mem_pops)
rows[[length(rows) + 1]] <- run_fit("store", small, mem_cells, mem_pops)
unlink(small)
big <- file.path(store_dir, "bench_big.pfstore")
say("write %g cells in %g populations: %.1f s", n_cells, n_pop, write_synthetic(big, n_cells, n_pop))
say("store file: %.2f GB", file.size(big) / 1e9)
rows[[length(rows) + 1]] <- run_fit("store", big, n_cells, n_pop)
unlink(big)
# 2. Populations 10^2 .. 10^5 (100 cells each: 50 source, 50 target), graph cache on (1 GiB).
for (p in sweep) {
  f <- file.path(store_dir, sprintf("bench_sweep_%g.pfstore", p))
  say("write %g cells in %g populations: %.1f s", 100 * p, p, write_synthetic(f, 100 * p, p))
  r <- run_fit("store", f, 100 * p, p)
  r$source <- "store (sweep)"
  rows[[length(rows) + 1]] <- r
  unlink(f)
}
res <- do.call(rbind, rows)
utils::write.csv(res, file.path(RESULTS, "population_store.csv"), row.names = FALSE)
say("%s", paste(utils::capture.output(print(res, row.names = FALSE)), collapse = "\n"))

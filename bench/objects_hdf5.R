# fitFlow() on a SingleCellExperiment whose logcounts and PCA live in an HDF5 file:
# peak memory against the size of the assay realised in memory.
#
#   R_LIBS=/path/to/lib Rscript bench/objects_hdf5.R
#   OBJ_CELLS (default 100000), OBJ_GENES (2000), OBJ_STEPS (200) shrink or grow it.
# Writes bench/results/objects_hdf5.csv and .log. The file is written first by a
# separate R process, block by block, so that the measuring process never
# holds the matrix; each measurement runs in a fresh process of its own (peak
# RSS from /proc/self/status, VmHWM).
source(file.path(local({
  args <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", args[grep("^--file=", args)])
  if (length(f)) dirname(f[1]) else "bench"
}), "common.R"))

cells <- env_int("OBJ_CELLS", 100000)
genes <- env_int("OBJ_GENES", 2000)
steps <- env_int("OBJ_STEPS", 200)
pcs <- 50L
file <- file.path(tempdir(), "objects_hdf5.h5")
libs <- c(strsplit(Sys.getenv("R_LIBS", ""), ":", fixed = TRUE)[[1]], .libPaths())
libs <- libs[nzchar(libs)]

write_file <- function(file, cells, genes, pcs) {
  suppressPackageStartupMessages(library(HDF5Array))
  set.seed(1)
  # logcounts: genes x cells; the first 10 genes respond to the stimulation (second half of the cells).
  sink <- HDF5RealizationSink(c(genes, cells), type = "double", filepath = file, name = "logcounts")
  grid <- colAutoGrid(sink, ncol = min(cells, 5000L))
  for (b in seq_along(grid)) {
    vp <- grid[[b]]
    at <- start(vp)[2]:end(vp)[2]
    block <- matrix(stats::rnorm(genes * length(at), mean = 2, sd = 0.5), genes)
    block[1:10, at > cells / 2] <- block[1:10, at > cells / 2] + 1
    write_block(sink, vp, block)
  }
  close(sink)
  pca <- HDF5RealizationSink(c(cells, pcs), type = "double", filepath = file, name = "pca")
  grid <- rowAutoGrid(pca, nrow = min(cells, 20000L))
  for (b in seq_along(grid)) {
    vp <- grid[[b]]
    at <- start(vp)[1]:end(vp)[1]
    block <- matrix(stats::rnorm(length(at) * pcs), length(at))
    block[at > cells / 2, 1] <- block[at > cells / 2, 1] + 2
    write_block(pca, vp, block)
  }
  close(pca)
  invisible()
}

measure <- function(file, cells, what, steps) {
  suppressPackageStartupMessages({
    library(popflow)
    library(HDF5Array)
    library(SingleCellExperiment)
  })
  hwm <- function() as.numeric(sub("[^0-9]*([0-9]+).*", "\\1", grep("^VmHWM", readLines("/proc/self/status"),
                                                                       value = TRUE))) / 1024
  sce <- SingleCellExperiment(assays = list(logcounts = HDF5Array(file, "logcounts")),
                              reducedDims = list(PCA = HDF5Array(file, "pca")))
  colnames(sce) <- sprintf("cell%07d", seq_len(cells))
  rownames(sce) <- sprintf("gene%05d", seq_len(nrow(sce)))
  sce$condition <- rep(c("ctrl", "stim"), each = cells / 2)
  before <- hwm()
  t0 <- Sys.time()
  args <- list(sce, condition = "condition", source = "ctrl", target = "stim", method = "icfm",
               training = TrainingParam(steps = steps, seed = 1), verbose = FALSE)
  if (what == "assay") args <- c(args, list(assay = "logcounts", features = rownames(sce)[1:20]))
  if (what == "space") args <- c(args, list(space = "PCA"))
  fit <- do.call(fitFlow, args)
  list(what = what, seconds = as.numeric(difftime(Sys.time(), t0, units = "secs")), rss_before_mb = before,
       peak_rss_mb = hwm(), steps = fit$steps_done)
}

log <- file.path(RESULTS, "objects_hdf5.log")
sink(log, split = TRUE)
cat(sprintf("%s: %d cells x %d genes (HDF5, %.0f MB realised as doubles), PCA %d; %d I-CFM steps\n",
            format(Sys.time()), cells, genes, 8 * cells * genes / 2^20, pcs, steps))
t0 <- Sys.time()
invisible(callr::r(write_file, list(file, cells, genes, pcs), libpath = libs))
cat(sprintf("file written in %.0f s: %.0f MB on disk\n", as.numeric(difftime(Sys.time(), t0, units = "secs")),
            file.size(file) / 2^20))
rows <- lapply(c("assay", "space"), function(what) {
  r <- callr::r(measure, list(file, cells, what, steps), libpath = libs,
                env = c(callr::rcmd_safe_env(), OMP_WAIT_POLICY = "passive"))
  cat(sprintf("%s: fit in %.1f s, peak RSS %.0f MB (%.0f MB before fitting)\n", what, r$seconds, r$peak_rss_mb,
              r$rss_before_mb))
  as.data.frame(r)
})
out <- do.call(rbind, rows)
out$cells <- cells
out$genes <- genes
out$assay_dense_mb <- 8 * cells * genes / 2^20
utils::write.csv(out, file.path(RESULTS, "objects_hdf5.csv"), row.names = FALSE)
sink()
unlink(file)

# SingleCellExperiments whose assay and reducedDim live on disk (HDF5Array)
# or in a sparse dgCMatrix: popflow reads only the cells and features it
# needs, block by block, and gives what the in-memory object gives. Every
# HDF5 read goes through HDF5Array's h5mread(), which the tests trace to see
# what was read.

# The toy object with 100 padding genes (never read: no loading, no feature)
# in memory, and the same object with its assay and PCA written to HDF5.
toy_h5_pair <- function() {
  sce <- toy_sce()
  expr <- SummarizedExperiment::assay(sce, "logcounts")
  pad <- matrix(seq_len(100 * ncol(expr)) %% 7 / 7, 100, ncol(expr),
                dimnames = list(sprintf("pad%03d", 1:100), colnames(expr)))
  pca <- SingleCellExperiment::reducedDim(sce, "PCA")
  mem <- SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = rbind(expr, pad)),
                                                    colData = SummarizedExperiment::colData(sce),
                                                    reducedDims = list(PCA = pca))
  file <- tempfile(fileext = ".h5")
  h5 <- mem
  SummarizedExperiment::assay(h5, "logcounts") <- HDF5Array::writeHDF5Array(
    SummarizedExperiment::assay(mem, "logcounts"), file, "logcounts", with.dimnames = TRUE)
  h5_pca <- HDF5Array::writeHDF5Array(pca[, ], file, "pca", with.dimnames = TRUE)
  attr(h5_pca, "rotation") <- attr(pca, "rotation")
  SingleCellExperiment::reducedDim(h5, "PCA") <- h5_pca
  list(mem = mem, h5 = h5)
}

# `expr`'s value and every h5mread() call made while evaluating it: the
# dataset and the rows and columns asked for (NULL: the whole dimension).
h5_reads <- function(expr) {
  log <- new.env()
  log$reads <- list()
  record <- function(name, starts) log$reads[[length(log$reads) + 1L]] <- list(name = name, starts = starts)
  tracer <- substitute(RECORD(name, starts), list(RECORD = record))
  suppressMessages(trace("h5mread", tracer = tracer, print = FALSE, where = asNamespace("HDF5Array")))
  on.exit(suppressMessages(untrace("h5mread", where = asNamespace("HDF5Array"))))
  value <- expr
  list(value = value, reads = log$reads)
}

# What the reads of one dataset (of dimensions `dims`) touched. A call that
# asks for no element is no read: newer DelayedArrays check their validity by
# extracting an empty array (every index integer(0)).
touched <- function(reads, dataset, dims) {
  empty <- function(r) any(vapply(r$starts, function(s) !is.null(s) && length(s) == 0L, logical(1)))
  reads <- Filter(function(r) identical(sub("^/", "", r$name), dataset) && !empty(r), reads)
  index <- function(r, k) if (is.null(r$starts) || is.null(r$starts[[k]])) seq_len(dims[k]) else r$starts[[k]]
  list(calls = length(reads),
       rows = sort(unique(unlist(lapply(reads, index, 1)))), cols = sort(unique(unlist(lapply(reads, index, 2)))),
       largest = max(0, vapply(reads, function(r) length(index(r, 1)) * length(index(r, 2)), numeric(1))))
}

# Sets DelayedArray's block size (bytes), which popflow's reads follow; returns the old one.
small_blocks <- function(bytes) {
  old <- DelayedArray::getAutoBlockSize()
  suppressMessages(DelayedArray::setAutoBlockSize(bytes))
  invisible(old)
}

test_that("an MFM on an HDF5-backed object reads only the fitted cells and loading genes, in blocks, and equals the in-memory fit", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("HDF5Array")
  pair <- toy_h5_pair()
  n <- ncol(pair$mem)
  train <- pair$mem$patient != "P3"
  old <- small_blocks(800)  # 100 doubles a block: many blocks even on the toy data
  on.exit(small_blocks(old), add = TRUE)
  fit_on <- function(x) {
    fitFlow(x, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
            population = c("patient", "cell_type"), cells = train, method = toy_mfm(), training = toy_training(),
            verbose = FALSE)
  }
  fit_mem <- fit_on(pair$mem)
  run <- h5_reads(fit_on(pair$h5))
  fit_h5 <- run$value
  expect_equal(fit_h5$loss, fit_mem$loss)
  expect_equal(fit_h5$cell_object, fit_mem$cell_object, tolerance = 1e-12)
  expect_false(is.null(fit_h5$cell_object$expression))
  # The PCA: exactly the fitted cells. The assay: the 6 loading genes of the fitted cells, never a padding gene.
  pca <- touched(run$reads, "pca", c(n, 4))
  expr <- touched(run$reads, "logcounts", c(106, n))
  expect_equal(pca$rows, which(train))
  expect_equal(expr$rows, 1:6)
  expect_equal(expr$cols, which(train))
  expect_gt(pca$calls, 1)
  expect_gt(expr$calls, 1)
  expect_lte(max(pca$largest, expr$largest), 100)

  # predict(), evaluateFlow(), embedPopulations() and combinePrediction() on the held-out patient.
  held_mem <- pair$mem[, !train]
  held_h5 <- pair$h5[, !train]
  pred_mem <- predict(fit_mem, held_mem, solver = toy_solver)
  run <- h5_reads(predict(fit_h5, held_h5, solver = toy_solver))
  expect_equal(SingleCellExperiment::reducedDim(run$value, "PCA"), SingleCellExperiment::reducedDim(pred_mem, "PCA"))
  expect_equal(SummarizedExperiment::assay(run$value, "logcounts"), SummarizedExperiment::assay(pred_mem, "logcounts"))
  expect_equal(touched(run$reads, "pca", c(n, 4))$rows, which(!train & pair$mem$condition == "ctrl"))
  expect_equal(touched(run$reads, "logcounts", c(106, n))$calls, 0)

  run <- h5_reads(evaluateFlow(fit_h5, held_h5, solver = toy_solver))
  expect_equal(run$value, evaluateFlow(fit_mem, held_mem, solver = toy_solver))
  expect_equal(touched(run$reads, "pca", c(n, 4))$rows, which(!train))
  expr <- touched(run$reads, "logcounts", c(106, n))
  expect_equal(expr$rows, 1:6)
  expect_equal(expr$cols, which(!train))

  expect_equal(embedPopulations(fit_h5, held_h5), embedPopulations(fit_mem, held_mem))

  both_mem <- suppressMessages(combinePrediction(held_mem, pred_mem))
  run <- h5_reads(suppressMessages(combinePrediction(held_h5, pred_mem)))
  both_h5 <- run$value
  expect_s4_class(SummarizedExperiment::assay(both_h5, "logcounts"), "DelayedMatrix")  # still on disk
  expect_equal(touched(run$reads, "logcounts", c(106, n))$calls, 0)
  expect_equal(as.matrix(SummarizedExperiment::assay(both_h5, "logcounts")),
               SummarizedExperiment::assay(both_mem, "logcounts"))
  expect_equal(SingleCellExperiment::reducedDim(both_h5, "PCA"), SingleCellExperiment::reducedDim(both_mem, "PCA"))
  expect_equal(SummarizedExperiment::colData(both_h5), SummarizedExperiment::colData(both_mem))
})

test_that("features of an HDF5 or sparse assay are read alone, and fit as the dense assay does", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("HDF5Array")
  pair <- toy_h5_pair()
  n <- ncol(pair$mem)
  train <- pair$mem$patient != "P3"
  old <- small_blocks(800)
  on.exit(small_blocks(old), add = TRUE)
  genes <- c("g5", "g1", "g2")
  fit_on <- function(x, ...) {
    fitFlow(x, assay = "logcounts", features = genes, condition = "condition", source = "ctrl", target = "stim",
            method = "icfm", training = toy_training(), verbose = FALSE, ...)
  }
  fit_mem <- fit_on(pair$mem, cells = train)
  run <- h5_reads(fit_on(pair$h5, cells = train))
  expect_equal(run$value$loss, fit_mem$loss)
  expect_equal(run$value$feature_names, genes)
  expr <- touched(run$reads, "logcounts", c(106, n))
  expect_equal(expr$rows, c(1, 2, 5))
  expect_equal(expr$cols, which(train))
  expect_lte(expr$largest, 100)
  # Held-out cells of the same object, read as the training cells are.
  held <- fitFlow(pair$h5, assay = "logcounts", features = genes, condition = "condition", source = "ctrl",
                  target = "stim", method = "icfm", cells = train, held_out = pair$h5[, !train],
                  validation = ValidationParam(every = 10), training = toy_training(20), verbose = FALSE)
  held_mem <- fitFlow(pair$mem, assay = "logcounts", features = genes, condition = "condition", source = "ctrl",
                      target = "stim", method = "icfm", cells = train, held_out = pair$mem[, !train],
                      validation = ValidationParam(every = 10), training = toy_training(20), verbose = FALSE)
  expect_equal(held$validation$scores, held_mem$validation$scores)

  sparse <- pair$mem
  SummarizedExperiment::assay(sparse, "logcounts") <- methods::as(SummarizedExperiment::assay(sparse, "logcounts"),
                                                                  "CsparseMatrix")
  expect_s4_class(SummarizedExperiment::assay(sparse, "logcounts"), "dgCMatrix")
  fit_sparse <- fit_on(sparse, cells = train)
  expect_equal(fit_sparse$loss, fit_mem$loss)
  pred <- predict(fit_sparse, sparse[, !train], solver = toy_solver)
  expect_equal(SummarizedExperiment::assay(pred, "logcounts"),
               SummarizedExperiment::assay(predict(fit_mem, pair$mem[, !train], solver = toy_solver), "logcounts"))
})

test_that("read_dense() reads DelayedArray and sparse pieces in order, and names what it cannot read", {
  skip_if_not_installed("DelayedArray")
  set.seed(2)
  m <- matrix(rnorm(200), 10, 20, dimnames = list(letters[1:10], LETTERS[1:20]))
  old <- small_blocks(48)  # 6 doubles a block
  on.exit(small_blocks(old), add = TRUE)
  rows <- c(7, 2, 2, 9)
  cols <- c(20, 1, 5, 5, 3)
  for (x in list(DelayedArray::DelayedArray(m), methods::as(m, "CsparseMatrix"))) {
    expect_equal(popflow:::read_dense(x, rows, cols), m[rows, cols])
    expect_equal(popflow:::read_dense(x, rows, cols, along = "rows"), m[rows, cols])
  }
  moments <- popflow:::row_moments(function(at) m[, at, drop = FALSE], 3:20, 10)
  expect_equal(moments$mean, unname(rowMeans(m[, 3:20])))
  expect_equal(moments$sd, unname(apply(m[, 3:20], 1, sd)))
  expect_error(popflow:::check_readable(as.data.frame(m), "assay", "assay 'logcounts'"),
               "`assay` holds assay 'logcounts' as a data.frame, which popflow cannot read in blocks\n  Fix: .*DelayedArray::DelayedArray\\(\\)")
})

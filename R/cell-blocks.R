# Reading cells out of the matrices that single-cell objects hold, without
# realising them whole: base matrices, Matrix classes (dgCMatrix, ...) and
# DelayedArrays (HDF5Array, a DelayedMatrix over any seed). popflow needs a few
# features (PCs or chosen genes) of chosen cells, while an assay of an atlas
# can be far larger than memory: the chosen part is read in blocks of cells,
# each realised densely on its own and at most DelayedArray's block size
# (DelayedArray::getAutoBlockSize(), 100 MB by default).

# Classes read piece by piece; anything else is an error naming `arg`.
check_readable <- function(m, arg, what) {
  if (length(dim(m)) == 2 && (is.matrix(m) || inherits(m, "Matrix") || inherits(m, "DelayedArray"))) return(m)
  pf_abort(arg, sprintf("holds %s as a %s, which popflow cannot read in blocks", what, class(m)[1]),
           paste0("store it as a matrix, a sparse dgCMatrix or a DelayedArray (e.g. an HDF5Array): ",
                  "wrap other matrix-like objects with DelayedArray::DelayedArray()"))
}

# Doubles per block: DelayedArray's block size (bytes) when it is loaded.
block_elements <- function() {
  bytes <- if (isNamespaceLoaded("DelayedArray")) DelayedArray::getAutoBlockSize() else 1e8
  max(1, floor(bytes / 8))
}

# Consecutive groups of `index`, each with at most `per` elements.
index_chunks <- function(index, per) {
  if (!length(index)) return(list())
  split(index, ceiling(seq_along(index) / max(1, floor(per))))
}

# One dense double piece m[rows, cols]. Sorted unique indices (HDF5 reads runs
# of a dataset, a sparse matrix slices its columns), put back in the order asked.
read_piece <- function(m, rows, cols) {
  r <- sort(unique(rows))
  k <- sort(unique(cols))
  piece <- m[r, k, drop = FALSE]
  if (!is.matrix(piece)) piece <- as.matrix(piece)
  storage.mode(piece) <- "double"
  piece[match(rows, r), match(cols, k), drop = FALSE]
}

# m[rows, cols] (integer positions) as a dense double matrix, read in blocks
# along the columns (`along = "cols"`: features x cells assays) or the rows
# ("rows": cells x dimensions reducedDims). A base matrix is in memory already
# and is subset at once.
read_dense <- function(m, rows = NULL, cols = NULL, along = c("cols", "rows")) {
  along <- match.arg(along)
  rows <- if (is.null(rows)) seq_len(nrow(m)) else as.integer(rows)
  cols <- if (is.null(cols)) seq_len(ncol(m)) else as.integer(cols)
  if (is.matrix(m)) {
    out <- m[rows, cols, drop = FALSE]
    storage.mode(out) <- "double"
    return(out)
  }
  names <- list(rownames(m)[rows], colnames(m)[cols])
  # A DelayedArray reads its seed's dimnames (all cell names of an HDF5 file) at
  # every subset: read once here, and the pieces go without.
  if (inherits(m, "DelayedArray")) dimnames(m) <- NULL
  out <- matrix(0, length(rows), length(cols))
  if (along == "cols") {
    for (at in index_chunks(seq_along(cols), block_elements() / max(1, length(rows)))) {
      out[, at] <- read_piece(m, rows, cols[at])
    }
  } else {
    for (at in index_chunks(seq_along(rows), block_elements() / max(1, length(cols)))) {
      out[at, ] <- read_piece(m, rows[at], cols)
    }
  }
  dimnames(out) <- names
  out
}

# Per-row mean and standard deviation of a features x cells source read
# through `read(cells)` in blocks of cells, never all at once (Chan et al.'s
# pairwise update of the sums of squared deviations).
row_moments <- function(read, cells, n_rows) {
  n <- 0
  mean <- numeric(n_rows)
  m2 <- numeric(n_rows)
  for (at in index_chunks(cells, block_elements() / max(1, n_rows))) {
    block <- read(at)
    nb <- ncol(block)
    mb <- rowMeans(block)
    delta <- mb - mean
    m2 <- m2 + rowSums((block - mb)^2) + delta^2 * n * nb / (n + nb)
    mean <- mean + delta * nb / (n + nb)
    n <- n + nb
  }
  list(mean = unname(mean), sd = unname(sqrt(m2 / max(1, n - 1))))
}

# cellProportions(): weighted proportions of cell types or clusters, the
# summary of an unbalanced flow's predicted cells (each with its mass).

#' Proportions of cell types or clusters, weighted by cell mass
#'
#' The share of each cell type (cluster, region) in a set of cells, each cell
#' counting with its weight: for the predicted cells of an unbalanced flow
#' ([UnbalancedParam()]) the weight is the cell's mass, so a type whose cells
#' proliferate gains share and one whose cells die loses it.
#'
#' Predicted cells have no labels of their own: give `reference` cells with
#' known `labels` (e.g. the observed cells at the predicted time point), and
#' each cell of `x` takes the label of its nearest reference cell (Euclidean).
#'
#' @param x The cells: a matrix (cells x features) such as [predict()]'s
#'   result, with `reference` and `labels`; or a vector of labels, one per cell.
#' @param labels With `reference`: the label of each reference cell.
#' @param reference Cells with known labels (same features as `x`), or `NULL`
#'   when `x` holds the labels themselves.
#' @param weights The weight of each cell of `x` (>= 0), or `NULL` for equal
#'   weights; by default the `"weight"` attribute of an unbalanced flow's prediction.
#' @return A named vector of proportions (summing to 1), one per label, in the
#'   order of the labels' levels. The total weight is the attribute `"mass"`.
#' @examples
#' sim <- simulateGrowth(n = 100)
#' # Observed proportions at each time point.
#' cellProportions(sim$region[sim$time == 0])
#' cellProportions(sim$region[sim$time == 1])
#' # Cells at time 0 with the growth each region had: their weighted shares are those of time 1.
#' src <- sim$cells[sim$time == 0, ]
#' w <- exp(sim$growth[sim$region[sim$time == 0]])
#' cellProportions(src, labels = sim$region[sim$time == 0], reference = src, weights = w)
#' @export
cellProportions <- function(x, labels = NULL, reference = NULL, weights = attr(x, "weight")) {
  if (is.null(reference)) {
    if (!is.null(labels)) pf_abort("labels", "needs `reference` cells", "give the reference cells the labels belong to, or the labels of `x` as `x`")
    if (!(is.atomic(x) || is.factor(x)) || is.matrix(x) || !length(x)) {
      pf_abort("x", "must be a vector of labels when `reference` is NULL",
               "give one label per cell, or the cells with `reference` cells and their `labels`")
    }
    cell_labels <- as.factor(x)
    n <- length(x)
  } else {
    x <- as_cell_matrix(x, "x")
    reference <- as_cell_matrix(reference, "reference")
    if (ncol(reference) != ncol(x)) {
      pf_abort("reference", sprintf("has %d features but `x` has %d", ncol(reference), ncol(x)),
               "give reference cells in the space of `x`")
    }
    if (is.null(labels) || length(labels) != nrow(reference) || anyNA(labels)) {
      pf_abort("labels", sprintf("must be one label (not NA) per reference cell (%d)", nrow(reference)),
               "give the cell type or cluster of every row of `reference`")
    }
    labels <- as.factor(labels)
    cell_labels <- factor(levels(labels)[as.integer(labels)[nearest_rows(x, reference)]], levels = levels(labels))
    n <- nrow(x)
  }
  w <- check_weights(weights, n, "weights", "x")
  if (!length(w)) w <- rep(1, n)
  mass <- vapply(split(w, cell_labels), sum, numeric(1))
  out <- mass / sum(mass)
  attr(out, "mass") <- sum(w)
  out
}

# For each row of x, the index of its nearest row of `reference` (in blocks, to bound memory).
nearest_rows <- function(x, reference) {
  r2 <- rowSums(reference^2)
  out <- integer(nrow(x))
  for (start in seq(1, nrow(x), by = 1000)) {
    rows <- start:min(nrow(x), start + 999)
    d <- outer(rowSums(x[rows, , drop = FALSE]^2), r2, "+") - 2 * x[rows, , drop = FALSE] %*% t(reference)
    out[rows] <- max.col(-d, ties.method = "first")
  }
  out
}

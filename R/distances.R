#' Distances between two sets of cells
#'
#' - `wassersteinDistance()`: exact Wasserstein-1 (`p = 1`, Euclidean cost) or
#'   Wasserstein-2 (`p = 2`, squared Euclidean cost, square root taken) between
#'   the uniform distributions on the rows of `x` and `y`, solved by network
#'   simplex (LEMON). Exact, not a Sinkhorn approximation.
#' - `mmdDistance()`: squared maximum mean discrepancy with RBF kernels
#'   `exp(-gamma |a - b|^2)`, averaged over `gammas` (the set used by Meta Flow
#'   Matching and CellOT), biased V-statistic.
#' - `energyDistance()`: `2 E|X - Y| - E|X - X'| - E|Y - Y'|`.
#'
#' All use every feature. Costs grow with `nrow(x) * nrow(y)`; sets larger than
#' `max_cells` are randomly subsampled (reproducibly, with `seed`).
#'
#' With weights (the masses of an unbalanced flow's predicted cells, see
#' [UnbalancedParam()]), each set is the distribution that puts weight
#' proportional to `x_weights` (`y_weights`) on its rows; W1 and W2 stay exact
#' (network simplex on integer supplies of 2^40 units in all).
#'
#' @param x,y Numeric matrices, cells in rows, the same features in columns.
#' @param p 1 or 2.
#' @param gammas RBF kernel parameters.
#' @param max_cells Largest number of cells used from each set.
#' @param seed Seed for the subsampling.
#' @param x_weights,y_weights Weights of the rows of `x` and `y` (>= 0, one per
#'   row, a positive sum), or `NULL` for equal weights. By default the
#'   `"weight"` attribute that [predict()] gives an unbalanced flow's cells.
#' @return A single number.
#' @examples
#' set.seed(1)
#' a <- matrix(rnorm(200), ncol = 2)
#' b <- a + 1
#' wassersteinDistance(a, b, p = 2)  # sqrt(2): a translation by (1, 1)
#' mmdDistance(a, b)
#' energyDistance(a, b)
#' # Weighted: the rows of `a` in the upper half count double.
#' wassersteinDistance(a, b, x_weights = ifelse(a[, 2] > 0, 2, 1))
#' @name distances
NULL

#' @rdname distances
#' @export
wassersteinDistance <- function(x, y, p = 1, max_cells = 2000, seed = 1, x_weights = attr(x, "weight"),
                                y_weights = attr(y, "weight")) {
  if (!(identical(p, 1) || identical(p, 2) || identical(p, 1L) || identical(p, 2L))) {
    pf_abort("p", sprintf("must be 1 or 2, not %s", deparse1(p)), "use p = 1 (W1) or p = 2 (W2)")
  }
  xy <- distance_inputs(x, y, max_cells, seed, x_weights, y_weights)
  pf_wasserstein(xy$x, xy$y, as.integer(p), xy$wx, xy$wy)
}

#' @rdname distances
#' @export
mmdDistance <- function(x, y, gammas = c(2, 1, 0.5, 0.1, 0.01, 0.005), max_cells = 2000, seed = 1,
                        x_weights = attr(x, "weight"), y_weights = attr(y, "weight")) {
  if (!is.numeric(gammas) || !length(gammas) || any(!is.finite(gammas)) || any(gammas <= 0)) {
    pf_abort("gammas", "must be positive numbers", "use e.g. gammas = c(2, 1, 0.5, 0.1)")
  }
  xy <- distance_inputs(x, y, max_cells, seed, x_weights, y_weights)
  pf_mmd(xy$x, xy$y, as.numeric(gammas), xy$wx, xy$wy)
}

#' @rdname distances
#' @export
energyDistance <- function(x, y, max_cells = 2000, seed = 1, x_weights = attr(x, "weight"),
                           y_weights = attr(y, "weight")) {
  xy <- distance_inputs(x, y, max_cells, seed, x_weights, y_weights)
  pf_energy(xy$x, xy$y, xy$wx, xy$wy)
}

distance_inputs <- function(x, y, max_cells, seed, x_weights = NULL, y_weights = NULL) {
  x <- as_cell_matrix(x, "x")
  y <- as_cell_matrix(y, "y")
  if (ncol(x) != ncol(y)) {
    pf_abort("y", sprintf("has %d features but `x` has %d", ncol(y), ncol(x)), "compare cells in the same space")
  }
  max_cells <- check_count(max_cells, "max_cells", min = 2)
  wx <- check_weights(x_weights, nrow(x), "x_weights", "x")
  wy <- check_weights(y_weights, nrow(y), "y_weights", "y")
  kx <- subsample_index(nrow(x), max_cells, seed)
  ky <- subsample_index(nrow(y), max_cells, seed + 1)
  # A subsample without weight gives the engine nothing to transport.
  if (length(wx) && !(sum(wx[kx]) > 0)) pf_abort("x_weights", "is zero on every subsampled row", "raise max_cells")
  if (length(wy) && !(sum(wy[ky]) > 0)) pf_abort("y_weights", "is zero on every subsampled row", "raise max_cells")
  list(x = x[kx, , drop = FALSE], y = y[ky, , drop = FALSE],
       wx = if (length(wx)) wx[kx] else numeric(0), wy = if (length(wy)) wy[ky] else numeric(0))
}

# Row indices kept when at most max_cells of n rows are used (all, or a sorted sample drawn with `seed`).
subsample_index <- function(n, max_cells, seed) {
  if (n <= max_cells) return(seq_len(n))
  with_seed(seed, sort(sample.int(n, max_cells)))
}

subsample_rows <- function(x, max_cells, seed) x[subsample_index(nrow(x), max_cells, seed), , drop = FALSE]


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
#' @param x,y Numeric matrices, cells in rows, the same features in columns.
#' @param p 1 or 2.
#' @param gammas RBF kernel parameters.
#' @param max_cells Largest number of cells used from each set.
#' @param seed Seed for the subsampling.
#' @return A single number.
#' @examples
#' set.seed(1)
#' a <- matrix(rnorm(200), ncol = 2)
#' b <- a + 1
#' wassersteinDistance(a, b, p = 2)  # sqrt(2): a translation by (1, 1)
#' mmdDistance(a, b)
#' energyDistance(a, b)
#' @name distances
NULL

#' @rdname distances
#' @export
wassersteinDistance <- function(x, y, p = 1, max_cells = 2000, seed = 1) {
  if (!(identical(p, 1) || identical(p, 2) || identical(p, 1L) || identical(p, 2L))) {
    pf_abort("p", sprintf("must be 1 or 2, not %s", deparse1(p)), "use p = 1 (W1) or p = 2 (W2)")
  }
  xy <- distance_inputs(x, y, max_cells, seed)
  pf_wasserstein(xy$x, xy$y, as.integer(p))
}

#' @rdname distances
#' @export
mmdDistance <- function(x, y, gammas = c(2, 1, 0.5, 0.1, 0.01, 0.005), max_cells = 2000, seed = 1) {
  if (!is.numeric(gammas) || !length(gammas) || any(!is.finite(gammas)) || any(gammas <= 0)) {
    pf_abort("gammas", "must be positive numbers", "use e.g. gammas = c(2, 1, 0.5, 0.1)")
  }
  xy <- distance_inputs(x, y, max_cells, seed)
  pf_mmd(xy$x, xy$y, as.numeric(gammas))
}

#' @rdname distances
#' @export
energyDistance <- function(x, y, max_cells = 2000, seed = 1) {
  xy <- distance_inputs(x, y, max_cells, seed)
  pf_energy(xy$x, xy$y)
}

distance_inputs <- function(x, y, max_cells, seed) {
  x <- as_cell_matrix(x, "x")
  y <- as_cell_matrix(y, "y")
  if (ncol(x) != ncol(y)) {
    pf_abort("y", sprintf("has %d features but `x` has %d", ncol(y), ncol(x)), "compare cells in the same space")
  }
  max_cells <- check_count(max_cells, "max_cells", min = 2)
  list(x = subsample_rows(x, max_cells, seed), y = subsample_rows(y, max_cells, seed + 1))
}

subsample_rows <- function(x, max_cells, seed) {
  if (nrow(x) <= max_cells) return(x)
  x[with_seed(seed, sort(sample.int(nrow(x), max_cells))), , drop = FALSE]
}


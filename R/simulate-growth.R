# A benchmark with known growth and death: regions of cells that proliferate,
# stay or die between two snapshots, so that an unbalanced flow must recover
# each region's change of mass (and a balanced one cannot).

#' Simulate regions of cells that grow and die between two snapshots
#'
#' Three regions (clouds of cells in 2-d, far apart) each hold `n` cells at
#' time 0. Between time 0 and time 1 every region drifts by `shift` and its
#' mass changes by the factor `exp(growth)`: the cells of a region with growth
#' `log(2)` double, those of a region with growth `-log(2)` halve. Every cell
#' carries the same mass, so the target holds `round(n * exp(growth))` cells
#' per region and the snapshots' relative sizes are their cell counts (the
#' default `sizes` of [fitFlow()]).
#'
#' The question an unbalanced flow ([UnbalancedParam()]) answers: the mean
#' predicted weight of the cells that start in a region should be that
#' region's `exp(growth)`. A balanced flow keeps every weight at 1 and moves
#' cells between regions instead.
#'
#' @param n Cells per region at time 0.
#' @param growth Log change of mass of each region over the interval (one per
#'   region, three regions).
#' @param shift Drift of every region between the snapshots (2 numbers).
#' @param spread Standard deviation of the cells around their region's centre.
#' @param seed Random seed; the global random state is left as it was.
#' @return A list: `cells` (a matrix, both snapshots), `time` (0 or 1 per
#'   cell), `region` (the region of each cell, `"A"`, `"B"`, `"C"`), `growth`
#'   (the true log change of mass per region, named) and `sizes` (cells per
#'   time point, named `"0"`, `"1"`).
#' @examples
#' sim <- simulateGrowth(n = 100)
#' table(sim$time, sim$region)
#' exp(sim$growth)
#' @export
simulateGrowth <- function(n = 300, growth = c(A = log(2), B = 0, C = -log(2)), shift = c(0.5, 0.5), spread = 0.6,
                           seed = 1) {
  n <- check_count(n, "n", min = 2)
  if (!is.numeric(growth) || length(growth) != 3 || any(!is.finite(growth))) {
    pf_abort("growth", "must be 3 finite numbers, the log change of mass of each region", "use e.g. growth = c(log(2), 0, -log(2))")
  }
  if (!is.numeric(shift) || length(shift) != 2 || any(!is.finite(shift))) {
    pf_abort("shift", "must be 2 finite numbers (the drift in x and y)", "use e.g. shift = c(0.5, 0.5)")
  }
  spread <- check_number(spread, "spread", min = 0, min_inclusive = FALSE)
  regions <- c("A", "B", "C")
  names(growth) <- regions
  n_target <- pmax(2L, as.integer(round(n * exp(growth))))
  centres <- rbind(c(-3, -1.5), c(3, -1.5), c(0, 3.5))
  with_seed(seed, {
    cloud <- function(k, count, drift) {
      sweep(matrix(stats::rnorm(2 * count, sd = spread), count, 2), 2, centres[k, ] + drift, "+")
    }
    src <- lapply(1:3, function(k) cloud(k, n, c(0, 0)))
    tgt <- lapply(1:3, function(k) cloud(k, n_target[k], shift))
  })
  cells <- do.call(rbind, c(src, tgt))
  colnames(cells) <- c("x", "y")
  list(cells = cells, time = rep(c(0, 1), c(3 * n, sum(n_target))),
       region = c(rep(regions, each = n), rep(regions, n_target)), growth = growth,
       sizes = c("0" = 3 * n, "1" = sum(n_target)))
}

# A benchmark whose dynamics depend on the population as a whole, so that a
# model which sees one cell at a time cannot learn them: where a cell goes
# depends on how spread out its population is, which no single cell shows.

#' Simulate populations whose motion depends on their own state
#'
#' Every population is a cloud of cells (particles) around its own centre with
#' its own spread, and the whole cloud moves in a way set by that spread:
#'
#' - source: `centre + spread * z`, `z ~ N(0, I)`, with the centre drawn from
#'   `N(0, centre_sd^2 I)` and the spread uniformly from `spread_range`;
#' - target: `centre + (source - centre) / sqrt(spread) + 2 (cos a, sin a, 0, ...)
#'   + N(0, noise^2)`, where the direction of travel
#'   `a = pi * (spread - lo) / (hi - lo)` turns with the spread (the tightest
#'   populations move along +x, the widest along -x) and each population
#'   contracts (spread > 1) or expands (spread < 1) about its centre towards a
#'   common width.
#'
#' Because the centres overlap, cells of tight and wide populations sit in the
#' same places but go opposite ways: a flow that sees one cell at a time (a
#' population-blind flow, even one trained within populations) can only learn
#' their average, while a model that embeds the whole source population
#' (Meta Flow Matching) can read the spread from it. "No change", the mean
#' shift over training populations and a pooled flow are all far from the
#' truth; moving every cell by its own population's true mean shift (the
#' "oracle shift") is close but misses the contraction.
#'
#' Source and target are paired by row: target row `i` is where source cell
#' `i` goes (`coupling = "paired"` in a population model uses exactly that).
#'
#' @param populations Number of populations.
#' @param cells Cells per population.
#' @param dim Features per cell (at least 2; the motion is in the first two,
#'   the others only contract or expand).
#' @param spread_range Range of the populations' spreads (standard deviations).
#' @param centre_sd Standard deviation of the population centres.
#' @param noise Standard deviation of the noise added to each target cell.
#' @param seed Random seed; the same seed gives the same populations. The
#'   global random state is left as it was.
#' @return A list with `source` and `target`, matrices (cells x `dim`) paired
#'   by row, `cells`, a data.frame with each cell's `population` (e.g.
#'   `"p007"`), and `populations`, one row per population: `population`,
#'   `spread`, `direction` (radians) and the centre (`centre_1`, `centre_2`, ...).
#' @examples
#' sim <- simulatePopulations(populations = 6, cells = 200, seed = 1)
#' sim$populations
#' # Tight and wide populations overlap but move in opposite directions:
#' shift <- rowsum(sim$target - sim$source, sim$cells$population) / 200
#' cbind(sim$populations[c("spread", "direction")], shift)
#' @export
simulatePopulations <- function(populations = 200, cells = 500, dim = 2, spread_range = c(0.4, 1.6),
                                centre_sd = 1, noise = 0.05, seed = 1) {
  populations <- check_count(populations, "populations")
  cells <- check_count(cells, "cells", min = 2)
  dim <- check_count(dim, "dim", min = 2)
  if (!is.numeric(spread_range) || length(spread_range) != 2 || anyNA(spread_range) ||
      !(spread_range[1] > 0) || !(spread_range[2] > spread_range[1]) || !is.finite(spread_range[2])) {
    pf_abort("spread_range", "must be two increasing positive numbers", "e.g. spread_range = c(0.4, 1.6)")
  }
  centre_sd <- check_number(centre_sd, "centre_sd", min = 0)
  noise <- check_number(noise, "noise", min = 0)
  seed <- check_number(seed, "seed")
  lo <- spread_range[1]
  hi <- spread_range[2]
  ids <- sprintf(paste0("p%0", nchar(populations), "d"), seq_len(populations))
  sim <- with_seed(seed, {
    spread <- stats::runif(populations, lo, hi)
    centre <- matrix(stats::rnorm(populations * dim, sd = centre_sd), populations, dim)
    parts <- lapply(seq_len(populations), function(p) {
      offset <- matrix(stats::rnorm(cells * dim, sd = spread[p]), cells, dim)
      source <- sweep(offset, 2, centre[p, ], "+")
      direction <- pi * (spread[p] - lo) / (hi - lo)
      travel <- c(2 * cos(direction), 2 * sin(direction), rep(0, dim - 2))
      target <- sweep(offset / sqrt(spread[p]), 2, centre[p, ] + travel, "+") +
        stats::rnorm(cells * dim, sd = noise)
      list(source = source, target = target, direction = direction)
    })
    list(spread = spread, centre = centre, parts = parts)
  })
  stack <- function(side) {
    m <- do.call(rbind, lapply(sim$parts, `[[`, side))
    dimnames(m) <- list(NULL, paste0("x", seq_len(dim)))
    m
  }
  pops <- data.frame(population = ids, spread = sim$spread,
                     direction = vapply(sim$parts, `[[`, numeric(1), "direction"), stringsAsFactors = FALSE)
  centres <- sim$centre
  colnames(centres) <- paste0("centre_", seq_len(dim))
  list(source = stack("source"), target = stack("target"),
       cells = data.frame(population = rep(ids, each = cells), stringsAsFactors = FALSE),
       populations = cbind(pops, centres))
}

# simulatePopulations(): populations whose motion depends on their own spread.

test_that("simulatePopulations moves each population by its spread, paired by row", {
  sim <- simulatePopulations(populations = 8, cells = 400, dim = 3, seed = 2)
  expect_named(sim, c("source", "target", "cells", "populations"))
  expect_equal(dim(sim$source), c(8 * 400, 3))
  expect_equal(dim(sim$target), dim(sim$source))
  expect_equal(colnames(sim$source), c("x1", "x2", "x3"))
  expect_equal(unique(sim$cells$population), sim$populations$population)
  expect_true(all(sim$populations$spread >= 0.4 & sim$populations$spread <= 1.6))
  pops <- sim$populations
  for (p in seq_len(nrow(pops))) {
    i <- sim$cells$population == pops$population[p]
    s <- pops$spread[p]
    centre <- unlist(pops[p, c("centre_1", "centre_2", "centre_3")])
    # Source: N(centre, spread^2 I), up to sampling error.
    expect_lt(max(abs(colMeans(sim$source[i, ]) - centre)), 0.25 * s)
    expect_equal(sd(as.vector(sweep(sim$source[i, ], 2, centre))), s, tolerance = 0.1)
    # Target, row by row: centre + offset / sqrt(spread) + travel + N(0, 0.05^2).
    a <- pi * (s - 0.4) / 1.2
    expect_equal(pops$direction[p], a)
    expected <- sweep(sweep(sim$source[i, ], 2, centre) / sqrt(s), 2, centre + c(2 * cos(a), 2 * sin(a), 0), "+")
    expect_lt(abs(sd(as.vector(sim$target[i, ] - expected)) - 0.05), 0.01)
  }
  # The tightest population travels along +x, the widest along -x.
  shift <- rowsum(sim$target - sim$source, sim$cells$population) / 400
  expect_gt(shift[which.min(pops$spread), 1], 1)
  expect_lt(shift[which.max(pops$spread), 1], -0.5)
})

test_that("simulatePopulations is reproducible and checks its arguments", {
  a <- simulatePopulations(populations = 3, cells = 20, seed = 5)
  b <- simulatePopulations(populations = 3, cells = 20, seed = 5)
  c <- simulatePopulations(populations = 3, cells = 20, seed = 6)
  expect_identical(a, b)
  expect_false(isTRUE(all.equal(a$source, c$source)))
  expect_error(simulatePopulations(dim = 1), "`dim`")
  expect_error(simulatePopulations(cells = 1), "`cells`")
  expect_error(simulatePopulations(spread_range = c(1, 0.5)), "`spread_range`")
  expect_error(simulatePopulations(spread_range = c(0, 1)), "`spread_range`")
  expect_error(simulatePopulations(noise = -1), "`noise`")
})

test_that("exact W2 equals a brute-force assignment on a handful of points", {
  set.seed(2)
  for (rep in 1:3) {
    x <- matrix(rnorm(12), 6)
    y <- matrix(rnorm(12, 1), 6)
    c2 <- pmax(sq_dists(x, y), 0)
    expect_equal(wassersteinDistance(x, y, p = 2), sqrt(brute_assignment(c2) / 6), tolerance = 1e-10)
    expect_equal(wassersteinDistance(x, y, p = 1), brute_assignment(sqrt(c2)) / 6, tolerance = 1e-10)
  }
})

test_that("exact W1 with unequal sizes matches the expanded assignment problem", {
  set.seed(3)
  x <- matrix(rnorm(6), 3)   # 3 cells, mass 1/3 each
  y <- matrix(rnorm(12), 6)  # 6 cells, mass 1/6 each
  # Each source cell split in two halves: a 6 x 6 assignment with the same optimum.
  xx <- x[rep(1:3, each = 2), ]
  cost <- sqrt(pmax(sq_dists(xx, y), 0))
  expect_equal(wassersteinDistance(x, y, p = 1), brute_assignment(cost) / 6, tolerance = 1e-10)
  plan <- popflow:::pf_exact_plan(sqrt(pmax(sq_dists(x, y), 0)))
  expect_equal(as.numeric(tapply(plan$mass, plan$i, sum)), rep(1 / 3, 3))
  expect_equal(as.numeric(tapply(plan$mass, plan$j, sum)), rep(1 / 6, 6))
})

test_that("a translation moves W2 by exactly its length", {
  set.seed(4)
  x <- matrix(rnorm(200), ncol = 2)
  expect_equal(wassersteinDistance(x, x, p = 2), 0)
  expect_equal(wassersteinDistance(x, sweep(x, 2, c(3, 4), "+"), p = 2), 5, tolerance = 1e-8)
})

test_that("MMD matches a pure-R computation over the gamma set", {
  set.seed(5)
  x <- matrix(rnorm(40), 20)
  y <- matrix(rnorm(30, 0.5), 15)
  gammas <- c(2, 1, 0.5, 0.1, 0.01, 0.005)
  ref <- mean(vapply(gammas, function(g) {
    mean(exp(-g * sq_dists(x, x))) + mean(exp(-g * sq_dists(y, y))) - 2 * mean(exp(-g * sq_dists(x, y)))
  }, numeric(1)))
  expect_equal(mmdDistance(x, y), ref, tolerance = 1e-8)
  expect_equal(mmdDistance(x, x), 0, tolerance = 1e-12)
  expect_equal(mmdDistance(x, y, gammas = 1), mean(exp(-sq_dists(x, x))) + mean(exp(-sq_dists(y, y))) -
                 2 * mean(exp(-sq_dists(x, y))), tolerance = 1e-8)
})

test_that("energy distance matches a pure-R computation", {
  set.seed(6)
  x <- matrix(rnorm(40), 20)
  y <- matrix(rnorm(30, 1), 15)
  d <- function(a, b) sqrt(pmax(sq_dists(a, b), 0))
  ref <- 2 * mean(d(x, y)) - mean(d(x, x)) - mean(d(y, y))
  expect_equal(energyDistance(x, y), ref, tolerance = 1e-8)
  expect_gt(energyDistance(x, y), 0)
})

test_that("mean R^2 and correlation r match pure-R definitions", {
  set.seed(7)
  p <- matrix(rnorm(300), ncol = 6)
  o <- p[sample(nrow(p)), ] + matrix(rnorm(300, sd = 0.3), ncol = 6)
  mp <- colMeans(p); mo <- colMeans(o)
  expect_equal(popflow:::pf_mean_r2(p, o), 1 - sum((mo - mp)^2) / sum((mo - mean(mo))^2), tolerance = 1e-10)
  up <- cor(p)[upper.tri(diag(6))]; uo <- cor(o)[upper.tri(diag(6))]
  expect_equal(popflow:::pf_correlation_r(p, o), cor(up, uo), tolerance = 1e-10)
})

test_that("distances subsample large sets reproducibly", {
  set.seed(8)
  x <- matrix(rnorm(3000), ncol = 2)
  y <- matrix(rnorm(3000), ncol = 2)
  a <- wassersteinDistance(x, y, max_cells = 200, seed = 3)
  expect_identical(a, wassersteinDistance(x, y, max_cells = 200, seed = 3))
  expect_false(identical(a, wassersteinDistance(x, y, max_cells = 200, seed = 4)))
})

test_that("the assignment solver finds the exact OT optimum found by network simplex", {
  set.seed(9)
  for (n in c(1, 2, 5, 7, 64, 200)) {
    x <- matrix(rnorm(n * 3), n)
    y <- matrix(rnorm(n * 3, 0.5), n)
    cost <- pmax(sq_dists(x, y), 0)
    col <- popflow:::pf_assignment(cost)
    expect_setequal(col, seq_len(n))  # a permutation
    lemon <- popflow:::pf_exact_plan(cost)
    expect_equal(sum(cost[cbind(seq_len(n), col)]) / n, sum(lemon$mass * cost[cbind(lemon$i, lemon$j)]),
                 tolerance = 1e-10)
    if (n <= 7) expect_equal(sum(cost[cbind(seq_len(n), col)]), brute_assignment(cost), tolerance = 1e-10)
  }
  # Ties and integer costs (degenerate problems)
  cost <- matrix(sample(0:3, 400, replace = TRUE), 20)
  col <- popflow:::pf_assignment(cost)
  lemon <- popflow:::pf_exact_plan(cost)
  expect_setequal(col, 1:20)
  expect_equal(sum(cost[cbind(1:20, col)]) / 20, sum(lemon$mass * cost[cbind(lemon$i, lemon$j)]))
})

# simulateLetters(): the MFM paper's letters populations.

test_that("simulateLetters returns index-paired, rotated letter populations", {
  sim <- simulateLetters(c("A", "L"), rotations = 3, seed = 7)
  expect_named(sim, c("source", "target", "cells"))
  n <- nrow(sim$cells)
  expect_equal(n, 3 * (1803 + 1127))  # every pixel of the DejaVu Sans glyphs
  expect_equal(dim(sim$source), c(n, 2))
  expect_equal(dim(sim$target), c(n, 2))
  expect_equal(colnames(sim$target), c("x", "y"))
  expect_equal(sort(unique(sim$cells$population)), c(sprintf("A_%02d", 1:3), sprintf("L_%02d", 1:3)))
  expect_true(all(substr(sim$cells$population, 1, 1) == sim$cells$letter))
  # Paired: source = target + N(0, 0.5^2) row by row.
  noise <- sim$source - sim$target
  expect_equal(sd(as.vector(noise)), 0.5, tolerance = 0.03)
  expect_lt(abs(mean(noise)), 0.02)
  # One rotation per population, and the letter's shape is only rotated: the
  # distances to the glyph centre do not depend on the rotation (up to 0.05 noise).
  expect_equal(lengths(tapply(sim$cells$rotation, sim$cells$population, unique)), rep(1L, 6), ignore_attr = TRUE)
  radii <- tapply(sqrt(rowSums(sim$target^2)), sim$cells$population, mean)
  expect_lt(diff(range(radii[1:3])), 0.02)
  expect_gt(abs(radii[["A_01"]] - radii[["L_01"]]), 0.1)
  # The rotation is applied: un-rotating population A_01 and A_02 gives the same points (up to noise).
  unrotate <- function(p) {
    i <- sim$cells$population == p
    a <- sim$cells$rotation[i][1]
    sim$target[i, ] %*% matrix(c(cos(a), sin(a), -sin(a), cos(a)), 2)  # target = glyph %*% t(R)
  }
  expect_lt(max(abs(unrotate("A_01") - unrotate("A_02"))), 0.6)
  expect_gt(max(abs(sim$target[sim$cells$population == "A_01", ] - sim$target[sim$cells$population == "A_02", ])), 1)
  # Scale: the longer side of the glyph spans [-3, 3].
  expect_equal(max(abs(unrotate("L_01"))), 3, tolerance = 0.1)
})

test_that("simulateLetters is reproducible with a seed, caps points and checks its arguments", {
  old <- if (exists(".Random.seed", globalenv())) get(".Random.seed", globalenv())
  a <- simulateLetters("Y", rotations = 2, points = 100, seed = 3)
  if (!is.null(old)) expect_identical(get(".Random.seed", globalenv()), old)  # global RNG untouched
  b <- simulateLetters("Y", rotations = 2, points = 100, seed = 3)
  c <- simulateLetters("Y", rotations = 2, points = 100, seed = 4)
  expect_identical(a, b)
  expect_false(isTRUE(all.equal(a$target, c$target)))
  expect_equal(as.vector(table(a$cells$population)), c(100, 100))
  quiet <- simulateLetters("I", rotations = 1, noise = 0, source_noise = 0, seed = 1)
  expect_identical(quiet$source, quiet$target)
  expect_error(simulateLetters("a"), "`letters` must be capital letters")
  expect_error(simulateLetters(c("A", "A")), "`letters` contains duplicates")
  expect_error(simulateLetters("A", rotations = 0), "`rotations`")
  expect_error(simulateLetters("A", noise = -1), "`noise`")
})

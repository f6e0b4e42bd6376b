# coupling = "paired": source row i and target row i are the same cell or particle.

# Target = source turned by 90 degrees about the origin: both sides have the same
# distribution, so only the pairs say where a cell goes. Independent pairs learn
# (close to) no motion; paired ones learn the turn (straight paths from x to its
# turn never cross, so a flow can follow them).
turn <- function(x) cbind(-x[, 2], x[, 1])
turn_data <- function(n = 300, seed = 1) {
  x <- with_seed(seed, matrix(rnorm(2 * n), n, 2))
  list(x = x, target = turn(x))
}
turn_error <- function(pred, x) mean(sqrt(rowSums((pred - turn(x))^2)))

test_that("I-CFM with paired coupling learns the given pairs, independent coupling cannot", {
  d <- turn_data()
  training <- TrainingParam(steps = 600, seed = 2)
  paired <- fitFlow(d$x, d$target, method = ICFMParam(sigma = 0, coupling = "paired"), training = training,
                    verbose = FALSE)
  independent <- fitFlow(d$x, d$target, method = ICFMParam(sigma = 0), training = training, verbose = FALSE)
  solver <- SolverParam("rk4", steps = 20)
  expect_lt(turn_error(predict(paired, d$x, solver = solver), d$x), 0.35)
  expect_gt(turn_error(predict(independent, d$x, solver = solver), d$x), 1)
  # Within groups: the k-th source cell of a group is paired with the k-th target cell of that group.
  g <- rep(c("a", "b"), 150)
  grouped <- fitFlow(d$x, d$target, group = c(g, g), method = ICFMParam(sigma = 0, coupling = "paired"),
                     training = training, verbose = FALSE)
  expect_lt(turn_error(predict(grouped, d$x, solver = solver), d$x), 0.35)
})

test_that("population models with paired coupling learn each population's pairs", {
  a <- turn_data(200, seed = 3)
  b <- turn_data(200, seed = 4)
  x <- rbind(a$x, b$x + 4)
  target <- rbind(a$target, b$target + 4)  # b turns about (4, 4)
  pop <- rep(c("a", "b"), each = 200)
  fit <- fitFlow(x, target, population = c(pop, pop),
                 method = MFMParam(encoder = "mean", coupling = "paired", sigma = 0, populations_per_step = 2,
                                   cells_per_population = 128),
                 training = TrainingParam(steps = 600, seed = 1), verbose = FALSE)
  pred <- predict(fit, x, population = pop, solver = SolverParam("rk4", steps = 20))
  centre <- rbind(matrix(0, 200, 2), matrix(4, 200, 2))
  expect_lt(turn_error(pred - centre, x - centre), 0.5)
})

test_that("paired coupling refuses data it cannot pair, naming the groups", {
  d <- turn_data(50)
  expect_error(fitFlow(d$x, d$target[1:40, ], method = ICFMParam(coupling = "paired"),
                       training = TrainingParam(steps = 5), verbose = FALSE),
               "`target`.*'all cells' \\(50 source, 40 target\\)")
  expect_error(fitFlow(rbind(d$x, d$target), time = rep(0:1, each = 50), method = ICFMParam(coupling = "paired"),
                       training = TrainingParam(steps = 5), verbose = FALSE),
               "`coupling`.*not `time`")
  pop_x <- rep(c("p1", "p2", "p3"), c(20, 20, 10))
  pop_t <- rep(c("p1", "p2", "p3"), c(20, 15, 15))
  expect_error(fitFlow(d$x, d$target, population = c(pop_x, pop_t),
                       method = MFMParam(k = 3, coupling = "paired"), training = TrainingParam(steps = 5),
                       verbose = FALSE),
               "`population` has 2 groups.*'p2' \\(20 source, 15 target\\), 'p3' \\(10 source, 15 target\\)")
  expect_error(ICFMParam(coupling = "exact"), "`coupling`")
  expect_error(CGFMParam(coupling = "pairs"), "`coupling`")
})

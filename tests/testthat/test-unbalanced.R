# Unbalanced flows (UnbalancedParam): the unbalanced Sinkhorn plan, growth
# recovered on a simulation with known growth and death, the balanced limit,
# weights through predict / objects / files / resume, weighted summaries, and
# the errors of bad sizes and weights.

ub_training <- function(steps = 300, ...) TrainingParam(steps = steps, batch_size = 128, seed = 1, ...)
# The growth test's fit: small batches, many steps, a moving average (about 5 s here).
growth_training <- TrainingParam(steps = 1000, batch_size = 64, lr = 2e-3, ema_decay = 0.995, seed = 1)
ub_solver <- SolverParam("rk4", steps = 10)

# The plan written out directly (scaling form, double precision): P = diag(u) K diag(v),
# K_ij = a_i b_j exp(-C_ij / reg), u = (Kv / a)^-tau, v = (K'u / b)^-tau, tau = reg_m / (reg_m + reg).
direct_plan <- function(x0, x1, mass, reg, reg_m, iters = 3000) {
  n <- nrow(x0)
  m <- nrow(x1)
  a <- rep(1 / n, n)
  b <- rep(mass / m, m)
  k <- exp(-sq_dists(x0, x1) / reg) * outer(a, b)
  tau <- reg_m / (reg_m + reg)
  u <- rep(1, n)
  v <- rep(1, m)
  for (it in seq_len(iters)) {
    u <- (drop(k %*% v) / a)^-tau
    v <- (drop(t(k) %*% u) / b)^-tau
  }
  u * k * rep(v, each = n)
}

test_that("the unbalanced Sinkhorn plan equals a direct computation", {
  set.seed(1)
  x0 <- matrix(rnorm(12), 6)
  x1 <- matrix(rnorm(10, 1), 5)
  for (mass in c(0.4, 1, 3)) {
    plan <- popflow:::pf_unbalanced_plan(x0, x1, mass, 0.7, 0.5, 5000L)
    expect_equal(plan, direct_plan(x0, x1, mass, 0.7, 0.5), tolerance = 1e-6)
  }
  # Large reg_m: the marginals are the balanced ones.
  plan <- popflow:::pf_unbalanced_plan(x0, x0 + 1, 1, 0.7, 1e6, 5000L)
  expect_equal(rowSums(plan), rep(1 / 6, 6), tolerance = 1e-4)
  expect_equal(colSums(plan), rep(1 / 6, 6), tolerance = 1e-4)
})

test_that("an unbalanced flow recovers each region's growth and death within 15%", {
  sim <- simulateGrowth(n = 150, seed = 1)
  # Regions 6 apart, cells drifting 0.7: reg_m = 0.1 makes mass farther than ~1.6 (sqrt(0.1 x the
  # mean squared distance, ~25)) grow or die rather than move.
  fit <- fitFlow(sim$cells, time = sim$time, method = UnbalancedParam(reg_m = 0.1), training = growth_training,
                 verbose = FALSE)
  src <- sim$cells[sim$time == 0, ]
  region <- sim$region[sim$time == 0]
  pred <- predict(fit, src, solver = ub_solver)
  w <- attr(pred, "weight")
  expect_length(w, nrow(src))
  factor <- tapply(w, region, mean)
  # Truth: 2, 1, 0.5 (the regions' cell counts at time 1 over time 0).
  expect_lt(max(abs(factor / exp(sim$growth) - 1)), 0.15)
  # Total mass: the sizes' ratio.
  expect_equal(mean(w), unname(sim$sizes[2] / sim$sizes[1]), tolerance = 0.1)
  # Weighted proportions of the predicted cells follow the observed ones at time 1.
  obs <- cellProportions(sim$region[sim$time == 1])
  prop <- cellProportions(pred, labels = sim$region[sim$time == 1], reference = sim$cells[sim$time == 1, ])
  expect_lt(max(abs(prop - obs)), 0.05)
  # Cells stay in their region (nearest observed cell at time 1); a balanced flow, whose weights
  # are all 1, must move cells out of the dying region into the growing one instead.
  moved <- function(p) {
    lands <- sim$region[sim$time == 1][popflow:::nearest_rows(p, sim$cells[sim$time == 1, ])]
    mean(lands != region)
  }
  expect_lt(moved(pred), 0.02)
  ot <- fitFlow(sim$cells, time = sim$time, method = "otcfm", training = ub_training(300), verbose = FALSE)
  expect_gt(moved(predict(ot, src, solver = ub_solver)), 0.1)
  # print / summary show the sizes.
  expect_output(print(fit), "sizes \\(relative mass")
  expect_output(print(summary(fit)), "relative size")
  expect_match(paste(capture.output(print(fit)), collapse = "\n"), "Unbalanced OT-CFM")
})

test_that("with balanced snapshots the growth field vanishes and the flow matches OT-CFM", {
  d <- shifted_pair(n = 300, shift = c(3, 0))
  # Every cell travels 3: with a large reg_m that is transport, not death here and birth there.
  # (reg_m near balance makes Sinkhorn slow: small batches and a capped iteration count keep it short.)
  training <- TrainingParam(steps = 300, batch_size = 64, seed = 1)
  fit <- fitFlow(d$source, d$target, method = UnbalancedParam(reg = 0.2, reg_m = 20, sinkhorn_iters = 300),
                 training = training, verbose = FALSE)
  ot <- fitFlow(d$source, d$target, method = "otcfm", training = training, verbose = FALSE)
  pred <- predict(fit, d$source, solver = ub_solver)
  w <- attr(pred, "weight")
  expect_lt(max(abs(log(w))), 0.15)
  expect_lt(abs(mean(w) - 1), 0.02)
  w_ub <- wassersteinDistance(pred, d$target)
  w_ot <- wassersteinDistance(predict(ot, d$source, solver = ub_solver), d$target)
  expect_lt(abs(w_ub - w_ot), 0.1)
})

test_that("weights come with trajectories, files, resume and evaluateFlow", {
  sim <- simulateGrowth(n = 60, seed = 2)
  fit <- fitFlow(sim$cells, time = sim$time, method = "uotcfm", training = ub_training(60, checkpoint_every = 0),
                 verbose = FALSE)
  src <- sim$cells[sim$time == 0, ]
  pred <- predict(fit, src, solver = ub_solver)
  traj <- sampleTrajectories(fit, src[1:5, ], times = c(0, 0.5, 1), solver = ub_solver)
  expect_equal(dim(attr(traj, "weight")), c(5, 3))
  expect_equal(unname(attr(traj, "weight")[, 1]), rep(1, 5))
  expect_equal(unname(attr(traj, "weight")[, 3]), unname(attr(pred, "weight")[1:5]), tolerance = 1e-6)
  # The growth network is in the model file.
  path <- tempfile(fileext = ".pflow")
  saveFlow(fit, path)
  back <- loadFlow(path)
  expect_equal(attr(predict(back, src, solver = ub_solver), "weight"), attr(pred, "weight"))
  expect_equal(back$sizes, fit$sizes)
  # Resuming continues the same fit: 60 + 60 steps equal 120 at once.
  more <- fitFlow(sim$cells, time = sim$time, resume = fit, training = ub_training(120), verbose = FALSE)
  once <- fitFlow(sim$cells, time = sim$time, method = "uotcfm", training = ub_training(120), verbose = FALSE)
  expect_equal(more$loss, once$loss, tolerance = 1e-6)
  # Resuming with other sizes is refused.
  expect_error(fitFlow(sim$cells, time = sim$time, resume = fit, sizes = c(1, 5), training = ub_training(120),
                       verbose = FALSE), "`sizes` differ from those `resume` was fitted with")
  # evaluateFlow scores the weighted prediction.
  ev <- evaluateFlow(fit, src, sim$cells[sim$time == 1, ], solver = ub_solver, baselines = FALSE)
  expect_equal(ev$W1[1], wassersteinDistance(pred, sim$cells[sim$time == 1, ]), tolerance = 1e-9)
  # A balanced flow has no weights.
  expect_null(attr(predict(fitFlow(sim$cells, time = sim$time, training = ub_training(5), verbose = FALSE), src,
                           solver = ub_solver), "weight"))
})

test_that("an unbalanced flow on SingleCellExperiment and Seurat objects puts weights in the cell metadata", {
  skip_if_not_installed("SingleCellExperiment")
  sim <- simulateGrowth(n = 40, seed = 3)
  cd <- S4Vectors::DataFrame(day = sim$time, region = sim$region)
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = t(sim$cells)), colData = cd)
  colnames(sce) <- sprintf("c%d", seq_len(ncol(sce)))
  fit <- fitFlow(sce, time = "day", assay = "logcounts", method = UnbalancedParam(), training = ub_training(30),
                 sizes = c("0" = 1, "1" = 2), verbose = FALSE)
  expect_equal(unname(fit$sizes), c(1, 2))
  out <- predict(fit, sce, solver = ub_solver)
  expect_true("weight" %in% names(SummarizedExperiment::colData(out)))
  expect_true(all(out$weight > 0))
  skip_if_not_installed("SeuratObject")
  counts <- t(sim$cells)
  colnames(counts) <- colnames(sce)
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = SeuratObject::CreateAssayObject(data = counts),
                                                          meta.data = data.frame(day = sim$time, row.names = colnames(sce))))
  fit2 <- fitFlow(so, time = "day", assay = "RNA", method = "uotcfm", training = ub_training(30), verbose = FALSE)
  out2 <- predict(fit2, so, solver = ub_solver)
  expect_true("weight" %in% names(out2[[]]))
})

test_that("weighted distances: integer weights equal repeated rows, and predict's weights are used", {
  set.seed(4)
  x <- matrix(rnorm(20), 10)
  y <- matrix(rnorm(16, 1), 8)
  w <- c(1, 2, 1, 1, 3, 1, 1, 2, 1, 1)
  rep_x <- x[rep(seq_len(10), w), ]
  expect_equal(wassersteinDistance(x, y, x_weights = w), wassersteinDistance(rep_x, y), tolerance = 1e-9)
  expect_equal(wassersteinDistance(x, y, p = 2, x_weights = w), wassersteinDistance(rep_x, y, p = 2), tolerance = 1e-9)
  expect_equal(mmdDistance(x, y, x_weights = w), mmdDistance(rep_x, y), tolerance = 1e-12)
  expect_equal(energyDistance(y, x, y_weights = w), energyDistance(y, rep_x), tolerance = 1e-12)
  attr(x, "weight") <- w
  expect_equal(wassersteinDistance(x, y), wassersteinDistance(rep_x, y), tolerance = 1e-9)
  expect_equal(as.numeric(cellProportions(c("a", "b", "a"), weights = c(1, 2, 3))), c(4, 2) / 6)
})

test_that("bad sizes and weights, and unbalanced settings a method cannot use, are clear errors", {
  sim <- simulateGrowth(n = 20, seed = 5)
  fit_ub <- function(...) fitFlow(sim$cells, time = sim$time, method = UnbalancedParam(), training = ub_training(2),
                                  verbose = FALSE, ...)
  expect_error(fit_ub(sizes = c(1, -2)), "`sizes` must be finite and > 0")
  expect_error(fit_ub(sizes = c(0, 2)), "`sizes` must be finite and > 0")
  expect_error(fit_ub(sizes = c(1, 2, 3)), "`sizes` must be 2 numbers, one per time point")
  expect_error(fit_ub(sizes = "big"), "`sizes` must be 2 numbers")
  expect_error(fit_ub(sizes = c(a = 1, b = 2)), "not by the time labels: 0, 1 missing")
  expect_error(fitFlow(sim$cells, time = sim$time, method = "otcfm", sizes = c(1, 2), verbose = FALSE),
               "`sizes` is used only by unbalanced flows, not by method \"otcfm\"")
  expect_error(fitFlow(sim$cells[1:10, ], sim$cells[11:20, ], method = "mfm", population = rep("p", 20),
                       sizes = c(1, 2), verbose = FALSE), "`sizes` is used only by unbalanced flows")
  expect_error(UnbalancedParam(reg = 0), "`reg`")
  expect_error(UnbalancedParam(reg_m = -1), "`reg_m`")
  x <- matrix(rnorm(10), 5)
  expect_error(wassersteinDistance(x, x, x_weights = 1:3), "`x_weights` must be 5 numbers, one per row of `x`")
  expect_error(wassersteinDistance(x, x, y_weights = c(1, 1, -1, 1, 1)), "`y_weights` must be finite and >= 0")
  expect_error(mmdDistance(x, x, x_weights = rep(0, 5)), "`x_weights` is zero for every cell")
  expect_error(cellProportions(c("a", "b"), weights = 1), "`weights` must be 2 numbers")
  expect_error(cellProportions(x, labels = "a", reference = x), "`labels` must be one label")
  fit <- fit_ub()
  expect_error(ReflowParam(fit), "unbalanced flow")
})

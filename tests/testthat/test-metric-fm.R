# Metric flow matching (MetricFMParam): the LAND metric against a direct
# computation, paths that follow curved data where OT-CFM's cut across, the
# reduction to OT-CFM when the metric is constant, and the usual duties of a
# method (model files, objects, errors).

# Cells on the upper unit half-circle: source on the left quarter, target on
# the right one. OT pairs nearby cells, whose chords run inside the circle,
# where there are no cells; paths along the data stay near radius 1.
half_circle <- function(n = 200, seed = 1) {
  set.seed(seed)
  arc <- function(lo, hi) {
    a <- runif(n, lo, hi)
    cbind(cos(a), sin(a)) * (1 + rnorm(n, sd = 0.02))
  }
  list(source = arc(pi / 2, pi), target = arc(0, pi / 2))
}

# Mean distance from radius 1 of the cells moved halfway (model time 0.5).
midway_off_circle <- function(fit, source) {
  mid <- predict(fit, source, from = 0, to = 0.5, solver = SolverParam("rk4", steps = 10))
  mean(abs(sqrt(rowSums(mid^2)) - 1))
}

mfm_training <- function(steps = 700) TrainingParam(steps = steps, batch_size = 64, seed = 1)

test_that("the LAND metric matches a direct computation", {
  set.seed(2)
  x <- matrix(rnorm(15), 5)
  ref <- matrix(rnorm(24), 8)
  bw <- 0.7
  eps <- 0.05
  direct <- t(apply(x, 1, function(xi) {
    d <- sweep(ref, 2, xi)
    w <- exp(-rowSums(d^2) / (2 * bw^2))
    colMeans(w * d^2) + eps
  }))
  expect_equal(popflow:::pf_land_metric(x, ref, bw, eps), direct, tolerance = 1e-5)
  # Far from the reference cells only the floor is left.
  expect_equal(popflow:::pf_land_metric(matrix(50, 1, 3), ref, bw, eps), matrix(eps, 1, 3), tolerance = 1e-6)
})

test_that("metric FM's paths follow curved data where OT-CFM's cut across, and lower the metric energy", {
  d <- half_circle()
  ot <- fitFlow(d$source, d$target, method = OTCFMParam(sigma = 0.02),
                training = TrainingParam(steps = 400, batch_size = 64, seed = 1), verbose = FALSE)
  mfm <- fitFlow(d$source, d$target, method = MetricFMParam(sigma = 0.02, interpolant_steps = 300),
                 training = mfm_training(), verbose = FALSE)
  # The interpolant starts from the straight lines (phi = 0) and lowers their metric energy.
  energy <- mfm$loss[seq_len(300)]
  expect_lt(mean(utils::tail(energy, 30)), 0.7 * mean(energy[1:10]))
  off_ot <- midway_off_circle(ot, d$source)
  off_mfm <- midway_off_circle(mfm, d$source)
  expect_gt(off_ot, 0.05)  # chords of OT pairs run well inside the circle
  expect_lt(off_mfm, 0.6 * off_ot)
  # And still end on the target cells (as close as OT-CFM's after as many velocity steps).
  end <- function(fit) predict(fit, d$source, solver = SolverParam("rk4", steps = 20))
  start_w1 <- wassersteinDistance(d$source, d$target, p = 1)
  expect_lt(wassersteinDistance(end(mfm), d$target, p = 1), 0.2 * start_w1)
  expect_lt(wassersteinDistance(end(mfm), d$target, p = 1), 1.5 * wassersteinDistance(end(ot), d$target, p = 1))
})

test_that("with a constant metric the interpolant stays at zero and metric FM is OT-CFM", {
  d <- half_circle()
  # eps far above the metric's values on the cells: G is nearly constant, the straight line is optimal.
  flat <- fitFlow(d$source, d$target, method = MetricFMParam(sigma = 0.02, eps = 1e6, interpolant_steps = 300),
                  training = mfm_training(), verbose = FALSE)
  energy <- flat$loss[seq_len(300)]
  expect_gt(mean(utils::tail(energy, 30)), 0.9 * mean(energy[1:30]))
  ot <- fitFlow(d$source, d$target, method = OTCFMParam(sigma = 0.02),
                training = TrainingParam(steps = 400, batch_size = 64, seed = 1), verbose = FALSE)
  expect_equal(midway_off_circle(flat, d$source), midway_off_circle(ot, d$source), tolerance = 0.15)
})

test_that("metric FM model files round-trip and print, summary and objects work", {
  d <- half_circle(n = 60)
  fit <- fitFlow(d$source, d$target, method = MetricFMParam(interpolant_steps = 20),
                 training = TrainingParam(steps = 40, batch_size = 32, seed = 1), verbose = FALSE)
  expect_length(fit$loss, 40)
  expect_s3_class(fit$method, "MetricFMParam")
  path <- tempfile(fileext = ".pfm")
  saveFlow(fit, path)
  back <- loadFlow(path)
  expect_s3_class(back$method, "MetricFMParam")
  solver <- SolverParam("rk4", steps = 5)
  expect_equal(predict(back, d$source, solver = solver), predict(fit, d$source, solver = solver))
  expect_output(print(fit), "Metric FM")
  expect_output(print(summary(fit)), "metric=land")
  expect_s3_class(fitFlow(d$source, d$target, method = "metricfm",
                          training = TrainingParam(steps = 510, batch_size = 16), verbose = FALSE)$method,
                  "MetricFMParam")
})

test_that("metric FM takes SingleCellExperiment and Seurat input", {
  skip_if_not_installed("SingleCellExperiment")
  set.seed(3)
  expr <- matrix(rnorm(6 * 80), 6, dimnames = list(paste0("g", 1:6), paste0("c", 1:80)))
  expr[1:2, 41:80] <- expr[1:2, 41:80] + 2
  cond <- rep(c("ctrl", "stim"), each = 40)
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = expr),
                                                    colData = S4Vectors::DataFrame(condition = cond),
                                                    reducedDims = list(PCA = t(expr)))
  method <- MetricFMParam(interpolant_steps = 10)
  training <- TrainingParam(steps = 20, batch_size = 16)
  fit <- fitFlow(sce, condition = "condition", source = "ctrl", target = "stim", method = method,
                 training = training, verbose = FALSE)
  expect_s3_class(fit$method, "MetricFMParam")
  skip_if_not_installed("SeuratObject")
  seu <- popflow:::kang_seurat(expr, data.frame(condition = cond, row.names = colnames(expr)), 3)
  fit2 <- fitFlow(seu, condition = "condition", source = "ctrl", target = "stim", method = method,
                  training = training, verbose = FALSE)
  expect_s3_class(fit2$method, "MetricFMParam")
})

test_that("bad metric FM settings are clear errors naming the argument", {
  expect_error(MetricFMParam(eps = 0), "`eps`.*Fix")
  expect_error(MetricFMParam(bandwidth = -1), "`bandwidth`")
  expect_error(MetricFMParam(interpolant_steps = 1.5), "`interpolant_steps`")
  d <- half_circle(n = 30)
  expect_error(fitFlow(d$source, d$target, method = MetricFMParam(interpolant_steps = 100),
                       training = TrainingParam(steps = 100), verbose = FALSE),
               "`interpolant_steps`.*fewer than the fit's steps.*Fix: use TrainingParam\\(steps = 1100\\)")
  fit <- fitFlow(d$source, d$target, method = MetricFMParam(interpolant_steps = 5),
                 training = TrainingParam(steps = 10, batch_size = 16), verbose = FALSE)
  expect_error(fitFlow(d$source, d$target, resume = fit, training = TrainingParam(steps = 20, batch_size = 16),
                       verbose = FALSE),
               "`resume` is a metric flow matching model, which cannot be resumed")
})

# ggplot2 views: the right layers, facets and data, they build, and bad
# input names the argument.

quick_fit <- function(steps = 120) {
  d <- shifted_pair(n = 150)
  fitFlow(d$source, d$target, method = "icfm", training = quick_training(steps, seed = 1), verbose = FALSE)
}


test_that("plotLoss draws the raw loss and its running mean", {
  fit <- quick_fit()
  p <- plotLoss(fit, smooth = 10)
  expect_s3_class(p, "ggplot")
  expect_equal(layer_geoms(p), "GeomLine")
  expect_equal(nrow(p$data), 2 * length(fit$loss))
  expect_equal(p$data$value[seq_along(fit$loss)], fit$loss)
  expect_equal(nlevels(p$data$curve), 2)
  expect_match(p$labels$title, "I-CFM")
  built <- ggplot2::ggplot_build(p)
  expect_equal(nrow(built$data[[1]]), 2 * length(fit$loss))
  expect_true(p$scales$has_scale("y"))
  expect_false(plotLoss(fit, log = FALSE)$scales$has_scale("y"))
  expect_error(plotLoss(fit, smooth = 0), "`smooth`")
  expect_error(plotLoss(fit, log = NA), "`log`")
  expect_error(plotLoss(list(loss = 1:3)), "`fit`")
  expect_invisible(plot(fit))  # the base-graphics method keeps working
})

test_that("the running mean is a trailing mean over the window", {
  expect_equal(popflow:::running_mean(c(1, 2, 3, 4, 5, 6), 3), c(1, 1.5, 2, 3, 4, 5))
  x <- rnorm(50)
  full <- stats::filter(x, rep(1 / 7, 7), sides = 1)
  expect_equal(popflow:::running_mean(x, 7)[7:50], as.numeric(full[7:50]))
  expect_equal(popflow:::running_mean(x, 1), x)
})

test_that("plotPrediction shows source, observed and predicted cells, faceted per population", {
  set.seed(1)
  src <- matrix(rnorm(300), ncol = 3, dimnames = list(NULL, c("PC1", "PC2", "PC3")))
  obs <- matrix(rnorm(240, 2), ncol = 3, dimnames = list(NULL, c("PC1", "PC2", "PC3")))
  pred <- src + 2
  p <- plotPrediction(pred, obs, src, dims = c(1, 3), size = 0.5)
  expect_s3_class(p, "ggplot")
  expect_equal(layer_geoms(p), "GeomPoint")
  expect_equal(as.vector(table(p$data$set)), c(100, 80, 100))
  expect_equal(p$data$y[p$data$set == "observed"], obs[, 3])
  expect_equal(p$labels$x, "PC1")
  expect_equal(p$labels$y, "PC3")
  expect_s3_class(p$facet, "FacetNull")
  expect_equal(nrow(ggplot2::ggplot_build(p)$data[[1]]), 280)
  # Without source cells; dimensions by name.
  p2 <- plotPrediction(pred, obs, dims = c("PC2", "PC1"))
  expect_equal(levels(droplevels(p2$data$set)), c("observed", "predicted"))
  expect_equal(p2$data$x[p2$data$set == "predicted"], pred[, 2])

  pop <- rep(c("a", "b"), each = 50)
  obs_pop <- rep(c("a", "b", "c"), c(30, 30, 20))
  p3 <- plotPrediction(pred, obs, src, population = pop, observed_population = obs_pop)
  expect_s3_class(p3$facet, "FacetWrap")
  layout <- ggplot2::ggplot_build(p3)$layout$layout
  expect_equal(sort(as.character(layout$population)), c("a", "b", "c"))
  expect_equal(sum(p3$data$population == "a" & p3$data$set == "source"), 50)
  expect_equal(sum(p3$data$population == "c"), 20)

  expect_error(plotPrediction(pred, obs, dims = c(1, 1)), "`dims`")
  expect_error(plotPrediction(pred, obs, dims = c(1, 4)), "`dims`")
  expect_error(plotPrediction(pred, obs, dims = c("PC1", "PC9")), "`dims`")
  expect_error(plotPrediction(pred, obs[, 1:2]), "`observed`")
  expect_error(plotPrediction(pred, obs, src[1:10, ], population = pop, observed_population = obs_pop), "`source`")
  expect_error(plotPrediction(pred, obs, population = pop), "`observed_population`")
  expect_error(plotPrediction(pred, obs, population = pop[1:10], observed_population = obs_pop), "`population`")
  expect_error(plotPrediction("cells", obs), "`predicted`")
})

test_that("plotEmbeddings projects embeddings of an MFM fit to two principal components", {
  set.seed(1)
  mu <- c(-2, -1, 0, 1, 2)
  src <- do.call(rbind, lapply(mu, function(m) matrix(rnorm(120, m), ncol = 2)))
  pop <- rep(paste0("p", seq_along(mu)), each = 60)
  fit <- fitFlow(src, src + 2 * rep(mu, each = 60), population = c(pop, pop),
                 method = MFMParam(k = 5, layers = 2, width = 8, populations_per_step = 5, cells_per_population = 32),
                 training = TrainingParam(steps = 30, seed = 1), verbose = FALSE)
  emb <- embedPopulations(fit, src, pop)
  group <- c(p1 = "low", p2 = "low", p3 = "mid", p4 = "high", p5 = "high")
  p <- plotEmbeddings(emb, color = group)
  expect_s3_class(p, "ggplot")
  expect_equal(layer_geoms(p), c("GeomPoint", "GeomText"))
  expect_equal(p$data$population, rownames(emb))
  expect_equal(p$data$group, unname(group[rownames(emb)]))
  pcs <- stats::prcomp(emb)$x
  expect_equal(abs(p$data$x), abs(unname(pcs[, 1])))
  expect_match(p$labels$x, "^PC1 \\(")
  built <- ggplot2::ggplot_build(p)
  expect_equal(nrow(built$data[[1]]), 5)
  expect_equal(built$data[[2]]$label, rownames(emb))

  two <- matrix(c(1, 2, 3, 4, 5, 6), ncol = 2, dimnames = list(c("a", "b", "c"), c("e1", "e2")))
  p2 <- plotEmbeddings(two, label = FALSE)
  expect_equal(layer_geoms(p2), "GeomPoint")
  expect_equal(p2$data$y, c(4, 5, 6))
  expect_equal(p2$labels$x, "e1")

  expect_error(plotEmbeddings(two, color = c("x", "y")), "`color`")
  expect_error(plotEmbeddings(two[, 1, drop = FALSE]), "`emb`")
  expect_error(plotEmbeddings(letters), "`emb`")
  expect_error(plotEmbeddings(two, label = "yes"), "`label`")
})

test_that("plotMetrics shows each metric per prediction, with population points when present", {
  fit <- quick_fit()
  d <- shifted_pair(n = 150, seed = 2)
  ev <- evaluateFlow(fit, d$source, d$target, solver = SolverParam("rk4", steps = 4))
  p <- plotMetrics(ev)
  expect_s3_class(p, "ggplot")
  expect_equal(layer_geoms(p), "GeomCol")
  expect_s3_class(p$facet, "FacetWrap")
  expect_equal(nrow(p$data), 3 * nrow(ev))
  w1 <- p$data[p$data$metric == "W1", ]
  expect_equal(w1$value[match(ev$prediction, w1$prediction)], ev$W1)
  # The model on top: the first prediction is the last factor level (top of the y axis).
  expect_equal(rev(levels(p$data$prediction))[1], ev$prediction[1])
  built <- ggplot2::ggplot_build(p)
  expect_equal(nrow(built$layout$layout), 3)

  by_pop <- rbind(cbind(ev, population = "a"), cbind(transform(ev, W1 = W1 + 1), population = "b"))
  p2 <- plotMetrics(by_pop, metrics = c("W1", "mean_R2"))
  expect_equal(layer_geoms(p2), c("GeomCol", "GeomPoint"))
  expect_equal(nrow(p2$layers[[2]]$data), 2 * nrow(by_pop))
  bar <- p2$data$value[p2$data$metric == "W1" & p2$data$prediction == ev$prediction[1]]
  expect_equal(bar, ev$W1[1] + 0.5)  # the bar is the mean over populations
  expect_equal(nrow(ggplot2::ggplot_build(p2)$layout$layout), 2)

  expect_error(plotMetrics(ev, metrics = "accuracy"), "`metrics`")
  expect_error(plotMetrics(ev, metrics = "cells"), "`metrics`")
  expect_error(plotMetrics(ev[, -1]), "`evaluation`")
  expect_error(plotMetrics(as.matrix(ev)), "`evaluation`")
})

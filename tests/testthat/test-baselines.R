# Every baseline of evaluateFlow() against a direct computation: "no change",
# "mean shift", "label mean shift" (one and several label columns, and the
# fallback), "oracle shift", the noise floor, the expression R^2 on objects,
# and compareToBaselines() on a table whose answer is known.

# All metrics of evaluateFlow(), computed directly (sets below max_cells: no subsampling).
direct_metrics <- function(p, o) {
  mp <- colMeans(p)
  mo <- colMeans(o)
  upper <- function(x) {
    r <- cor(x)
    r[upper.tri(r)]
  }
  data.frame(W1 = wassersteinDistance(p, o, p = 1), W2 = wassersteinDistance(p, o, p = 2), MMD = mmdDistance(p, o),
             energy = energyDistance(p, o), mean_R2 = 1 - sum((mo - mp)^2) / sum((mo - mean(mo))^2),
             corr_r = cor(upper(p), upper(o)))
}
expect_row <- function(ev, prediction, expected, population = NULL) {
  i <- ev$prediction == prediction & (if (is.null(population)) TRUE else ev$population == population)
  expect_equal(sum(i), 1)
  expect_equal(unlist(ev[i, names(expected)]), unlist(expected), tolerance = 1e-8,
               label = sprintf("%s%s", prediction, if (is.null(population)) "" else paste0(" of ", population)))
}

test_that("a flow's baselines and noise floor equal their direct computation", {
  set.seed(11)
  train_src <- matrix(rnorm(300), ncol = 3)
  train_tgt <- shift_by(matrix(rnorm(360, sd = 1.3), ncol = 3), c(2, -1, 0.5))
  fit <- fitFlow(train_src, train_tgt, method = "icfm", training = quick_training(5), verbose = FALSE)
  source <- matrix(rnorm(150), ncol = 3)
  target <- shift_by(matrix(rnorm(165, sd = 1.3), ncol = 3) %*% diag(c(1, 2, 1)), c(2.5, -1, 0))
  ev <- evaluateFlow(fit, source, target, solver = SolverParam("euler", steps = 2))
  expect_equal(ev$prediction, c("I-CFM", "no change", "mean shift", "oracle shift", "noise floor"))
  expect_named(ev, c("prediction", metric_names, "cells"))
  expect_equal(ev$cells, rep(50L, 5))
  expect_row(ev, "I-CFM", direct_metrics(predict(fit, source, solver = SolverParam("euler", steps = 2)), target))
  expect_row(ev, "no change", direct_metrics(source, target))
  # Mean shift: the change of the mean between the training snapshots.
  expect_row(ev, "mean shift", direct_metrics(shift_by(source, colMeans(train_tgt) - colMeans(train_src)), target))
  # Oracle shift: the source moved onto the observed target mean; its mean R^2 is exactly 1.
  oracle <- shift_by(source, colMeans(target) - colMeans(source))
  expect_row(ev, "oracle shift", direct_metrics(oracle, target))
  expect_equal(ev$mean_R2[ev$prediction == "oracle shift"], 1)
  # Noise floor: two halves of the observed target cells, one against the other.
  h <- halves(nrow(target), seed = 1)
  expect_equal(lengths(h), c(a = 27, b = 28))
  expect_row(ev, "noise floor", direct_metrics(target[h$a, ], target[h$b, ]))
  # Another seed, another split.
  ev3 <- evaluateFlow(fit, source, target, solver = SolverParam("euler", steps = 2), seed = 3, baselines = "noise floor")
  h3 <- halves(nrow(target), seed = 3)
  expect_row(ev3, "noise floor", direct_metrics(target[h3$a, ], target[h3$b, ]))

  # Choosing baselines: TRUE / FALSE as before, names in any order give rows in the canonical order.
  expect_equal(evaluateFlow(fit, source, target, baselines = FALSE, solver = SolverParam("euler", steps = 2))$prediction,
               "I-CFM")
  some <- evaluateFlow(fit, source, target, baselines = c("noise floor", "no change"),
                       solver = SolverParam("euler", steps = 2))
  expect_equal(some$prediction, c("I-CFM", "no change", "noise floor"))
  expect_equal(some, ev[ev$prediction %in% some$prediction, ], ignore_attr = TRUE)
  expect_error(evaluateFlow(fit, source, target, baselines = c("no change", "median")),
               paste0("`baselines` names \"median\", not a baseline; valid names: \"no change\", \"mean shift\", ",
                      "\"label mean shift\", \"oracle shift\", \"noise floor\""), fixed = TRUE)
  expect_error(evaluateFlow(fit, source, target, baselines = "label mean shift"),
               "`baselines` names \"label mean shift\", but the model was not fitted with labels", fixed = TRUE)
  expect_error(evaluateFlow(fit, source, target, baselines = NA), "`baselines` must be TRUE, FALSE or names")
})

test_that("subsampling and the noise floor use the documented seeds when sets exceed max_cells", {
  set.seed(12)
  src <- matrix(rnorm(240), ncol = 2)
  tgt <- matrix(rnorm(300, 1), ncol = 2)
  fit <- fitFlow(src, tgt, method = "icfm", training = quick_training(5), verbose = FALSE)
  ev <- evaluateFlow(fit, src, tgt, max_cells = 40, baselines = c("no change", "noise floor"))
  sub <- function(x, seed) {
    set.seed(seed)
    x[sort(sample.int(nrow(x), 40)), , drop = FALSE]
  }
  expect_equal(ev$W1[2], wassersteinDistance(sub(src, 1), sub(tgt, 2)), tolerance = 1e-8)
  h <- halves(nrow(tgt))
  expect_equal(ev$W2[3], wassersteinDistance(sub(tgt[h$a, ], 1), sub(tgt[h$b, ], 2), p = 2), tolerance = 1e-8)
  # The means behind mean_R2 use every cell.
  expect_equal(ev$mean_R2[3], direct_metrics(tgt[h$a, ], tgt[h$b, ])$mean_R2, tolerance = 1e-8)
})

# Five training populations with known label values: (type, dose) and a shift each.
labelled_populations <- function(n = 40, seed = 21) {
  set.seed(seed)
  design <- data.frame(population = paste0("p", 1:5), type = c("A", "A", "B", "B", "A"),
                       dose = c("lo", "hi", "lo", "hi", "lo"), stringsAsFactors = FALSE)
  shifts <- rbind(c(1, 0, 0), c(2, 0, 0), c(0, 1, 0), c(0, 2, 0), c(3, 0, 1))
  src <- do.call(rbind, lapply(1:5, function(p) matrix(rnorm(3 * n), ncol = 3)))
  tgt <- do.call(rbind, lapply(1:5, function(p) shift_by(matrix(rnorm(3 * (n + 5)), ncol = 3), shifts[p, ])))
  list(design = design, source = src, target = tgt, src_pop = rep(design$population, each = n),
       tgt_pop = rep(design$population, each = n + 5))
}
# The target-minus-source mean of each training population, computed directly.
population_shifts <- function(d) {
  t(sapply(d$design$population, function(p) {
    colMeans(d$target[d$tgt_pop == p, , drop = FALSE]) - colMeans(d$source[d$src_pop == p, , drop = FALSE])
  }))
}

test_that("label mean shift averages the training populations with the same labels, every label column", {
  d <- labelled_populations()
  cols <- d$design[match(c(d$src_pop, d$tgt_pop), d$design$population), c("type", "dose")]
  cgfm <- CGFMParam(populations_per_step = 2, cells_per_population = 16)
  fit <- fitFlow(d$source, d$target, population = c(d$src_pop, d$tgt_pop), label = cols, method = cgfm,
                 training = quick_training(5), verbose = FALSE)
  expect_equal(fit$population_labels, d$design[c("type", "dose")], ignore_attr = TRUE)
  shifts <- population_shifts(d)
  # New populations: q1 (A, lo) shares its labels with p1 and p5; q2 (B, hi) with p4 only.
  set.seed(22)
  new_src <- matrix(rnorm(180), ncol = 3)
  new_tgt <- shift_by(matrix(rnorm(180), ncol = 3), c(2, 0, 0.5))
  pop <- rep(c("q1", "q2"), each = 30)
  lab <- data.frame(type = rep(c("A", "B"), each = 30), dose = rep(c("lo", "hi"), each = 30))
  solver <- SolverParam("euler", steps = 2)
  ev <- evaluateFlow(fit, new_src, new_tgt, population = pop, label = lab, solver = solver)
  expect_equal(ev$prediction, rep(c("CGFM", "no change", "mean shift", "label mean shift", "oracle shift", "noise floor"), 2))
  q1 <- pop == "q1"
  q2 <- pop == "q2"
  expect_row(ev, "label mean shift", direct_metrics(shift_by(new_src[q1, ], colMeans(shifts[c(1, 5), ])), new_tgt[q1, ]), "q1")
  expect_row(ev, "label mean shift", direct_metrics(shift_by(new_src[q2, ], shifts[4, ]), new_tgt[q2, ]), "q2")
  # Mean shift: the average over the five training populations.
  expect_row(ev, "mean shift", direct_metrics(shift_by(new_src[q1, ], colMeans(shifts)), new_tgt[q1, ]), "q1")
  expect_row(ev, "oracle shift", direct_metrics(shift_by(new_src[q2, ], colMeans(new_tgt[q2, ]) - colMeans(new_src[q2, ])),
                                                new_tgt[q2, ]), "q2")
  h <- halves(30)
  expect_row(ev, "noise floor", direct_metrics(new_tgt[q2, ][h$a, ], new_tgt[q2, ][h$b, ]), "q2")
  expect_row(ev, "no change", direct_metrics(new_src[q1, ], new_tgt[q1, ]), "q1")

  # One label column: the average over every population of the same type.
  fit1 <- fitFlow(d$source, d$target, population = c(d$src_pop, d$tgt_pop), label = cols$type, method = cgfm,
                  training = quick_training(5), verbose = FALSE)
  expect_equal(fit1$population_labels, data.frame(label = d$design$type), ignore_attr = TRUE)
  ev1 <- evaluateFlow(fit1, new_src, new_tgt, population = pop, label = lab$type, solver = solver,
                      baselines = "label mean shift")
  expect_row(ev1, "label mean shift", direct_metrics(shift_by(new_src[q1, ], colMeans(shifts[c(1, 2, 5), ])), new_tgt[q1, ]), "q1")
  expect_row(ev1, "label mean shift", direct_metrics(shift_by(new_src[q2, ], colMeans(shifts[3:4, ])), new_tgt[q2, ]), "q2")

  # No training population with the labels: the overall mean shift, and a message saying so.
  unseen <- lab
  unseen$type[q2] <- "C"
  expect_message(ev_u <- evaluateFlow(fit, new_src, new_tgt, population = pop, label = unseen, solver = solver,
                                      unseen_label = "average", baselines = c("mean shift", "label mean shift")),
                 "no training population shares the labels of population 'q2'; its row is the overall mean shift")
  expect_equal(ev_u[ev_u$population == "q2" & ev_u$prediction == "label mean shift", metric_names],
               ev_u[ev_u$population == "q2" & ev_u$prediction == "mean shift", metric_names], ignore_attr = TRUE)
  expect_row(ev_u, "label mean shift", direct_metrics(shift_by(new_src[q1, ], colMeans(shifts[c(1, 5), ])), new_tgt[q1, ]), "q1")
  # A model without recorded population labels (fitted by an older popflow) falls back too.
  old <- fit
  old$population_labels <- NULL
  expect_message(evaluateFlow(old, new_src, new_tgt, population = pop, label = lab, solver = solver,
                              baselines = "label mean shift"), "does not record its training populations' labels")
  # Population models without labels have no label mean shift.
  mfm <- fitFlow(d$source, d$target, population = c(d$src_pop, d$tgt_pop), training = quick_training(5), verbose = FALSE,
                 method = MFMParam(encoder = "mean", width = 8, populations_per_step = 2, cells_per_population = 16))
  expect_null(mfm$population_labels)
  ev_m <- evaluateFlow(mfm, new_src, new_tgt, population = pop, solver = solver)
  expect_equal(unique(ev_m$prediction), c("MFM", "no change", "mean shift", "oracle shift", "noise floor"))
  expect_error(evaluateFlow(mfm, new_src, new_tgt, population = pop, baselines = "label mean shift"), "`baselines`")
})

test_that("compareToBaselines picks the strongest fair baseline, never the oracle, and says so", {
  ev <- data.frame(population = rep(c("a", "b"), each = 6),
                   prediction = rep(c("MFM", "no change", "mean shift", "label mean shift", "oracle shift", "noise floor"), 2),
                   W1 = c(2, 5, 3, 2.5, 1.5, 1,    # a: MFM 2 against label mean shift 2.5
                          3, 5, 3.5, 3.5, 1.5, 1),  # b: MFM 3 against 3.5
                   mean_R2 = c(0.8, -1, 0.9, 0.7, 1, 0.99,
                               0.6, -1, 0.7, 0.8, 1, 0.97),
                   cells = 10L)
  cmp <- compareToBaselines(ev)
  expect_s3_class(cmp, "popflow_comparison")
  w1 <- cmp[cmp$metric == "W1", ]
  expect_equal(w1$best_baseline, "label mean shift")        # mean 3 against mean shift's 3.25; oracle (1.5) excluded
  expect_equal(w1$value, 2.5)
  expect_equal(w1$baseline_value, 3)
  expect_equal(w1$margin, 0.5)
  expect_equal(w1$gap_closed, 0.5 / (3 - 1))
  expect_equal(w1$oracle_shift, 1.5)
  expect_equal(w1$noise_floor, 1)
  expect_equal(w1$populations_won, "2/2")
  expect_match(w1$sentence, "MFM beats the strongest fair baseline, label mean shift, on W1: 2.5 against 3 (17% lower), closing 25% of the gap to the noise floor (1)",
               fixed = TRUE)
  r2 <- cmp[cmp$metric == "mean_R2", ]
  expect_equal(r2$best_baseline, "mean shift")               # 0.8 against label mean shift's 0.75
  expect_equal(r2$margin, 0.7 - 0.8)
  expect_equal(r2$populations_won, "0/2")
  expect_match(r2$sentence, "MFM does not beat the strongest fair baseline, mean shift, on mean_R2: 0.7 against 0.8 (-0.1)",
               fixed = TRUE)
  expect_match(attr(cmp, "verdicts")[["MFM"]], "^MFM beats the strongest fair baseline on 1 of 2 metrics \\(W1\\)\\. MFM beats")
  expect_output(print(cmp), "oracle shift uses the true target mean")
  expect_output(print(cmp[cmp$metric == "W1", c("model", "metric", "value")]), "MFM +W1 +2.5")  # a subset prints too
  # A noise floor above both: the metric cannot separate them at this sample size.
  high_floor <- ev
  high_floor$W1[high_floor$prediction == "noise floor"] <- 4
  w1_high <- compareToBaselines(high_floor)[1, ]
  expect_true(is.na(w1_high$gap_closed))
  expect_match(w1_high$sentence, "both are past the noise floor (4), so at this sample size W1 hardly tells them apart",
               fixed = TRUE)

  # Two models bound with one set of baselines; duplicated baselines must agree.
  other <- ev[ev$prediction == "MFM", ]
  other$prediction <- "CGFM"
  other$W1 <- other$W1 + 2
  both <- compareToBaselines(rbind(ev, other, ev[ev$prediction == "no change", ]))
  expect_equal(unique(both$model), c("MFM", "CGFM"))
  expect_match(attr(both, "verdicts")[["CGFM"]], "on none of the 2 metrics")
  clash <- ev[ev$prediction == "mean shift", ]
  clash$W1 <- 0
  expect_error(compareToBaselines(rbind(ev, clash)), "`evaluation` has different \"mean shift\" rows for population 'a'")
  expect_error(compareToBaselines(ev[ev$prediction %in% c("MFM", "oracle shift"), ]), "no fair baseline rows")
  expect_error(compareToBaselines(ev, headline = "W2"), "`headline`")
  # On a real evaluation without populations.
  set.seed(3)
  s <- matrix(rnorm(200), ncol = 2)
  fit <- fitFlow(s, s + 2, method = "icfm", training = quick_training(5), verbose = FALSE)
  real <- compareToBaselines(evaluateFlow(fit, s, s + 2, solver = SolverParam("euler", steps = 2)))
  expect_equal(nrow(real), 6)
  expect_true(all(is.na(real$populations_won)))
})

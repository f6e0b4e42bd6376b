#' Distances between two sets of cells
#'
#' - `wassersteinDistance()`: exact Wasserstein-1 (`p = 1`, Euclidean cost) or
#'   Wasserstein-2 (`p = 2`, squared Euclidean cost, square root taken) between
#'   the uniform distributions on the rows of `x` and `y`, solved by network
#'   simplex (LEMON). Exact, not a Sinkhorn approximation.
#' - `mmdDistance()`: squared maximum mean discrepancy with RBF kernels
#'   `exp(-gamma |a - b|^2)`, averaged over `gammas` (the set used by Meta Flow
#'   Matching and CellOT), biased V-statistic.
#' - `energyDistance()`: `2 E|X - Y| - E|X - X'| - E|Y - Y'|`.
#'
#' All use every feature. Costs grow with `nrow(x) * nrow(y)`; sets larger than
#' `max_cells` are randomly subsampled (reproducibly, with `seed`).
#'
#' @param x,y Numeric matrices, cells in rows, the same features in columns.
#' @param p 1 or 2.
#' @param gammas RBF kernel parameters.
#' @param max_cells Largest number of cells used from each set.
#' @param seed Seed for the subsampling.
#' @return A single number.
#' @examples
#' set.seed(1)
#' a <- matrix(rnorm(200), ncol = 2)
#' b <- a + 1
#' wassersteinDistance(a, b, p = 2)  # sqrt(2): a translation by (1, 1)
#' mmdDistance(a, b)
#' energyDistance(a, b)
#' @name distances
NULL

#' @rdname distances
#' @export
wassersteinDistance <- function(x, y, p = 1, max_cells = 2000, seed = 1) {
  if (!(identical(p, 1) || identical(p, 2) || identical(p, 1L) || identical(p, 2L))) {
    pf_abort("p", sprintf("must be 1 or 2, not %s", deparse1(p)), "use p = 1 (W1) or p = 2 (W2)")
  }
  xy <- distance_inputs(x, y, max_cells, seed)
  pf_wasserstein(xy$x, xy$y, as.integer(p))
}

#' @rdname distances
#' @export
mmdDistance <- function(x, y, gammas = c(2, 1, 0.5, 0.1, 0.01, 0.005), max_cells = 2000, seed = 1) {
  if (!is.numeric(gammas) || !length(gammas) || any(!is.finite(gammas)) || any(gammas <= 0)) {
    pf_abort("gammas", "must be positive numbers", "use e.g. gammas = c(2, 1, 0.5, 0.1)")
  }
  xy <- distance_inputs(x, y, max_cells, seed)
  pf_mmd(xy$x, xy$y, as.numeric(gammas))
}

#' @rdname distances
#' @export
energyDistance <- function(x, y, max_cells = 2000, seed = 1) {
  xy <- distance_inputs(x, y, max_cells, seed)
  pf_energy(xy$x, xy$y)
}

distance_inputs <- function(x, y, max_cells, seed) {
  x <- as_cell_matrix(x, "x")
  y <- as_cell_matrix(y, "y")
  if (ncol(x) != ncol(y)) {
    pf_abort("y", sprintf("has %d features but `x` has %d", ncol(y), ncol(x)), "compare cells in the same space")
  }
  max_cells <- check_count(max_cells, "max_cells", min = 2)
  list(x = subsample_rows(x, max_cells, seed), y = subsample_rows(y, max_cells, seed + 1))
}

subsample_rows <- function(x, max_cells, seed) {
  if (nrow(x) <= max_cells) return(x)
  x[with_seed(seed, sort(sample.int(nrow(x), max_cells))), , drop = FALSE]
}

# Every metric of a prediction against observed cells.
metric_row <- function(predicted, observed, max_cells, seed) {
  p <- subsample_rows(predicted, max_cells, seed)
  o <- subsample_rows(observed, max_cells, seed + 1)
  data.frame(W1 = pf_wasserstein(p, o, 1L), W2 = pf_wasserstein(p, o, 2L),
             MMD = pf_mmd(p, o, c(2, 1, 0.5, 0.1, 0.01, 0.005)), energy = pf_energy(p, o),
             mean_R2 = pf_mean_r2(predicted, observed), corr_r = pf_correlation_r(predicted, observed))
}

#' Evaluate predicted cells against observed cells, beside trivial baselines
#'
#' Moves `source` cells from `from` to `to` with the fitted flow and compares
#' the prediction with the observed `target` cells by exact W1 and W2, RBF MMD,
#' energy distance, R^2 of the feature means and the Pearson r between the
#' feature-correlation structures. Two baselines are scored the same way: "no
#' change" (the source cells themselves) and "mean shift" (source cells plus
#' the change of the mean between the training snapshots at `from` and `to`,
#' linearly interpolated for times between snapshots). A model that does not
#' beat them has learnt nothing.
#'
#' For a population model (MFM, CGFM), every population is scored on its own:
#' its source cells are moved from source to target (each population embedded
#' from its own source cells) and compared with its observed target cells.
#' There the "mean shift" baseline adds the average, over the training
#' populations, of the target-minus-source mean.
#'
#' @param object A model from [fitFlow()].
#' @param source Cells at time `from`, or a SingleCellExperiment or Seurat
#'   object for a model fitted on one (see [cell-objects]).
#' @param target Observed cells at time `to`; for an object `source`, missing
#'   (its own target cells) or a second object.
#' @inheritParams predict.popflow_flow
#' @param max_cells Largest number of cells per set for W1, W2, MMD and energy
#'   distance (random subsample, reproducible through `seed`).
#' @param seed Seed of that subsample (the session's random number stream is
#'   left as it was).
#' @param baselines Also score the baselines.
#' @param population,target_population Population models only: the
#'   population of each source and of each target cell (`target_population`
#'   may be left out when `source` and `target` are index-paired, as in
#'   [simulateLetters()]). Every population of `source` needs target cells.
#' @param label Population models only: labels of each source cell, as in
#'   [predict.popflow_meta()].
#' @param unseen_label Population models only: see [predict.popflow_meta()].
#' @return A data.frame, one row per prediction (model, "no change",
#'   "mean shift"), lower is better except for `mean_R2` and `corr_r`; for a
#'   population model one such row per population and prediction, with a
#'   `population` column first. `cells` is the number of source cells.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' target <- source %*% matrix(c(0, 1, -1, 0), 2) + 3   # rotate and shift
#' fit <- fitFlow(source, target, training = TrainingParam(steps = 300), verbose = FALSE)
#' evaluateFlow(fit, source, target)
#'
#' # A population model, scored per population of simulated letters.
#' train <- simulateLetters(c("L", "T", "V"), rotations = 2, points = 300, seed = 1)
#' pop <- rep(train$cells$population, 2)
#' mfm <- fitFlow(train$source, train$target, population = pop,
#'                method = MFMParam(k = 5, width = 16, populations_per_step = 3, cells_per_population = 64),
#'                training = TrainingParam(steps = 50), verbose = FALSE)
#' test <- simulateLetters("L", rotations = 1, points = 300, seed = 2)
#' evaluateFlow(mfm, test$source, test$target, population = test$cells$population,
#'              solver = SolverParam("rk4", steps = 8), max_cells = 300)
#' @export
evaluateFlow <- function(object, source, target, from = NULL, to = NULL, solver = SolverParam(),
                         max_cells = 1000, seed = 1, baselines = TRUE, population = NULL, target_population = NULL,
                         label = NULL, unseen_label = c("error", "average")) {
  if (!inherits(object, "popflow_flow")) pf_abort("object", "must be a model from fitFlow()", "fit one with fitFlow() or load one with loadFlow()")
  if (is_cell_object(source)) {
    return(evaluate_cell_object(object, source, if (!missing(target)) target, from, to, solver, max_cells, seed, baselines))
  }
  source <- same_features(as_cell_matrix(source, "source"), "source", object$feature_names, object$n_features)
  target <- same_features(as_cell_matrix(target, "target"), "target", object$feature_names, object$n_features)
  max_cells <- check_count(max_cells, "max_cells", min = 2)
  if (inherits(object, "popflow_meta")) {
    if (!is.null(from) || !is.null(to)) {
      pf_abort(if (is.null(from)) "to" else "from", "is not used by population models",
               "they move source cells (time 0) to target cells (time 1)")
    }
    return(evaluate_populations(object, source, target, population, target_population, label, unseen_label,
                                solver, max_cells, seed, baselines))
  }
  if (!is.null(population) || !is.null(target_population) || !is.null(label)) {
    pf_abort(if (!is.null(label)) "label" else "population", "is used only by population models (MFM, CGFM)")
  }
  t0 <- if (is.null(from)) object$times[1] else resolve_time(object, from, "from")
  t1 <- if (is.null(to)) object$times[length(object$times)] else resolve_time(object, to, "to")
  predicted <- run_transport(object, source, c(t0, t1), solver, object$threads)[[2]]
  rows <- list(cbind(prediction = method_label(object$method), metric_row(predicted, target, max_cells, seed)))
  if (baselines) {
    shift <- mean_at(object, t1) - mean_at(object, t0)
    shifted <- sweep(source, 2, shift, "+")
    rows <- c(rows, list(
      cbind(prediction = "no change", metric_row(source, target, max_cells, seed)),
      cbind(prediction = "mean shift", metric_row(shifted, target, max_cells, seed))
    ))
  }
  out <- do.call(rbind, rows)
  out$cells <- nrow(source)
  out
}

# evaluateFlow() for MFM / CGFM: metric rows per population.
evaluate_populations <- function(object, source, target, population, target_population, label, unseen_label,
                                 solver, max_cells, seed, baselines) {
  src_pop <- check_population(population, nrow(source))
  if (is.null(target_population)) {
    if (nrow(target) != nrow(source)) {
      pf_abort("target_population", "is missing",
               "give the population of every target cell (source and target differ in their numbers of cells)")
    }
    target_population <- src_pop
  }
  tgt_pop <- check_population(target_population, nrow(target), "target_population")
  pops <- unique(src_pop)
  lacking <- setdiff(pops, tgt_pop)
  if (length(lacking)) {
    pf_abort("target_population", sprintf("has no cells of population '%s'", lacking[1]),
             "every population of the source cells needs observed target cells to be scored")
  }
  predicted <- meta_transport(object, source, src_pop, label, c(0, 1), solver, object$threads,
                              unseen_label = unseen_label)[[2]]
  shift <- population_mean_shift(object)
  label_model <- method_label(object$method)
  rows <- lapply(pops, function(p) {
    s <- source[src_pop == p, , drop = FALSE]
    o <- target[tgt_pop == p, , drop = FALSE]
    r <- list(cbind(prediction = label_model, metric_row(predicted[src_pop == p, , drop = FALSE], o, max_cells, seed)))
    if (baselines) {
      r <- c(r, list(cbind(prediction = "no change", metric_row(s, o, max_cells, seed)),
                     cbind(prediction = "mean shift", metric_row(sweep(s, 2, shift, "+"), o, max_cells, seed))))
    }
    cbind(population = p, do.call(rbind, r), cells = nrow(s))
  })
  out <- do.call(rbind, rows)
  rownames(out) <- NULL
  out
}

# Training-data mean at a model time, linearly interpolated between snapshots.
mean_at <- function(object, t) {
  ok <- stats::complete.cases(object$time_means)
  tt <- object$times[ok]
  vapply(seq_len(object$n_features), function(j) {
    stats::approx(tt, object$time_means[ok, j], xout = t, rule = 2)$y
  }, numeric(1))
}

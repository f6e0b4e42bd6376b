# evaluateFlow(): predicted against observed cells, beside the "no change"
# and "mean shift" baselines; for population models and for single-cell
# objects with populations, per population.

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
#'   [predict.popflow_population()].
#' @param unseen_label Population models only: see [predict.popflow_population()].
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
  object <- as_model(object)
  max_cells <- check_count(max_cells, "max_cells", min = 2)
  if (is_cell_object(source)) {
    return(evaluate_cell_object(object, source, if (!missing(target)) target, from, to, solver, max_cells, seed, baselines))
  }
  source <- same_features(as_cell_matrix(source, "source"), "source", object$feature_names, object$n_features)
  target <- same_features(as_cell_matrix(target, "target"), "target", object$feature_names, object$n_features)
  evaluate_model(object, source, target, from = from, to = to, solver = solver, max_cells = max_cells, seed = seed,
                 baselines = baselines, population = population, target_population = target_population,
                 label = label, unseen_label = unseen_label)
}

# Metric rows of a model: a flow's prediction from `from` to `to`; a population model's, per population.
evaluate_model <- function(object, source, target, from, to, solver, max_cells, seed, baselines, population,
                           target_population, label, unseen_label) {
  UseMethod("evaluate_model")
}

#' @export
evaluate_model.popflow_flow <- function(object, source, target, from, to, solver, max_cells, seed, baselines,
                                        population, target_population, label, unseen_label) {
  if (!is.null(population) || !is.null(target_population) || !is.null(label)) {
    pf_abort(if (!is.null(label)) "label" else "population", "is used only by population models (MFM, CGFM)")
  }
  t0 <- if (is.null(from)) object$times[1] else resolve_time(object, from, "from")
  t1 <- if (is.null(to)) object$times[length(object$times)] else resolve_time(object, to, "to")
  predicted <- move_cells(object, source, c(t0, t1), solver, object$threads)[[2]]
  shift <- mean_at(object, t1) - mean_at(object, t0)
  out <- prediction_rows(object, predicted, source, target, shift, max_cells, seed, baselines)
  out$cells <- nrow(source)
  out
}

#' @export
evaluate_model.popflow_population <- function(object, source, target, from, to, solver, max_cells, seed, baselines,
                                              population, target_population, label, unseen_label) {
  if (!is.null(from) || !is.null(to)) {
    pf_abort(if (is.null(from)) "to" else "from", "is not used by population models",
             "they move source cells (time 0) to target cells (time 1)")
  }
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
  predicted <- move_cells(object, source, c(0, 1), solver, object$threads, population = src_pop, label = label,
                          unseen_label = unseen_label)[[2]]
  shift <- population_mean_shift(object)
  rows <- lapply(pops, function(p) {
    s <- source[src_pop == p, , drop = FALSE]
    r <- prediction_rows(object, predicted[src_pop == p, , drop = FALSE], s, target[tgt_pop == p, , drop = FALSE],
                         shift, max_cells, seed, baselines)
    cbind(population = p, r, cells = nrow(s))
  })
  out <- do.call(rbind, rows)
  rownames(out) <- NULL
  out
}

# The model's prediction and (with `baselines`) "no change" and "mean shift"
# (`source` moved by `shift`), each scored against the observed cells.
prediction_rows <- function(object, predicted, source, observed, shift, max_cells, seed, baselines) {
  rows <- list(cbind(prediction = method_label(object$method), metric_row(predicted, observed, max_cells, seed)))
  if (baselines) {
    rows <- c(rows, list(
      cbind(prediction = "no change", metric_row(source, observed, max_cells, seed)),
      cbind(prediction = "mean shift", metric_row(sweep(source, 2, shift, "+"), observed, max_cells, seed))
    ))
  }
  do.call(rbind, rows)
}

# Every metric of a prediction against observed cells.
metric_row <- function(predicted, observed, max_cells, seed) {
  p <- subsample_rows(predicted, max_cells, seed)
  o <- subsample_rows(observed, max_cells, seed + 1)
  data.frame(W1 = pf_wasserstein(p, o, 1L), W2 = pf_wasserstein(p, o, 2L),
             MMD = pf_mmd(p, o, c(2, 1, 0.5, 0.1, 0.01, 0.005)), energy = pf_energy(p, o),
             mean_R2 = pf_mean_r2(predicted, observed), corr_r = pf_correlation_r(predicted, observed))
}

# Training-data mean at a model time, linearly interpolated between snapshots.
mean_at <- function(object, t) {
  ok <- stats::complete.cases(object$time_means)
  tt <- object$times[ok]
  vapply(seq_len(object$n_features), function(j) {
    stats::approx(tt, object$time_means[ok, j], xout = t, rule = 2)$y
  }, numeric(1))
}

# The average over training populations of the target-minus-source mean
# ("mean shift" baseline of a population model).
population_mean_shift <- function(object) {
  pm <- object$population_means
  if (is.null(pm)) return(object$time_means[2, ] - object$time_means[1, ])  # models fitted before it was kept
  d <- pm$target - pm$source
  colMeans(d[stats::complete.cases(d), , drop = FALSE])
}

# evaluateFlow() on objects: observed cells are the target-condition (or
# time `to`) cells of `target`, or of `source` itself.
evaluate_cell_object <- function(object, source, target, from, to, solver, max_cells, seed, baselines) {
  src <- object_source_cells(object, source, from, "source")
  src$x <- same_features(src$x, "source", object$feature_names, object$n_features)
  spec <- src$spec
  observed_object <- if (is.null(target)) source else target
  if (!is_cell_object(observed_object)) {
    pf_abort("target", "must be a single-cell object like `source`, or missing",
             "leave it out to compare with the target cells of `source`")
  }
  obs_meta <- cell_columns(observed_object)
  obs_coords <- same_features(layout_coordinates(observed_object, spec, "target"), "target", object$feature_names,
                              object$n_features)
  obs_column <- spec$condition %||% spec$time
  obs_value <- if (!is.null(spec$condition)) spec$target else to %||% object$time_labels[length(object$time_labels)]
  if (is.null(target)) fitted_columns(obs_column, source, obs_meta, "source")
  obs <- cells_where(obs_meta, obs_column, obs_value, if (is.null(target)) "source" else "target")
  if (!length(spec$population)) {
    return(evaluateFlow(object, src$x, obs_coords[obs, , drop = FALSE], from = from, to = to, solver = solver,
                        max_cells = max_cells, seed = seed, baselines = baselines))
  }
  fitted_columns(spec$population, observed_object, obs_meta, if (is.null(target)) "source" else "target")
  obs_population <- population_ids(obs_meta, spec$population)[obs]
  shared <- intersect(unique(src$population), obs_population)
  if (!length(shared)) {
    pf_abort("source", "has no population with both source and observed target cells",
             "evaluate on cells of populations that have both conditions")
  }
  keep <- src$population %in% shared
  in_obs <- obs_population %in% shared
  by_population <- evaluate_by_population(object, src$x[keep, , drop = FALSE], obs_coords[obs[in_obs], , drop = FALSE],
                                          src$population[keep], obs_population[in_obs], rows_of(src$label, keep),
                                          from, to, solver, max_cells, seed, baselines)
  rows <- lapply(shared, function(p) {
    scores <- by_population[by_population$population == p, names(by_population) != "population", drop = FALSE]
    first <- which(src$population == p)[1]
    ids <- data.frame(population = rep(p, nrow(scores)), stringsAsFactors = FALSE)
    for (nm in spec$population) ids[[nm]] <- rep(as.character(src$meta[[nm]][src$cells][first]), nrow(scores))
    cbind(ids, scores)
  })
  out <- do.call(rbind, rows)
  rownames(out) <- NULL
  out
}

# Metric rows of each population (column `population` first) of source cells
# against observed cells: a population model embeds each population, a flow
# moves each population's cells on their own.
evaluate_by_population <- function(object, source, observed, src_pop, obs_pop, label, from, to, solver, max_cells,
                                   seed, baselines) {
  UseMethod("evaluate_by_population")
}

#' @export
evaluate_by_population.popflow_flow <- function(object, source, observed, src_pop, obs_pop, label, from, to, solver,
                                                max_cells, seed, baselines) {
  do.call(rbind, lapply(unique(src_pop), function(p) {
    cbind(population = p, evaluate_model(object, source[src_pop == p, , drop = FALSE],
                                         observed[obs_pop == p, , drop = FALSE], from, to, solver, max_cells, seed,
                                         baselines, NULL, NULL, NULL, "error"))
  }))
}

#' @export
evaluate_by_population.popflow_population <- function(object, source, observed, src_pop, obs_pop, label, from, to,
                                                      solver, max_cells, seed, baselines) {
  evaluate_model(object, source, observed, NULL, NULL, solver, max_cells, seed, baselines, src_pop, obs_pop, label,
                 "error")
}

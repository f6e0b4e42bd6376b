# predict() and sampleTrajectories(): cells moved through a fitted model.
# move_cells() integrates them, for a flow directly, for a population model
# after embedding each population.

#' Predict cells with a fitted flow
#'
#' Integrates `dx/dt = v(x, t)` from time `from` to time `to` for every cell
#' of `newdata` (Algorithm 2), returning the predicted cells.
#'
#' @param object A model from [fitFlow()].
#' @param newdata Cells to move (cells x features, the features used in
#'   fitting). For target-FM and diffusion models it may be `NULL`: `n` cells
#'   are drawn from the model's source (Gaussian, or the [sources] it was
#'   fitted with, as its model file stores them) and moved to the cells. Or a SingleCellExperiment or Seurat object, for a
#'   model fitted on one: see [cell-objects].
#' @param from,to Start and end times: time labels, or numbers on the fitted
#'   time scale (so times between snapshots work). Default: the first and the
#'   last snapshot.
#' @param solver A [SolverParam()] object.
#' @param n,seed Number of cells and seed for target-FM generation.
#' @param threads LibTorch threads.
#' @param device `NULL` (the model's device when available, else CPU), `"cpu"` or `"cuda"`.
#' @param verbose Show a progress bar when the prediction runs longer than a
#'   few seconds (Ctrl-C stops it either way).
#' @param ... Nothing: an argument that lands here (a misspelt name, a
#'   solver setting such as `steps` given directly) is an error that names it
#'   and says where it belongs (e.g. `solver = SolverParam(steps = 10)`).
#' @return A matrix of predicted cells, one row per row of `newdata`; for an
#'   object, an object of the same kind holding the predicted cells. For an
#'   unbalanced flow ([UnbalancedParam()]) the matrix has an attribute
#'   `"weight"`: each predicted cell's mass relative to its mass at `from`
#'   (`exp` of the integrated growth rate; above 1 where cells proliferate,
#'   below 1 where they die), and an object a `weight` column in its cell
#'   metadata (colData, meta.data). Weighted summaries: [cellProportions()],
#'   and the `weights` of [wassersteinDistance()] and [evaluateFlow()].
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' fit <- fitFlow(source, source + 2, training = TrainingParam(steps = 200), verbose = FALSE)
#' head(predict(fit, source, solver = SolverParam("rk4", steps = 8)))
#' @export
predict.popflow_flow <- function(object, newdata = NULL, from = NULL, to = NULL, solver = SolverParam(),
                                 n = NULL, seed = 1, threads = object$threads, device = NULL, verbose = TRUE, ...) {
  check_dots(..., .verb = "predict", .params = c(solver = "SolverParam"))
  if (is_cell_object(newdata)) return(predict_cell_object(object, newdata, from, to, solver, threads, device, verbose))
  x <- start_cells(object, newdata, n, seed)
  t0 <- if (is.null(from)) object$times[1] else resolve_time(object, from, "from")
  t1 <- if (is.null(to)) object$times[length(object$times)] else resolve_time(object, to, "to")
  if (!is.null(device)) device <- check_device(device)
  states <- move_cells(as_model(object), x, c(t0, t1), solver, threads, device, verbose = verbose)
  pred <- states[[2]]
  if (!is.null(attr(states, "weight"))) attr(pred, "weight") <- attr(states, "weight")[[2]]
  pred
}

#' Predict cells of (new) populations with an MFM or CGFM model
#'
#' Algorithm 2 of Meta Flow Matching: the source cells of each population are
#' embedded once (at most `max_cells` of them, see [MFMParam()]), then every
#' cell is moved by integrating `dx/dt = v(x, t | phi(population), labels)`
#' from 0 to 1. Populations need not have been seen in training (MFM); label
#' values must have been (see [MFMParam()] for the error on an unseen value).
#'
#' @param object A model from [fitFlow()] with `method = "mfm"` or `"cgfm"`.
#' @param newdata Source cells (cells x features, the fitted features), a
#'   population store ([PopulationStore()]), or a
#'   SingleCellExperiment or Seurat object for a model fitted on one (its
#'   populations and labels are then read from the fitted columns; see
#'   [cell-objects]).
#' @param population The population of each row of `newdata`; a population's
#'   cells are embedded together. For CGFM it may be `NULL` (the label
#'   combinations are the populations). When `newdata` is a population store
#'   ([PopulationStore()]): the store populations to predict (`NULL`: all);
#'   each population's source cells (its control set's, when shared) are read
#'   from the store with its labels.
#' @param label Labels of each row of `newdata`, as in fitting (a vector, or a
#'   data.frame with the fitted label columns).
#' @param unseen_label What a categorical label value not seen in training
#'   does: `"error"`, or `"average"`: the population is conditioned on the mean
#'   of the learnt embeddings of all training values of that label (what the
#'   MFM paper's CGFM does for unseen populations: the average of the training
#'   one-hot conditions).
#' @param solver A [SolverParam()] object.
#' @param threads LibTorch threads.
#' @param device `NULL` (the model's device when available, else CPU), `"cpu"` or `"cuda"`.
#' @param verbose Show a progress bar when the prediction runs longer than a
#'   few seconds (Ctrl-C stops it either way).
#' @param ... Nothing: an argument that lands here (a misspelt name, a
#'   solver setting such as `steps` given directly) is an error that names it
#'   and says where it belongs (e.g. `solver = SolverParam(steps = 10)`).
#' @return A matrix of predicted target cells, one row per row of `newdata`, in the same order;
#'   for an object, an object of the same kind (see [cell-objects]); for a
#'   store, the predicted cells of each chosen population in turn, with each
#'   row's population as the attribute `"population"`.
#' @examples
#' set.seed(1)
#' mu <- c(-2, -1, 1, 2)
#' src <- do.call(rbind, lapply(mu, function(m) matrix(rnorm(200, m), ncol = 2)))
#' pop <- rep(paste0("p", seq_along(mu)), each = 100)
#' fit <- fitFlow(src, src + 2 * rep(mu, each = 100), population = c(pop, pop),
#'                method = MFMParam(k = 5, width = 16, populations_per_step = 4, cells_per_population = 64),
#'                training = TrainingParam(steps = 100), verbose = FALSE)
#' new <- matrix(rnorm(100, 0.5), ncol = 2)
#' colMeans(predict(fit, new, population = rep("new", 50), solver = SolverParam("rk4", steps = 8)))
#' @aliases predict.popflow_meta
#' @export
predict.popflow_population <- function(object, newdata, population = NULL, label = NULL, solver = SolverParam(),
                                       threads = object$threads, device = NULL, unseen_label = c("error", "average"),
                                       verbose = TRUE, ...) {
  check_dots(..., .verb = "predict", .params = c(solver = "SolverParam"))
  object <- as_model(object)
  if (is_cell_object(newdata)) {
    return(predict_cell_object(object, newdata, solver = solver, threads = threads, device = device,
                               verbose = verbose, unseen_label = unseen_label))
  }
  if (is_population_store(newdata)) {
    if (!is.null(label)) pf_abort("label", "is read from the store", "leave `label` out when `newdata` is a store")
    cells <- store_source_cells(newdata, store_populations(newdata, population), object)
    x <- same_features(cells$x, "newdata", object$feature_names, object$n_features)
    out <- move_cells(object, x, c(0, 1), solver, threads, device, cells$population, cells$label, unseen_label,
                      verbose)[[2]]
    attr(out, "population") <- cells$population
    return(out)
  }
  if (missing(newdata) || is.null(newdata)) {
    pf_abort("newdata", "is missing", "give the source cells to move (a cells x features matrix)")
  }
  x <- same_features(as_cell_matrix(newdata, "newdata"), "newdata", object$feature_names, object$n_features)
  move_cells(object, x, c(0, 1), solver, threads, device, population, label, unseen_label, verbose)[[2]]
}

# Models saved with saveRDS() before the rename have class "popflow_meta" first.
#' @export
predict.popflow_meta <- predict.popflow_population

#' Trajectories of cells through a fitted flow
#'
#' @inheritParams predict.popflow_flow
#' @param x Cells at time `times[1]`: a cells x features matrix, or a
#'   SingleCellExperiment or Seurat object for a model fitted on one (its
#'   source cells, as for [predict()][cell-objects]; for a time course, those
#'   at time `times[1]`, and populations and labels from the fitted columns).
#' @param times Increasing (or decreasing) times at which to record the cells;
#'   labels or numbers on the fitted time scale. Default: 11 equally spaced
#'   times over the fitted range. For population models (MFM, CGFM) the
#'   range is 0 (source) to 1 (target).
#' @param population,label Population models only: the population of each row
#'   of `x` and its labels, as in [predict.popflow_population()]; each population is
#'   embedded once, from its cells in `x`.
#' @param verbose Show a progress bar when it runs longer than a few seconds.
#' @return An array cells x features x times. For an unbalanced flow
#'   ([UnbalancedParam()]) it has an attribute `"weight"`, a cells x times
#'   matrix of each cell's mass relative to its mass at `times[1]`.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(200), ncol = 2)
#' fit <- fitFlow(source, source + 2, training = TrainingParam(steps = 100), verbose = FALSE)
#' traj <- sampleTrajectories(fit, source[1:5, ], times = seq(0, 1, by = 0.25))
#' dim(traj)
#' # A population model: the trajectories of one population's cells.
#' mu <- c(-2, -1, 1, 2)
#' src <- do.call(rbind, lapply(mu, function(m) matrix(rnorm(200, m), ncol = 2)))
#' pop <- rep(paste0("p", seq_along(mu)), each = 100)
#' mfm <- fitFlow(src, src + 2 * rep(mu, each = 100), population = c(pop, pop),
#'                method = MFMParam(k = 5, width = 16, populations_per_step = 4, cells_per_population = 64),
#'                training = TrainingParam(steps = 50), verbose = FALSE)
#' traj <- sampleTrajectories(mfm, src[1:100, ], times = c(0, 0.5, 1), population = pop[1:100],
#'                            solver = SolverParam("rk4", steps = 8))
#' dim(traj)
#' @export
sampleTrajectories <- function(object, x, times = NULL, solver = SolverParam(), threads = object$threads,
                               population = NULL, label = NULL, verbose = TRUE) {
  object <- as_model(object)
  if (is_cell_object(x)) {
    if (!is.null(population) || !is.null(label)) {
      pf_abort(if (is.null(population)) "label" else "population", "is read from the object's fitted columns",
               "leave it out when `x` is a single-cell object")
    }
    from <- if (!is.null(times) && !is.null(object$cell_object$time)) times[[1]]
    src <- object_source_cells(object, x, from, "x")
    x <- src$x
    population <- src$population
    label <- src$label
  }
  x <- same_features(as_cell_matrix(x, "x"), "x", object$feature_names, object$n_features)
  if (is.null(times)) times <- seq(min(object$times), max(object$times), length.out = 11)
  if (length(times) < 2) pf_abort("times", "needs at least two time points", "use e.g. times = c(0, 0.5, 1)")
  tt <- vapply(seq_along(times), function(i) resolve_time(object, times[[i]], "times"), numeric(1))
  d <- diff(tt)
  if (!(all(d > 0) || all(d < 0))) pf_abort("times", "must be strictly increasing or strictly decreasing", "sort the times, e.g. sort(unique(times))")
  states <- move_cells(object, x, tt, solver, threads, population = population, label = label, verbose = verbose)
  out <- array(unlist(states), dim = c(nrow(x), ncol(x), length(tt)),
               dimnames = list(rownames(x), object$feature_names, as.character(times)))
  if (!is.null(attr(states, "weight"))) {
    attr(out, "weight") <- matrix(unlist(attr(states, "weight")), nrow(x), length(tt),
                                  dimnames = list(rownames(x), as.character(times)))
  }
  out
}

# Cells `x` moved through the model: their states at `times`, a list of
# matrices. Population models embed each population (`population`) once and
# condition on it and its labels.
# With `verbose`, a progress bar once it has run a few seconds.
move_cells <- function(object, x, times, solver, threads, device = NULL, population = NULL, label = NULL,
                       unseen_label = "error", verbose = FALSE) {
  UseMethod("move_cells")
}

#' @export
move_cells.popflow_flow <- function(object, x, times, solver, threads, device = NULL, population = NULL, label = NULL,
                                    unseen_label = "error", verbose = FALSE) {
  if (!is.null(population) || !is.null(label)) {
    pf_abort(if (is.null(population)) "label" else "population", "is used only by population models (MFM, CGFM)")
  }
  solver <- expect_param(solver, "solver", "SolverParam")
  threads <- check_count(threads, "threads")
  res <- checked_states(pf_transport(flow_handle(object, device), x, times, NULL, engine_config(solver), threads,
                                    prediction_progress(verbose, nrow(x))), solver)
  states <- named_states(res$states, x, object)
  # An unbalanced flow's cells carry masses (relative to their start).
  if (!is.null(res$log_mass)) {
    weights <- lapply(res$log_mass, exp)
    if (!all(vapply(weights, function(w) all(is.finite(w)), logical(1)))) {
      pf_abort("object", "gave non-finite cell weights: its growth rate is not finite along these cells' paths",
               "refit with a lower `lr`, or give cells on the scale of the training cells")
    }
    attr(states, "weight") <- lapply(weights, function(w) stats::setNames(w, rownames(x)))
  }
  states
}

#' @export
move_cells.popflow_population <- function(object, x, times, solver, threads, device = NULL, population = NULL,
                                          label = NULL, unseen_label = "error", verbose = FALSE) {
  unseen_label <- check_choice(unseen_label[1], "unseen_label", c("error", "average"))
  solver <- expect_param(solver, "solver", "SolverParam")
  threads <- check_count(threads, "threads")
  if (!is.null(device)) device <- check_device(device)
  cols <- label_columns(label, nrow(x))
  if (length(object$labels) && !length(cols)) {
    pf_abort("label", "is missing", sprintf("this model was fitted with labels (%s): give them for every cell",
                                            paste(names(object$labels), collapse = ", ")))
  }
  if (!is.null(names(cols)) && identical(names(cols), "label") && length(object$labels) == 1) {
    names(cols) <- names(object$labels)
  }
  pops <- population_codes(population, cols, nrow(x), object$method)
  check_graph_sizes(object$method, tabulate(pops$code, length(pops$names)), pops$names, "cells")
  labels <- encode_labels(cols, pops$code, pops$names, object$labels, unseen = unseen_label)
  res <- checked_states(pf_population_transport(flow_handle(object, device), x, pops$code - 1L, length(pops$names),
                                                 labels$codes, labels$covariates, times, engine_config(solver), threads,
                                                 prediction_progress(verbose, nrow(x))), solver)
  named_states(res$states, x, object)
}

# The engine's progress hook of a prediction (see r_ode_progress() in the
# glue): a bar that cli draws only once the work has run a few seconds
# (option cli.progress_show_after, 2 s). Ctrl-C while R draws it becomes
# FALSE, which stops the solver; the glue then raises R's interrupt.
prediction_progress <- function(verbose, n, envir = parent.frame()) {
  if (!isTRUE(verbose)) return(NULL)
  id <- cli::cli_progress_bar(sprintf("Predicting %d cells", n), total = 100, .envir = envir)
  function(fraction) {
    tryCatch({
      cli::cli_progress_update(id = id, set = floor(100 * fraction), .envir = envir)
      TRUE
    }, interrupt = function(e) FALSE)
  }
}

named_states <- function(states, x, object) {
  lapply(states, function(s) {
    dimnames(s) <- list(rownames(x), object$feature_names)
    s
  })
}

# A time given by the user (a label, or a number on the model's time scale) -> model time.
resolve_time <- function(object, t, arg) {
  labels <- object$time_labels
  if (is.character(t) || is.factor(t)) {
    k <- match(as.character(t), as.character(labels))
    if (length(t) != 1 || is.na(k)) {
      pf_abort(arg, sprintf("must be one of the time labels %s", paste(labels, collapse = ", ")),
               "use a time label of the fitted data, or a number on its time scale")
    }
    return(object$times[k])
  }
  rng <- range(object$times)
  if (!is.numeric(t) || length(t) != 1 || !is.finite(t) || t < rng[1] - 1e-9 || t > rng[2] + 1e-9) {
    pf_abort(arg, sprintf("must be a time label or a number within the fitted range [%g, %g], not %s",
                          rng[1], rng[2], deparse1(t)),
             "flows do not extrapolate beyond the fitted snapshots: use a time inside that range")
  }
  as.numeric(t)
}

# Cells to start from: the user's, or Gaussian noise for target FM.
start_cells <- function(object, newdata, n, seed) {
  if (!is.null(newdata)) {
    x <- as_cell_matrix(newdata, "newdata")
    return(same_features(x, "newdata", object$feature_names, object$n_features))
  }
  if (!is_generative(object$method)) {
    pf_abort("newdata", "is missing", "give the cells to move (a cells x features matrix)")
  }
  n <- check_count(n %||% object$n_cells[length(object$n_cells)], "n")
  source <- object$method$source
  draw_source(source, n, object$n_features, seed, handle = if (!is_gaussian_source(source)) flow_handle(object))
}

# predict() on a single-cell object: its source cells, moved, as an object of the same kind.
predict_cell_object <- function(object, newdata, from = NULL, to = NULL, solver = SolverParam(),
                                threads = object$threads, device = NULL, verbose = TRUE, unseen_label = "error") {
  if (is_generative(object$method)) {
    pf_abort("newdata", "is an object, but a generative model (target FM, diffusion) starts from its source, not from cells",
             "draw new cells with predict(fit, n = )")
  }
  src <- object_source_cells(object, newdata, from, "newdata")
  # A population model takes each cell's population and labels; a flow, `from` and `to`.
  pred <- if (inherits(object, "popflow_population")) {
    predict(object, src$x, population = src$population, label = src$label, solver = solver, threads = threads,
            device = device, unseen_label = unseen_label, verbose = verbose)
  } else {
    predict(object, src$x, from = from, to = to, solver = solver, threads = threads, device = device, verbose = verbose)
  }
  predicted_cells_object(object, newdata, src, pred, to)
}

# ggplot2 views of fits, predictions, population embeddings and metric
# tables. Each function takes plain R objects (a fit, matrices, a data.frame),
# so object methods (SingleCellExperiment, Seurat) can call them with matrices,
# and returns a ggplot the user can restyle.

#' Plot the training loss (and validation scores) of a fitted flow
#'
#' The flow-matching loss at every training step (faint) and its trailing
#' running mean (bold). The raw loss is noisy by construction (each step draws
#' new cells, pairs and times), so the running mean is the curve to read.
#'
#' For a model fitted with held-out data (`fitFlow(held_out = )`), a second
#' panel shows the validation score at each validation step, with the best
#' step marked in both panels (a dashed line; with
#' `ValidationParam(keep_best = TRUE)` the model holds that step's weights).
#' Read the two together: a running mean that has flattened says training
#' converged; a validation score that rises while the loss still falls says
#' the model overfits its training populations, and the best step is the one
#' to keep.
#'
#' @param fit A model from [fitFlow()].
#' @param smooth Window of the running mean, in steps. Default: a fiftieth of
#'   the steps (at least 1).
#' @param log Logarithmic loss (and score) axis.
#' @param validation Show the validation panel when the model has one.
#' @return A ggplot object.
#' @seealso [plot.popflow_flow()] for the loss curve in base graphics.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(200), ncol = 2)
#' fit <- fitFlow(source, source + 2, training = TrainingParam(steps = 200), verbose = FALSE)
#' plotLoss(fit, smooth = 20)
#'
#' # With held-out cells scored every 25 steps.
#' val <- matrix(rnorm(100), ncol = 2)
#' fit <- fitFlow(source, source + 2, training = TrainingParam(steps = 200), verbose = FALSE,
#'                held_out = list(x = val, target = val + 2), validation = ValidationParam(every = 25))
#' plotLoss(fit)
#' @importFrom ggplot2 .data
#' @export
plotLoss <- function(fit, smooth = NULL, log = TRUE, validation = TRUE) {
  if (!inherits(fit, "popflow_flow")) pf_abort("fit", "must be a model from fitFlow()")
  loss <- fit$loss
  if (!length(loss)) pf_abort("fit", "has no loss history (it was never trained)")
  smooth <- check_count(smooth %||% max(1L, length(loss) %/% 50L), "smooth")
  log <- check_flag(log, "log")
  validation <- check_flag(validation, "validation")
  record <- if (validation) fit$validation
  if (!is.null(record) && !length(record$scores)) record <- NULL
  if (log && any(loss <= 0)) {
    pf_abort("log", "is TRUE but the loss has values <= 0", "use log = FALSE")
  }
  if (log && !is.null(record) && any(record$scores <= 0, na.rm = TRUE)) {
    pf_abort("log", sprintf("is TRUE but the validation %s has values <= 0", record$param$metric),
             "use log = FALSE")
  }
  steps <- seq_along(loss)
  curve_names <- c("per step", sprintf("running mean (%d steps)", smooth))
  panels <- c("flow-matching loss", if (!is.null(record)) sprintf("validation %s (held out)", record$param$metric))
  curves <- data.frame(step = rep(steps, 2), value = c(loss, running_mean(loss, smooth)),
                       curve = rep(curve_names, each = length(loss)), panel = panels[1])
  if (!is.null(record)) {
    curve_names <- c(curve_names, "validation score")
    curves <- rbind(curves, data.frame(step = record$steps, value = record$scores, curve = curve_names[3],
                                       panel = panels[2]))
  }
  curves$curve <- factor(curves$curve, levels = curve_names)
  curves$panel <- factor(curves$panel, levels = panels)
  p <- ggplot2::ggplot(curves, ggplot2::aes(.data$step, .data$value, colour = .data$curve,
                                            linewidth = .data$curve, alpha = .data$curve)) +
    ggplot2::geom_line() +
    ggplot2::scale_colour_manual(values = c("grey40", "firebrick", "steelblue")[seq_along(curve_names)], name = NULL) +
    ggplot2::scale_linewidth_manual(values = c(0.3, 0.9, 0.9)[seq_along(curve_names)], name = NULL) +
    ggplot2::scale_alpha_manual(values = c(0.5, 1, 1)[seq_along(curve_names)], name = NULL) +
    ggplot2::labs(x = "training step", y = if (is.null(record)) "flow-matching loss" else NULL,
                  title = sprintf("%s training loss", method_label(fit$method))) +
    ggplot2::theme_bw() +
    ggplot2::theme(legend.position = "bottom")
  if (!is.null(record)) {
    p <- p + ggplot2::geom_point(data = curves[curves$curve == "validation score", ], size = 1.2,
                                 show.legend = FALSE) +
      ggplot2::facet_wrap(~panel, ncol = 1, scales = "free_y") +
      ggplot2::labs(title = sprintf("%s training loss and validation", method_label(fit$method)))
    if (is.finite(record$best_score)) {
      p <- p + ggplot2::geom_vline(xintercept = record$best_step, linetype = "dashed", colour = "grey30") +
        ggplot2::labs(subtitle = sprintf("best %s %.4g at step %d (dashed)%s", record$param$metric,
                                         record$best_score, record$best_step,
                                         if (record$param$keep_best) ": the weights the model holds" else ""))
    }
  }
  if (log) p <- p + ggplot2::scale_y_log10()
  p
}

# Trailing mean over `k` values; the first k - 1 average what is there so far.
running_mean <- function(x, k) {
  s <- cumsum(x)
  i <- seq_along(x)
  lagged <- c(rep(0, k), s)[i]
  (s - lagged) / pmin(i, k)
}

#' Plot predicted against observed cells
#'
#' Predicted and observed cells (and, optionally, the source cells they were
#' predicted from) in two chosen dimensions, one panel per population when
#' populations are given.
#'
#' @param predicted Predicted cells (cells x features), e.g. from [predict()],
#'   or the SingleCellExperiment or Seurat object `predict(fit, object)`
#'   returned (its cells in `space`).
#' @param observed Observed target cells, the same features (a matrix or an
#'   object: all its cells are shown, so pass the target cells, e.g.
#'   `sce[, sce$condition == "stim"]`).
#' @param source Optional source cells, the same features (the cells
#'   `predicted` was computed from), a matrix or an object.
#' @param space For objects: the reducedDim (SingleCellExperiment) or
#'   reduction (Seurat) to show; default that of the predicted object.
#' @param dims Two dimensions to show: column numbers or column names.
#' @param population Optional population of each row of `predicted` (and of
#'   `source`, whose rows are the cells `predicted` moved): one panel per
#'   population. For objects, the name of a metadata column (e.g.
#'   `"cell_type"`), read from each object.
#' @param observed_population Population of each row of `observed`; needed
#'   when `population` is given and `observed` has another number of rows.
#' @param ... Passed to [ggplot2::geom_point()] (e.g. `size`, `alpha`).
#' @return A ggplot object.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' observed <- source + 3
#' predicted <- source + matrix(rnorm(400, 3, 0.3), ncol = 2)
#' plotPrediction(predicted, observed, source)
#' pop <- rep(c("a", "b"), each = 100)
#' plotPrediction(predicted, observed, population = pop)
#' @export
plotPrediction <- function(predicted, observed, source = NULL, dims = c(1, 2), population = NULL,
                           observed_population = population, space = NULL, ...) {
  source_population <- NULL  # objects: the source cells' own column
  if (any(vapply(list(predicted, observed, source), is_cell_object, logical(1)))) {
    space <- space %||% object_space_name(predicted)
    column <- is.character(population) && length(population) == 1 && is_cell_object(predicted) &&
      population %in% names(cell_columns(predicted))
    if (column) {
      if (!is.null(source)) source_population <- population_column(source, population, "source")
      observed_population <- population_column(observed, observed_population, "observed")
      population <- population_column(predicted, population, "predicted")
    }
    predicted <- plot_cells(predicted, "predicted", space)
    observed <- plot_cells(observed, "observed", space)
    if (!is.null(source)) source <- plot_cells(source, "source", space)
  }
  predicted <- as_cell_matrix(predicted, "predicted")
  observed <- as_cell_matrix(observed, "observed")
  sets <- list(source = if (!is.null(source)) as_cell_matrix(source, "source"), observed = observed,
               predicted = predicted)
  sets <- sets[!vapply(sets, is.null, logical(1))]
  for (nm in setdiff(names(sets), "predicted")) {
    if (ncol(sets[[nm]]) != ncol(predicted)) {
      pf_abort(nm, sprintf("has %d features but `predicted` has %d", ncol(sets[[nm]]), ncol(predicted)),
               "show cells in the same space (the same columns)")
    }
  }
  cols <- plot_dims(dims, predicted)
  pops <- NULL
  if (!is.null(population)) {
    pops <- list(predicted = check_population(population, nrow(predicted)))
    if (!is.null(source_population)) {
      pops$source <- check_population(source_population, nrow(sets$source), "source")
    } else if (!is.null(source)) {
      if (nrow(sets$source) != nrow(predicted)) {
        pf_abort("source", sprintf("has %d cells but `predicted` has %d", nrow(sets$source), nrow(predicted)),
                 "with `population`, give the source cells `predicted` was computed from, row for row")
      }
      pops$source <- pops$predicted
    }
    pops$observed <- check_population(observed_population, nrow(observed), "observed_population")
  }
  cells <- do.call(rbind, lapply(names(sets), function(nm) {
    m <- sets[[nm]]
    data.frame(x = m[, cols[1]], y = m[, cols[2]], set = nm,
               population = if (is.null(pops)) rep(NA_character_, nrow(m)) else pops[[nm]])
  }))
  cells$set <- factor(cells$set, levels = c("source", "observed", "predicted"))
  labels <- colnames(predicted)[cols] %||% sprintf("dimension %d", cols)
  p <- ggplot2::ggplot(cells, ggplot2::aes(.data$x, .data$y, colour = .data$set)) +
    ggplot2::geom_point(...) +
    ggplot2::scale_colour_manual(values = c(source = "grey60", observed = "steelblue", predicted = "firebrick"),
                                 name = NULL, drop = TRUE) +
    ggplot2::labs(x = labels[1], y = labels[2]) +
    ggplot2::guides(colour = ggplot2::guide_legend(override.aes = list(size = 2, alpha = 1))) +
    ggplot2::theme_bw()
  if (!is.null(pops)) p <- p + ggplot2::facet_wrap(~population)
  p
}

# Cells x dimensions of an object in `space` (a matrix passes through).
plot_cells <- function(x, arg, space) {
  if (!is_cell_object(x)) return(x)
  need_object_packages(x, arg)
  read_dense(space_matrix(x, space, arg), along = "rows")  # a DelayedArray (HDF5) reducedDim, in blocks
}

# The space a predicted object holds its cells in: its (first) reducedDim or reduction.
object_space_name <- function(x) {
  if (!is_cell_object(x)) return(NULL)
  names <- if (is_seurat_cells(x)) SeuratObject::Reductions(x) else SingleCellExperiment::reducedDimNames(x)
  if (length(names)) names[1] else NULL
}

# One value per cell of an object from its metadata column `column`.
population_column <- function(x, column, arg) {
  if (!is_cell_object(x)) return(column)
  meta <- cell_columns(x)
  check_columns(column, x, meta, "population", single = TRUE)
  as.character(meta[[column]])
}

# Two distinct columns of `x`, by number or by name -> column numbers.
plot_dims <- function(dims, x) {
  idx <- if (is.character(dims)) match(dims, colnames(x)) else dims
  ok <- length(dims) == 2 && is.numeric(idx) && !anyNA(idx) && all(idx == round(idx)) &&
    all(idx >= 1 & idx <= ncol(x)) && idx[1] != idx[2]
  if (!ok) {
    pf_abort("dims", sprintf("must be two different column numbers (1 to %d) or column names, not %s",
                             ncol(x), deparse1(dims)))
  }
  as.integer(idx)
}

#' Plot population embeddings
#'
#' The map of populations learnt by a Meta Flow Matching encoder: one point
#' per population, from [embedPopulations()]. Embeddings with more than two
#' dimensions are projected on their first two principal components (the
#' share of variance each explains is in the axis titles).
#'
#' @param emb A numeric matrix, populations x embedding dimensions, with the
#'   population ids as row names (as [embedPopulations()] returns), or the
#'   table [embedPopulations()] returns for a single-cell object (its
#'   `embedding` column).
#' @param color Optional grouping of the populations (patient group,
#'   treatment, ...): one value per row of `emb`, a vector named by the
#'   population ids, or, for the table of an object, the name of one of its
#'   columns (e.g. `"patient"`).
#' @param label Write each population's id beside its point.
#' @return A ggplot object.
#' @examples
#' set.seed(1)
#' emb <- matrix(rnorm(40), nrow = 8, dimnames = list(paste0("patient", 1:8), NULL))
#' plotEmbeddings(emb, color = rep(c("control", "treated"), 4))
#' @export
plotEmbeddings <- function(emb, color = NULL, label = TRUE) {
  if ((is.data.frame(emb) || inherits(emb, "DataFrame")) && "embedding" %in% names(emb)) {
    # embedPopulations() of an object: the populations' columns beside the embedding matrix.
    if (is.character(color) && length(color) == 1 && color %in% setdiff(names(emb), "embedding")) {
      color <- as.character(emb[[color]])
    }
    ids <- rownames(emb)
    emb <- as.matrix(emb[["embedding"]])
    rownames(emb) <- ids
  }
  if (is.data.frame(emb)) emb <- as.matrix(emb)
  if (!is.matrix(emb) || !is.numeric(emb) || anyNA(emb) || any(!is.finite(emb))) {
    pf_abort("emb", "must be a finite numeric matrix, populations x embedding dimensions",
             "use the result of embedPopulations()")
  }
  if (nrow(emb) < 2 || ncol(emb) < 2) {
    pf_abort("emb", sprintf("is %d x %d; at least 2 populations and 2 dimensions are needed", nrow(emb), ncol(emb)))
  }
  label <- check_flag(label, "label")
  ids <- rownames(emb) %||% as.character(seq_len(nrow(emb)))
  if (ncol(emb) == 2) {
    xy <- emb
    axes <- colnames(emb) %||% c("dimension 1", "dimension 2")
  } else {
    pca <- stats::prcomp(emb, center = TRUE, scale. = FALSE)
    xy <- pca$x[, 1:2, drop = FALSE]
    share <- pca$sdev^2 / sum(pca$sdev^2)
    axes <- sprintf("PC%d (%.0f%% of variance)", 1:2, 100 * share[1:2])
  }
  points <- data.frame(x = xy[, 1], y = xy[, 2], population = ids)
  if (!is.null(color)) points$group <- population_grouping(color, ids)
  aesthetics <- if (is.null(color)) ggplot2::aes(.data$x, .data$y) else
    ggplot2::aes(.data$x, .data$y, colour = .data$group)
  p <- ggplot2::ggplot(points, aesthetics) +
    ggplot2::geom_point(size = 2.5) +
    ggplot2::labs(x = axes[1], y = axes[2], colour = NULL, title = "Population embeddings") +
    ggplot2::theme_bw()
  if (label) {
    # Room above the top points for their labels.
    p <- p + ggplot2::geom_text(ggplot2::aes(label = .data$population), vjust = -0.9, size = 3, show.legend = FALSE) +
      ggplot2::scale_y_continuous(expand = ggplot2::expansion(mult = c(0.05, 0.12)))
  }
  p
}

# One grouping value per population id: positional, or matched by name.
population_grouping <- function(color, ids) {
  if (!is.null(names(color)) && all(ids %in% names(color))) return(color[ids])
  if (length(color) != length(ids)) {
    pf_abort("color", sprintf("has %d values but `emb` has %d populations", length(color), length(ids)),
             "give one value per row of `emb`, or a vector named by the population ids")
  }
  unname(color)
}

#' Plot evaluation metrics beside the baselines
#'
#' The metric table of [evaluateFlow()] (or several of them bound with
#' [rbind()]) as bars, one panel per metric, so a model can be read against the
#' baselines and the noise floor at a glance. When the table has a
#' `population` column (one row per prediction and population, as for
#' population models), each population is a point and the bar is their mean.
#'
#' @param evaluation A data.frame with a `prediction` column and metric
#'   columns, as returned by [evaluateFlow()].
#' @param metrics The metric columns to show. For W1, W2, MMD and energy
#'   lower is better; for mean_R2 and corr_r higher is better.
#' @return A ggplot object.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' fit <- fitFlow(source, source + 3, training = TrainingParam(steps = 200), verbose = FALSE)
#' ev <- evaluateFlow(fit, source, source + 3, solver = SolverParam("rk4", steps = 8))
#' plotMetrics(ev)
#' @export
plotMetrics <- function(evaluation, metrics = c("W1", "W2", "MMD")) {
  if (!is.data.frame(evaluation) || !("prediction" %in% names(evaluation)) || !nrow(evaluation)) {
    pf_abort("evaluation", "must be a non-empty data.frame with a `prediction` column",
             "use the result of evaluateFlow()")
  }
  numeric_cols <- names(evaluation)[vapply(evaluation, is.numeric, logical(1))]
  available <- setdiff(numeric_cols, "cells")
  if (!is.character(metrics) || !length(metrics) || !all(metrics %in% available)) {
    pf_abort("metrics", sprintf("must name metric columns of `evaluation` (%s), not %s",
                                paste(available, collapse = ", "), deparse1(metrics)))
  }
  metrics <- unique(metrics)
  by_population <- "population" %in% names(evaluation)
  # Long form: one row per prediction (and population) and metric; the first
  # prediction (the model) on top.
  order <- unique(as.character(evaluation$prediction))
  long <- do.call(rbind, lapply(metrics, function(m) {
    data.frame(prediction = factor(evaluation$prediction, levels = rev(order)), metric = m,
               value = evaluation[[m]],
               population = if (by_population) as.character(evaluation$population) else NA_character_)
  }))
  long$metric <- factor(long$metric, levels = metrics)
  bars <- stats::aggregate(value ~ prediction + metric, data = long, FUN = mean)
  p <- ggplot2::ggplot(bars, ggplot2::aes(.data$value, .data$prediction)) +
    ggplot2::geom_col(ggplot2::aes(fill = .data$prediction), width = 0.7, alpha = if (by_population) 0.5 else 1,
                      show.legend = FALSE) +
    ggplot2::facet_wrap(~metric, scales = "free_x") +
    ggplot2::labs(x = NULL, y = NULL,
                  subtitle = "W1, W2, MMD, energy: lower is better; mean_R2, corr_r: higher is better") +
    ggplot2::theme_bw()
  if (by_population) {
    p <- p + ggplot2::geom_point(data = long, ggplot2::aes(.data$value, .data$prediction), size = 1.5,
                                 alpha = 0.7, position = ggplot2::position_jitter(width = 0, height = 0.15, seed = 1))
  }
  p
}

# The ICNN baseline of CellOT (ICNNParam() in params.R): fitting, the map
# and the potential. A fitted ICNN is a "popflow_icnn", also a "popflow_flow"
# with two snapshots (source, target), so that predict(), evaluateFlow(),
# saveFlow() and the single-cell object methods serve it unchanged: its
# move_cells() maps instead of integrating.

#' @export
fit_method.ICNNParam <- function(method, x, target, time, group, population, label, network, training, device,
                                 threads, verbose, resume, validation = NULL, ...) {
  if (!is.null(resume)) icnn_not_resumable()
  if (!is.null(validation)) {
    pf_abort("held_out", "is not used by the ICNN", "compare fitted models with evaluateFlow() on held-out cells")
  }
  for (arg in c("time", "group", "population", "label")) {
    if (!is.null(get(arg))) {
      pf_abort(arg, "is not used by the ICNN, which fits one pooled map from all source to all target cells (CellOT's setting)",
               "give source cells as `x` and target cells as `target`; for one map per population, fit one model per population")
    }
  }
  if (is.null(target)) pf_abort("target", "is missing", "the ICNN maps source to target cells: give `target` cells")
  cells <- source_target_cells(x, target)
  warn_constant_features(rbind(cells$x, cells$target), "x")
  if (!is.null(method$lr)) training$lr <- method$lr
  fields <- list(
    method = method, network = network, training = training, times = c(0, 1),
    time_labels = c("source", "target"), feature_names = colnames(cells$x), n_features = ncol(cells$x),
    n_cells = c(source = nrow(cells$x), target = nrow(cells$target)),
    time_means = rbind(colMeans(cells$x), colMeans(cells$target)), groups = NULL,
    loss = numeric(0), steps_done = 0, status = "", seconds = 0, device = device, threads = threads,
    validation = NULL
  )
  config <- merge_sections(engine_config(method), engine_config(training),
                           list(icnn = list(dim = ncol(cells$x)), training = list(threads = threads, device = device)))
  train_model(fields, training, verbose, NULL, function(progress, every, metadata) {
    pf_icnn_fit(cells$x, cells$target, config, progress, every, metadata)
  })
}

icnn_not_resumable <- function() {
  pf_abort("resume", "is not supported by the ICNN: its two networks' optimisers are not kept in the model file",
           "fit again with more steps in `training`")
}

#' @export
move_cells.popflow_icnn <- function(object, x, times, solver, threads, device = NULL, population = NULL, label = NULL,
                                    unseen_label = "error", verbose = FALSE) {
  if (!is.null(population) || !is.null(label)) {
    pf_abort(if (is.null(population)) "label" else "population", "is used only by population models (MFM, CGFM)")
  }
  if (length(times) != 2 || !all(times %in% object$times)) {
    pf_abort("times", "asks for times between source and target, but the ICNN is a map, not a flow: it has no trajectories",
             "predict the target cells with predict(fit, x), or fit a flow (e.g. method = \"otcfm\") for trajectories")
  }
  threads <- check_count(threads, "threads")
  mapped <- if (times[1] == times[2]) {
    x
  } else if (times[1] < times[2]) {
    pf_icnn_transport(flow_handle(object, device), x, "cells", 65536L, threads)
  } else {
    pf_abort("from", "is after `to`: the ICNN maps source to target cells only",
             "leave `from` and `to` out, or fit a flow for the inverse direction")
  }
  named_states(list(x, mapped), x, object)
}

#' Predict target cells with an ICNN map
#'
#' The fitted [ICNNParam()] map: each source cell `x` goes to `grad g(x)`;
#' with `type = "potential"`, the convex potential `g(x)` itself.
#'
#' @param object A model from [fitFlow()] with `method = ICNNParam()`.
#' @param newdata Source cells (cells x features, the fitted features), or a
#'   SingleCellExperiment or Seurat object for a model fitted on one.
#' @param type `"cells"` (the mapped cells) or `"potential"` (`g(x)`, one value per cell).
#' @param threads LibTorch threads.
#' @param device `NULL` (the model's device when available, else CPU), `"cpu"` or `"cuda"`.
#' @param ... Passed to [predict.popflow_flow()] for `type = "cells"` (`verbose`).
#' @return A matrix of predicted target cells, one row per row of `newdata`
#'   (an object of the same kind for an object), or a numeric vector of potentials.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' fit <- fitFlow(source, source + 2, method = ICNNParam(width = 16, depth = 2, lr = 1e-3),
#'                training = TrainingParam(steps = 200), verbose = FALSE)
#' head(predict(fit, source))
#' head(predict(fit, source, type = "potential"))
#' @export
predict.popflow_icnn <- function(object, newdata = NULL, type = c("cells", "potential"), threads = object$threads,
                                 device = NULL, ...) {
  type <- check_choice(type[1], "type", c("cells", "potential"))
  if (type == "cells") return(predict.popflow_flow(object, newdata, threads = threads, device = device, ...))
  check_dots(..., .verb = "predict")
  if (is.null(newdata)) pf_abort("newdata", "is missing", "give the cells whose potential to compute")
  x <- same_features(as_cell_matrix(newdata, "newdata"), "newdata", object$feature_names, object$n_features)
  if (!is.null(device)) device <- check_device(device)
  out <- pf_icnn_transport(flow_handle(object, device), x, "potential", 65536L, check_count(threads, "threads"))
  stats::setNames(out[, 1], rownames(x))
}

#' @export
print.popflow_icnn <- function(x, ...) {
  model <- as_model(x)
  cat(sprintf("<popflow map> %s: %s\n", method_label(model$method), method_description(model$method)))
  cat(sprintf("  cells: %d features; source (%d), target (%d)\n", model$n_features, model$n_cells[1],
              model$n_cells[2]))
  cat(cell_object_line(model$cell_object))
  if (length(model$loss)) {
    cat(sprintf("  training: %d steps%s on %s, lr %g, batch %d%s\n", model$steps_done, training_speed(model),
                model$device, model$training$lr, model$training$batch_size,
                if (model$status != "completed") sprintf(" [%s]", model$status) else ""))
  }
  invisible(x)
}

# A single-cell object's cells for the ICNN: one pooled map, so no population columns.
#' @export
object_cells.ICNNParam <- function(method, population, label, time) {
  if (!is.null(population) || !is.null(label)) {
    pf_abort(if (is.null(population)) "label" else "population",
             "is not used by the ICNN, which fits one pooled map from all source to all target cells (CellOT's setting)",
             "leave it out (select cells with `cells =`), or fit one model per population")
  }
  if (!is.null(time)) pf_abort("time", "is not used by the ICNN", "give `condition`, `source` and `target`")
  list(time = NULL, group = NULL)
}

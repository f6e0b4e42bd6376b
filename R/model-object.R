# The fitted model: a first-class R object holding the engine's bytes (so it
# survives saveRDS) plus R-side fields; the C++ model is rebuilt lazily from
# the bytes and cached. A flow has class "popflow_flow"; a population model
# (MFM, CGFM) "popflow_population", then "popflow_meta" (its class before the
# rename, kept for code that tests it) and "popflow_flow".

new_flow <- function(bytes, fields, cache = new.env(parent = emptyenv())) {
  fields$method <- as_flow_param(fields$method)
  structure(c(list(bytes = bytes), fields, list(cache = cache)), class = model_class(fields$method))
}

# A model from fitFlow() or loadFlow(), as this version's classes: objects
# saved with saveRDS() before the population class and the method families
# existed get them here.
as_model <- function(object, arg = "object") {
  if (!inherits(object, "popflow_flow")) {
    pf_abort(arg, "must be a model from fitFlow()", "fit one with fitFlow() or load one with loadFlow()")
  }
  if (inherits(object$method, c("popflow_flow_param", "popflow_population_param"))) return(object)
  new_flow(object$bytes, model_fields(object), object$cache)
}

# The R-side fields of a model (what saveFlow() stores beside the engine's bytes).
model_fields <- function(object) unclass(object)[setdiff(names(object), c("bytes", "cache"))]

# The engine's model (either kind; the file header says which), loaded once per device.
flow_handle <- function(object, device = NULL) {
  device <- device %||% (if (startsWith(object$device, "cuda") && pf_cuda_available()) object$device else "cpu")
  cache <- object$cache
  if (is.null(cache$ptr) || !pf_handle_valid(cache$ptr) || !identical(cache$device, device)) {
    cache$ptr <- pf_load(object$bytes, device)
    cache$device <- device
  }
  cache$ptr
}

#' @export
print.popflow_flow <- function(x, ...) {
  model <- as_model(x)
  m <- model$method
  cat(sprintf("<popflow flow> %s: %s\n", method_label(m), method_description(m)))
  if (!is_gaussian_source(m$source)) cat(sprintf("  source: %s\n", source_description(m$source)))
  cat(data_lines(model))
  cat(network_line(model$network))
  cat(cell_object_line(model$cell_object))
  if (length(model$loss)) {
    cat(sprintf("  training: %d steps%s on %s, %sfinal loss %.4g%s\n",
                model$steps_done, training_speed(model), model$device, batch_description(m), recent_loss(model$loss),
                if (model$status != "completed") sprintf(" [%s]", model$status) else ""))
  }
  cat(validation_line(model$validation))
  invisible(x)
}

# Lines of print() on the data a model was fitted on.
data_lines <- function(x) UseMethod("data_lines")

#' @export
data_lines.popflow_flow <- function(x) {
  out <- sprintf("  cells: %d features; snapshots %s\n", x$n_features,
                 paste(sprintf("%s (%d)", names(x$n_cells), x$n_cells), collapse = ", "))
  # An unbalanced flow: the snapshots' relative sizes it grew the cells by.
  if (!is.null(x$sizes)) {
    out <- paste0(out, sprintf("  sizes (relative mass, growth rate learnt): %s\n",
                               paste(sprintf("%s %.4g", names(x$sizes), x$sizes / x$sizes[1]), collapse = ", ")))
  }
  out
}

#' @export
data_lines.popflow_population <- function(x) {
  pops <- x$populations
  out <- sprintf("  populations: %d (%d source, %d target cells); %d features\n", nrow(pops), sum(pops$source_cells),
                 sum(pops$target_cells), x$n_features)
  if (length(x$labels)) {
    out <- paste0(out, sprintf("  labels: %s\n", paste(vapply(names(x$labels), function(nm) {
      i <- x$labels[[nm]]
      if (i$type == "numeric") sprintf("%s (numeric)", nm) else sprintf("%s (%d values)", nm, length(i$levels))
    }, character(1)), collapse = ", ")))
  }
  out
}

# What a training step draws, for print(): population models draw populations.
batch_description <- function(method) UseMethod("batch_description")

#' @export
batch_description.default <- function(method) ""

#' @export
batch_description.popflow_population_param <- function(method) {
  sprintf("%d populations x %d cells a step, ", method$populations_per_step, method$cells_per_population)
}

# " in 1.2 s (250 steps/s)"; nothing for a checkpoint file, whose time is not recorded.
training_speed <- function(x) {
  if (is.null(x$seconds) || is.na(x$seconds)) return("")
  sprintf(" in %.1f s (%.0f steps/s)", x$seconds, x$steps_done / max(x$seconds, 1e-9))
}

network_line <- function(net) {
  sprintf("  network: %s, width %d, depth %d, %s, time embedding %d%s\n",
          if (net$residual) "residual MLP" else "MLP", net$width, net$depth, net$activation, net$time_dim,
          if (net$fourier_features > 0) sprintf(", %d Fourier features", net$fourier_features) else "")
}

recent_loss <- function(loss) mean(utils::tail(loss, max(1, length(loss) %/% 20)))

#' @export
summary.popflow_flow <- function(object, ...) {
  structure(list(method = method_label(object$method), status = object$status, steps = object$steps_done,
                 seconds = object$seconds, final_loss = recent_loss(object$loss),
                 n_cells = object$n_cells, sizes = object$sizes, times = object$time_labels,
                 configuration = strsplit(pf_model_config(object$bytes), "\n")[[1]],
                 validation = validation_summary(object$validation),
                 source = if (!is_gaussian_source(object$method$source)) source_description(object$method$source)),
            class = "summary.popflow_flow")
}

#' @export
print.summary.popflow_flow <- function(x, ...) {
  cat(sprintf("%s flow, %d steps (%s), %.1f s, final loss %.4g\n", x$method, x$steps, x$status, x$seconds,
              x$final_loss))
  if (!is.null(x$source)) cat(sprintf("source: %s\n", x$source))
  if (!is.null(x$validation)) {
    v <- x$validation
    cat(sprintf("validation: %s on %s every %d steps; best %.4g at step %d%s\n", v$metric, v$description, v$every,
                v$best_score, v$best_step, if (v$keep_best) " (the model's weights)" else ""))
    curve <- v$curve
    if (nrow(curve) > 12) {
      print(utils::head(curve, 5), row.names = FALSE)
      cat(sprintf("  ... %d more ...\n", nrow(curve) - 10))
      print(utils::tail(curve, 5), row.names = FALSE)
    } else {
      print(curve, row.names = FALSE)
    }
  }
  cat("cells per snapshot:\n")
  print(x$n_cells)
  if (!is.null(x$sizes)) {
    cat("relative size (mass) per snapshot (unbalanced flow):\n")
    print(x$sizes / x$sizes[1])
  }
  cat("engine configuration:\n")
  cat(paste0("  ", x$configuration, collapse = "\n"), "\n")
  invisible(x)
}

#' Plot the training loss of a fitted flow
#'
#' @param x A model from [fitFlow()].
#' @param y Unused.
#' @param ... Passed to [graphics::plot()].
#' @return `x`, invisibly.
#' @seealso [plotLoss()], the same curve as a ggplot.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(200), ncol = 2)
#' fit <- fitFlow(source, source + 2, training = TrainingParam(steps = 200), verbose = FALSE)
#' plot(fit)
#' @export
plot.popflow_flow <- function(x, y, ...) {
  loss <- x$loss
  if (!length(loss)) stop("this model has no loss history to plot", call. = FALSE)
  steps <- seq_along(loss)
  graphics::plot(steps, loss, type = "l", col = grDevices::adjustcolor("grey40", 0.5), log = "y",
                 xlab = "step", ylab = "flow-matching loss", main = sprintf("%s training loss", method_label(x$method)),
                 ...)
  k <- max(1, length(loss) %/% 50)
  smooth <- stats::filter(loss, rep(1 / k, k), sides = 1)
  graphics::lines(steps, smooth, col = "firebrick", lwd = 2)
  invisible(x)
}

#' Save and load fitted flows
#'
#' `saveFlow()` writes a model to a versioned, checksummed file (header,
#' engine configuration, parameters and the R-side fields); `loadFlow()` reads
#' it back, with a clear error for a truncated, corrupted or foreign file.
#' Fitted models also survive [saveRDS()] / [readRDS()], but the two kinds of
#' file do not mix: a saveFlow() file is not an R data file (`readRDS()` says
#' "unknown input format": read it with `loadFlow()`), and `loadFlow()` of a
#' saveRDS() file says so (read it with `readRDS()`). A path in a missing or
#' read-only folder, a folder, or `""` is an error that names the problem.
#'
#' A model also carries its optimiser state (Adam's moments and, with
#' `ema_decay`, the raw weights), so that `fitFlow(..., resume = file)` can
#' continue training; `resumable = FALSE` leaves it out (a smaller file: 47 kB
#' instead of 125 kB for the default network on 2 features). Checkpoint files written during training
#' (`TrainingParam(checkpoint_every = , checkpoint_file = )`) load the same way.
#'
#' @param object A model from [fitFlow()].
#' @param file Path of the file.
#' @param resumable Keep the optimiser state needed to resume training.
#' @return `saveFlow()`: `file`, invisibly. `loadFlow()`: the model.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(200), ncol = 2)
#' fit <- fitFlow(source, source + 2, training = TrainingParam(steps = 50), verbose = FALSE)
#' path <- tempfile(fileext = ".popflow")
#' saveFlow(fit, path)
#' fit2 <- loadFlow(path)
#' all.equal(predict(fit, source), predict(fit2, source))
#' @export
saveFlow <- function(object, file, resumable = TRUE) {
  object <- as_model(object)
  path <- check_output_file(file)
  resumable <- check_flag(resumable, "resumable")
  bytes <- pf_with_metadata(object$bytes, serialize(model_fields(object), NULL), resumable)
  write_bytes(bytes, path)
  invisible(file)
}

#' @rdname saveFlow
#' @export
loadFlow <- function(file) {
  path <- check_model_file(file)
  bytes <- readBin(path, "raw", file.size(path))
  fields_raw <- tryCatch(pf_metadata(bytes), error = function(e) not_a_model_file(file, path, bytes, conditionMessage(e)))
  if (!length(fields_raw)) {
    stop(sprintf("cannot load '%s': it holds an engine model without popflow's R fields; save models with saveFlow()",
                 file), call. = FALSE)
  }
  fields <- unserialize(fields_raw)
  if (identical(fields$status, "checkpoint")) {
    # Written during training: the step count and losses are in the training state.
    state <- pf_training_state(bytes)
    fields$loss <- state$loss
    fields$steps_done <- state$steps
  }
  new_flow(bytes, fields)
}

# The fitted model: a first-class R object holding the engine's bytes
# (so it survives saveRDS) plus R-side metadata; the C++ model is rebuilt
# lazily from the bytes and cached.

new_flow <- function(bytes, meta) {
  structure(c(list(bytes = bytes), meta, list(cache = new.env(parent = emptyenv()))),
            class = c(if (identical(meta$model_kind, "meta")) "popflow_meta", "popflow_flow"))
}

flow_handle <- function(object, device = NULL) {
  device <- device %||% (if (startsWith(object$device, "cuda") && pf_cuda_available()) object$device else "cpu")
  cache <- object$cache
  if (is.null(cache$ptr) || !pf_handle_valid(cache$ptr) || !identical(cache$device, device)) {
    load <- if (inherits(object, "popflow_meta")) pf_meta_load else pf_load
    cache$ptr <- load(object$bytes, device)
    cache$device <- device
  }
  cache$ptr
}

`%||%` <- function(a, b) if (is.null(a)) b else a

method_label <- function(method) {
  switch(attr(method, "kind"), icfm = "I-CFM", otcfm = "OT-CFM", sbcfm = "SB-CFM", targetfm = "Target FM",
         mfm = "MFM", cgfm = "CGFM")
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

with_seed <- function(seed, expr) {
  old <- if (exists(".Random.seed", globalenv())) get(".Random.seed", globalenv()) else NULL
  on.exit(if (is.null(old)) rm(".Random.seed", envir = globalenv()) else assign(".Random.seed", old, globalenv()))
  set.seed(seed)
  expr
}

# Cells to start from: the user's, or Gaussian noise for target FM.
start_cells <- function(object, newdata, n, seed) {
  if (!is.null(newdata)) {
    x <- as_cell_matrix(newdata, "newdata")
    return(same_features(x, "newdata", object$feature_names, object$n_features))
  }
  if (attr(object$method, "kind") != "targetfm") {
    pf_abort("newdata", "is missing", "give the cells to move (a cells x features matrix)")
  }
  n <- check_count(n %||% object$n_cells[length(object$n_cells)], "n")
  with_seed(seed, matrix(stats::rnorm(n * object$n_features), n, object$n_features))
}

run_transport <- function(object, x, times, solver, threads, device = NULL) {
  if (inherits(object, "popflow_meta")) {
    pf_abort("object", "is a population model (MFM/CGFM)",
             "use predict(object, newdata, population = , label = ), which embeds each population first")
  }
  solver <- expect_param(solver, "solver", "SolverParam")
  threads <- check_count(threads, "threads")
  res <- pf_transport(flow_handle(object, device), x, times, NULL, unclass(solver), threads)
  lapply(res$states, function(s) {
    dimnames(s) <- list(rownames(x), object$feature_names)
    s
  })
}

#' Predict cells with a fitted flow
#'
#' Integrates `dx/dt = v(x, t)` from time `from` to time `to` for every cell
#' of `newdata` (Algorithm 2), returning the predicted cells.
#'
#' @param object A model from [fitFlow()].
#' @param newdata Cells to move (cells x features, the features used in
#'   fitting). For target-FM models it may be `NULL`: `n` cells are drawn from
#'   the Gaussian source. Or a SingleCellExperiment or Seurat object, for a
#'   model fitted on one: see [cell-objects].
#' @param from,to Start and end times: time labels, or numbers on the fitted
#'   time scale (so times between snapshots work). Default: the first and the
#'   last snapshot.
#' @param solver A [SolverParam()] object.
#' @param n,seed Number of cells and seed for target-FM generation.
#' @param threads LibTorch threads.
#' @param device `NULL` (the model's device when available, else CPU), `"cpu"` or `"cuda"`.
#' @param ... Unused.
#' @return A matrix of predicted cells, one row per row of `newdata`; for an
#'   object, an object of the same kind holding the predicted cells.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' fit <- fitFlow(source, source + 2, training = TrainingParam(steps = 200), verbose = FALSE)
#' head(predict(fit, source, solver = SolverParam("rk4", steps = 8)))
#' @export
predict.popflow_flow <- function(object, newdata = NULL, from = NULL, to = NULL, solver = SolverParam(),
                                 n = NULL, seed = 1, threads = object$threads, device = NULL, ...) {
  if (is_cell_object(newdata)) return(predict_cell_object(object, newdata, from, to, solver, threads, device))
  x <- start_cells(object, newdata, n, seed)
  t0 <- if (is.null(from)) object$times[1] else resolve_time(object, from, "from")
  t1 <- if (is.null(to)) object$times[length(object$times)] else resolve_time(object, to, "to")
  if (!is.null(device)) device <- check_device(device)
  run_transport(object, x, c(t0, t1), solver, threads, device)[[2]]
}

#' Trajectories of cells through a fitted flow
#'
#' @inheritParams predict.popflow_flow
#' @param x Cells at time `times[1]`.
#' @param times Increasing (or decreasing) times at which to record the cells;
#'   labels or numbers on the fitted time scale. Default: 11 equally spaced
#'   times over the fitted range. For population models (MFM, CGFM) the
#'   range is 0 (source) to 1 (target).
#' @param population,label Population models only: the population of each row
#'   of `x` and its labels, as in [predict.popflow_meta()]; each population is
#'   embedded once, from its cells in `x`.
#' @return An array cells x features x times.
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
                               population = NULL, label = NULL) {
  if (!inherits(object, "popflow_flow")) pf_abort("object", "must be a model from fitFlow()", "fit one with fitFlow() or load one with loadFlow()")
  x <- same_features(as_cell_matrix(x, "x"), "x", object$feature_names, object$n_features)
  if (!inherits(object, "popflow_meta") && (!is.null(population) || !is.null(label))) {
    pf_abort(if (is.null(population)) "label" else "population", "is used only by population models (MFM, CGFM)")
  }
  if (is.null(times)) times <- seq(min(object$times), max(object$times), length.out = 11)
  if (length(times) < 2) pf_abort("times", "needs at least two time points", "use e.g. times = c(0, 0.5, 1)")
  tt <- vapply(seq_along(times), function(i) resolve_time(object, times[[i]], "times"), numeric(1))
  d <- diff(tt)
  if (!(all(d > 0) || all(d < 0))) pf_abort("times", "must be strictly increasing or strictly decreasing", "sort the times, e.g. sort(unique(times))")
  states <- if (inherits(object, "popflow_meta")) {
    meta_transport(object, x, population, label, tt, solver, threads)
  } else {
    run_transport(object, x, tt, solver, threads)
  }
  out <- array(unlist(states), dim = c(nrow(x), ncol(x), length(tt)),
               dimnames = list(rownames(x), object$feature_names, as.character(times)))
  out
}

#' @export
print.popflow_flow <- function(x, ...) {
  m <- x$method
  extra <- switch(attr(m, "kind"),
    otcfm = sprintf("exact OT coupling (%s), sigma %g", m$ot_mode, m$sigma),
    sbcfm = sprintf("Sinkhorn coupling (reg %g), sigma %g", m$sinkhorn_reg, m$sigma),
    icfm = sprintf("independent coupling, sigma %g", m$sigma),
    targetfm = sprintf("Gaussian source, sigma_min %g", m$sigma_min))
  cat(sprintf("<popflow flow> %s: %s\n", method_label(m), extra))
  cat(sprintf("  cells: %d features; snapshots %s\n", x$n_features,
              paste(sprintf("%s (%d)", names(x$n_cells), x$n_cells), collapse = ", ")))
  cat(network_line(x$network))
  cat(cell_object_line(x$cell_object))
  if (length(x$loss)) {
    cat(sprintf("  training: %d steps%s on %s, final loss %.4g%s\n",
                x$steps_done, training_speed(x), x$device, recent_loss(x$loss),
                if (x$status != "completed") sprintf(" [%s]", x$status) else ""))
  }
  invisible(x)
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
                 n_cells = object$n_cells, times = object$time_labels,
                 configuration = strsplit(model_config_text(object), "\n")[[1]]),
            class = "summary.popflow_flow")
}

model_config_text <- function(object) {
  if (inherits(object, "popflow_meta")) pf_meta_config(object$bytes) else pf_model_config(object$bytes)
}

#' @export
print.summary.popflow_flow <- function(x, ...) {
  cat(sprintf("%s flow, %d steps (%s), %.1f s, final loss %.4g\n", x$method, x$steps, x$status, x$seconds,
              x$final_loss))
  cat("cells per snapshot:\n")
  print(x$n_cells)
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
#' Fitted models also survive [saveRDS()] / [readRDS()].
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
  if (!inherits(object, "popflow_flow")) pf_abort("object", "must be a model from fitFlow()", "fit one with fitFlow() or load one with loadFlow()")
  if (!is.character(file) || length(file) != 1 || is.na(file)) pf_abort("file", "must be a single file path", "use e.g. file = \"fit.popflow\"")
  resumable <- check_flag(resumable, "resumable")
  meta <- unclass(object)[setdiff(names(object), c("bytes", "cache"))]
  with_metadata <- if (inherits(object, "popflow_meta")) pf_meta_with_metadata else pf_with_metadata
  bytes <- with_metadata(object$bytes, serialize(meta, NULL), resumable)
  writeBin(bytes, file)
  invisible(file)
}

#' @rdname saveFlow
#' @export
loadFlow <- function(file) {
  if (!is.character(file) || length(file) != 1 || !file.exists(file)) {
    pf_abort("file", sprintf("must be the path of an existing file, not %s", deparse1(file)),
             "check the path (getwd() is the folder relative paths start from)")
  }
  bytes <- readBin(file, "raw", file.size(file))
  meta_raw <- tryCatch({
    if (identical(pf_model_kind(bytes), "popflow-meta")) pf_meta_metadata(bytes) else pf_metadata(bytes)
  }, error = function(e) {
    pf_abort("file", sprintf("is not a loadable popflow model: cannot load '%s': %s", file, conditionMessage(e)),
             "load a file written completely by saveFlow() or by a checkpoint (copy it again if it was truncated)")
  })
  if (!length(meta_raw)) {
    stop(sprintf("cannot load '%s': it holds an engine model without popflow's R fields; save models with saveFlow()",
                 file), call. = FALSE)
  }
  meta <- unserialize(meta_raw)
  if (identical(meta$status, "checkpoint")) {
    # Written during training: the step count and losses are in the training state.
    state <- pf_training_state(bytes)
    meta$loss <- state$loss
    meta$steps_done <- state$steps
  }
  new_flow(bytes, meta)
}

#' Fit a flow between cell populations
#'
#' Learns a velocity field `v(x, t)` that transports source cells to target
#' cells (or each snapshot of a time course to the next) with a method of the
#' flow-matching family. Training runs entirely in C++ (LibTorch) and follows
#' Algorithm 1 of Meta Flow Matching: every step draws, for each interval
#' between consecutive snapshots, a minibatch of cells on both sides (within
#' one group when `group` is given), pairs them with the method's coupling,
#' draws a time per cell and regresses the path's velocity.
#'
#' Two forms of input:
#' - `x` (source cells) and `target` (target cells): one interval, time 0 to 1.
#' - `x` with `time`, one label per cell: a numeric vector, or a factor whose
#'   levels are in time order. One time-aware field is trained over all
#'   consecutive intervals, so [predict()] can move cells from any time to any
#'   later (or earlier) time, including times between the snapshots.
#'
#' With `method = "targetfm"`, `x` alone is the population to model from
#' Gaussian noise.
#'
#' @param x A numeric matrix, cells in rows and features (for example
#'   principal components) in columns, at least two cells (per snapshot).
#'   Sparse matrices and numeric data frames are densified. NA, NaN, infinite
#'   values and values beyond 1e6 in absolute value (scale the features
#'   first) are errors; a feature with the same value in every cell gives a
#'   warning (it carries no information and the flow leaves it unchanged).
#'   For a SingleCellExperiment or Seurat object, see [fitFlow-objects].
#' @param target Target cells (same features as `x`), or `NULL` when `time` is given.
#' @param time One time label per row of `x` (numeric, or a factor with levels
#'   in time order).
#' @param group Optional grouping (e.g. condition or population), one value per
#'   cell of `x` and `target` together; cells are only ever paired within a group.
#' @param population For `method = "mfm"` or `"cgfm"`: the population (for
#'   example patient, or patient x cell type) of each cell of `x` and `target`
#'   together. MFM learns an embedding of each population's source cells and
#'   predicts for populations never seen in training.
#' @param label For `"mfm"` and `"cgfm"`: known labels of each cell of `x` and
#'   `target` together (treatment, dose, ...), a vector or a data.frame of label
#'   columns, constant within a population. Categorical labels become learnt
#'   embeddings, numeric labels covariates; see [MFMParam()].
#' @param method A method name (`"icfm"`, `"otcfm"`, `"sbcfm"`, `"targetfm"`,
#'   `"mfm"`, `"cgfm"`) or a parameter object such as [OTCFMParam()] or [MFMParam()].
#' @param network A [NetworkParam()] object.
#' @param training A [TrainingParam()] object.
#' @param device `"cpu"` or `"cuda"` (an error if the linked LibTorch has no CUDA).
#' @param threads Threads for LibTorch. The default, 1, is the fastest on small
#'   machines and keeps forked R workers safe; see the README.
#' @param verbose Show a progress bar.
#' @param resume A fitted model, or the path of a saved model or checkpoint
#'   file, to continue training from its last completed step up to
#'   `training$steps` steps in all (for example after an interruption, a time
#'   limit or to train longer). `method`, `network` and `training`, when left
#'   out, are the resumed model's; the data must have the same features (and
#'   snapshot times). On CPU with one thread, fitting N steps and resuming to
#'   2N gives exactly the model that fitting 2N steps at once gives.
#' @param ... Passed to methods.
#' @return A `popflow_flow` model: use [predict()], [sampleTrajectories()],
#'   [evaluateFlow()], `plot()` (loss curve) and [saveFlow()]. MFM and CGFM
#'   models are `popflow_meta` objects (a subclass): use
#'   [predict.popflow_meta()] and [embedPopulations()].
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' target <- source + matrix(c(3, 0), nrow(source), 2, byrow = TRUE)
#' fit <- fitFlow(source, target, method = "otcfm",
#'                training = TrainingParam(steps = 200), verbose = FALSE)
#' fit
#' colMeans(predict(fit, source))
#' @export
fitFlow <- function(x, ...) UseMethod("fitFlow")

#' @rdname fitFlow
#' @export
fitFlow.default <- function(x, target = NULL, time = NULL, group = NULL, method = "otcfm",
                            network = NetworkParam(), training = TrainingParam(), device = "cpu",
                            threads = 1L, verbose = TRUE, population = NULL, label = NULL, resume = NULL, ...) {
  resume <- resume_model(resume)
  if (!is.null(resume)) {
    if (missing(method)) method <- resume$method
    if (missing(network)) network <- resume$network
    if (missing(training)) training <- resume$training
  }
  method <- as_flow_param(method)
  network <- expect_param(network, "network", "NetworkParam")
  training <- expect_param(training, "training", "TrainingParam")
  if (!is.null(resume) && inherits(resume, "popflow_meta") != is_population_method(method)) {
    pf_abort("resume", sprintf("is a %s model, not one of method \"%s\"", method_label(resume$method),
                               attr(method, "kind")),
             "leave `method` out to use the resumed model's method")
  }
  check_resume_settings(resume, method, network, training)
  device <- check_device(device)
  threads <- check_count(threads, "threads")
  verbose <- check_flag(verbose, "verbose")
  if (is_population_method(method)) {
    if (!is.null(time) || !is.null(group)) {
      pf_abort(if (is.null(time)) "group" else "time", sprintf("is not used by method \"%s\"", attr(method, "kind")),
               "give source cells as `x`, target cells as `target`, and `population` (and `label`)")
    }
    return(fit_population_flow(x, target, population, label, method, network, training, device, threads, verbose,
                               resume))
  }
  if (!is.null(population) || !is.null(label)) {
    pf_abort(if (is.null(population)) "label" else "population",
             "is used only by method = \"mfm\" or \"cgfm\"", "use `group` to pair cells within groups")
  }
  data <- flow_training_data(x, target, time, group, generative = attr(method, "kind") == "targetfm")
  check_resume_data(resume, data$x, data$times)

  config <- c(unclass(method), unclass(network), unclass(training), list(threads = threads, device = device))
  meta <- list(
    method = method, network = network, training = training, times = data$times,
    time_labels = data$time_labels, feature_names = colnames(data$x), n_features = ncol(data$x),
    n_cells = data$n_cells, time_means = data$time_means, groups = data$groups,
    loss = numeric(0), steps_done = 0, status = "", seconds = 0, device = device, threads = threads
  )
  progress <- if (verbose) training_progress(training$steps) else NULL
  res <- pf_fit(data$x, data$time_index, data$times, data$group, NULL, config,
                progress$update, max(1L, training$steps %/% 100L), resume$bytes, checkpoint_metadata(meta, training))
  if (!is.null(progress)) progress$done()

  fit <- new_flow(res$bytes, fitted_fields(meta, res, resume))
  report_training_status(fit, training$steps)
  fit
}

# Cells, time indices and groups in the engine's form.
flow_training_data <- function(x, target, time, group, generative) {
  if (!is.null(target)) {
    if (!is.null(time)) pf_abort("time", "must be NULL when `target` is given", "give either `target` or `time`")
    x <- as_cell_matrix(x, "x", min_rows = 2)
    target <- as_cell_matrix(target, "target", min_rows = 2)
    if (ncol(target) != ncol(x)) {
      pf_abort("target", sprintf("has %d features but `x` has %d", ncol(target), ncol(x)),
               "use the same features (columns) for source and target cells")
    }
    labels <- c(0, 1)
    idx <- rep(0:1, c(nrow(x), nrow(target)))
    x <- rbind(x, target)
  } else if (generative && is.null(time)) {
    x <- as_cell_matrix(x, "x", min_rows = 2)
    labels <- c(0, 1)
    idx <- rep(1L, nrow(x))  # the population sits at t = 1; t = 0 is noise
  } else {
    x <- as_cell_matrix(x, "x")
    if (is.null(time)) {
      pf_abort("target", "and `time` are both missing",
               "give target cells, or one time label per cell of `x`")
    }
    tt <- time_labels(time, nrow(x))
    labels <- tt$labels
    idx <- tt$index
  }
  times <- if (is.numeric(labels)) as.numeric(labels) else seq_along(labels) - 1
  grp <- group_codes(group, nrow(x))
  n_cells <- tabulate(idx + 1L, length(times))
  names(n_cells) <- as.character(labels)
  if (!generative && any(n_cells == 0)) pf_abort("time", "has a time point with no cells", "drop unused factor levels or give cells for every time point")
  if (any(n_cells == 1)) {
    pf_abort("time", sprintf("has a single cell at time %s", names(n_cells)[n_cells == 1][1]),
             "a flow learns from several cells per snapshot: drop that time point or add cells")
  }
  warn_constant_features(x, "x")
  time_means <- t(vapply(seq_along(times) - 1L, function(k) {
    if (any(idx == k)) colMeans(x[idx == k, , drop = FALSE]) else rep(NA_real_, ncol(x))
  }, numeric(ncol(x))))
  if (ncol(x) == 1) time_means <- t(time_means)
  list(x = x, time_index = as.integer(idx), times = times, time_labels = labels, group = grp$codes,
       groups = grp$levels, n_cells = n_cells, time_means = time_means)
}

time_labels <- function(time, n) {
  if (length(time) != n) {
    pf_abort("time", sprintf("has %d values but `x` has %d cells", length(time), n),
             "give one time label per cell (row) of `x`")
  }
  if (anyNA(time)) pf_abort("time", "contains NA", "drop cells without a time label")
  if (is.factor(time)) {
    time <- droplevels(time)
    labels <- levels(time)
    index <- as.integer(time) - 1L
  } else if (is.numeric(time)) {
    if (any(!is.finite(time))) pf_abort("time", "contains infinite values", "give finite time labels (or a factor with the levels in time order)")
    labels <- sort(unique(as.numeric(time)))
    index <- match(time, labels) - 1L
  } else {
    pf_abort("time", sprintf("must be numeric or a factor, not %s", class(time)[1]),
             "use factor(time, levels = c(...)) with the levels in time order")
  }
  if (length(labels) < 2) pf_abort("time", "has a single time point; at least two are needed",
                                     "give cells from two or more time points, or source and `target` cells")
  list(labels = labels, index = index)
}

group_codes <- function(group, n) {
  if (is.null(group)) return(list(codes = integer(0), levels = NULL))
  if (length(group) != n) {
    pf_abort("group", sprintf("has %d values but there are %d cells", length(group), n),
             "give one group per cell (source and target cells together)")
  }
  if (anyNA(group)) pf_abort("group", "contains NA", "drop cells without a group or give them their own")
  f <- factor(group)
  list(codes = as.integer(f) - 1L, levels = levels(f))
}

training_progress <- function(total) {
  env <- new.env()
  env$loss <- NA_real_
  id <- cli::cli_progress_bar(
    "Training", total = total, .envir = env, clear = FALSE,
    format = "{cli::pb_name}{cli::pb_bar} {cli::pb_current}/{cli::pb_total} | loss {signif(loss, 3)} | ETA {cli::pb_eta}"
  )
  list(update = function(step, loss) {
    # Ctrl-C while R draws the bar becomes FALSE: training stops cleanly and
    # keeps its last completed step instead of unwinding through C++.
    tryCatch({
      env$loss <- loss
      cli::cli_progress_update(id = id, set = step, .envir = env)
      TRUE
    }, interrupt = function(e) FALSE)
  }, done = function() cli::cli_progress_done(id = id, .envir = env))
}

report_training_status <- function(fit, steps) {
  done <- fit$steps_done
  switch(fit$status,
    interrupted = warning(sprintf(paste0(
      "training was interrupted at step %d of %d; the model holds step %d. ",
      "Continue with fitFlow(..., resume = fit) or use it as it is."), done, steps, done), call. = FALSE),
    time_limit = message(sprintf(paste0("training stopped at its time limit after %d of %d steps; ",
                                        "continue with fitFlow(..., resume = fit)"), done, steps)),
    nonfinite = {
      if (done == 0) {
        stop("training diverged: the loss was NaN or infinite at step 1.\n  Fix: lower `lr` in TrainingParam() ",
             "(e.g. lr = 1e-4), set clip_norm = 1, or scale the features.", call. = FALSE)
      }
      warning(sprintf(paste0("training diverged: the loss became NaN or infinite at step %d; ",
                             "the model holds step %d.\n  Fix: lower `lr` in TrainingParam() or set clip_norm = 1."),
                      done + 1, done), call. = FALSE)
    }
  )
  invisible(fit)
}

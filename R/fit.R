# fitFlow(): the verb, its matrix and single-cell object methods, and the
# fit of each method family (flows, population models).

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
#' With `method = "targetfm"` or `"diffusion"`, `x` alone is the population
#' to model from Gaussian noise.
#'
#' @param x A numeric matrix, cells in rows and features (for example
#'   principal components) in columns, at least two cells (per snapshot).
#'   Sparse matrices and numeric data frames are densified. NA, NaN, infinite
#'   values, values beyond 1e6 in absolute value and features whose values
#'   all lie below 1.08e-19 (float32, in which popflow computes, cannot hold
#'   their squares; scale the features first) are errors; a feature with the
#'   same value in every cell gives a warning (it carries no information and
#'   the flow leaves it unchanged).
#'   For a SingleCellExperiment or Seurat object, see [fitFlow-objects].
#'   For `method = "mfm"` or `"cgfm"`, `x` may be a population store
#'   ([PopulationStore()], written by [writePopulationStore()]): the engine
#'   then reads each step's populations from the file (leave `target` and
#'   `population` out; `label` names the store's label columns to condition on).
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
#'   `"diffusion"`, `"metricfm"`, `"mfm"`, `"cgfm"`, `"icnn"`, `"uotcfm"`) or a parameter object such as
#'   [OTCFMParam()], [DiffusionParam()], [MetricFMParam()], [ReflowParam()], [MFMParam()],
#'   [UnbalancedParam()] or [ICNNParam()] (CellOT's ICNN baseline: an optimal-transport map, not a flow).
#' @param sizes Unbalanced flows ([UnbalancedParam()]) only: the relative
#'   size (mass) of each snapshot: cell numbers per time point (e.g. counted
#'   before sampling), or known expansion factors. Positive numbers, one per
#'   time point, in time order or named by the time labels (for `target`: the
#'   source and the target). Default: the numbers of cells given.
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
#'   Validation is not resumed: the resumed fit scores `held_out` (if given)
#'   at its own steps only, and its best step is the best of those.
#' @param held_out Held-out cells scored during training, a list in the form
#'   of this call's arguments: `list(x = , target = )` or `list(x = , time = )`
#'   (optionally with `group`: each group scored on its own) for a flow, and
#'   `list(x = , target = , population = , label = )` for MFM and CGFM (the
#'   populations, e.g. held-out patients, scored one by one). For a fit on a
#'   SingleCellExperiment or Seurat object, an object of the same kind with
#'   the same columns. A flow scores the held-out cells at each held-out time
#'   point moved to the next one (or `x` moved to `target`); a population model
#'   each held-out population's source cells moved to its target cells. The
#'   scores, their mean over the sets, are in `fit$validation` and in
#'   [plotLoss()].
#' @param validation A [ValidationParam()]: how often and by which metric
#'   `held_out` is scored, whether the model keeps the best-scoring weights
#'   and whether training stops early. Default, with `held_out`:
#'   `ValidationParam()`.
#' @param parallel A [ParallelParam()]: train on several processes, started
#'   here (`ParallelParam(workers = 2)`) or by a launcher such as srun or
#'   torchrun (`ParallelParam()`), averaging their gradients every step. The
#'   result is rank 0's model. Default `NULL`: one process.
#' @param ... Nothing for matrices: an argument that lands here (a misspelt
#'   name, `cells =` meant for objects, a setting such as `steps` given
#'   directly) is an error that names it and says where it belongs (e.g.
#'   `training = TrainingParam(steps = 10)`).
#' @return A `popflow_flow` model: use [predict()], [sampleTrajectories()],
#'   [evaluateFlow()], [plotLoss()] (loss and validation curves) and [saveFlow()].
#'   With `held_out`, `fit$validation` holds the validation record: `steps`,
#'   `scores`, `best_step`, `best_score` and the settings (`param`). MFM and CGFM
#'   models are `popflow_population` objects (a subclass, also of class
#'   `popflow_meta` as before): use [predict.popflow_population()] and
#'   [embedPopulations()].
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' target <- source + matrix(c(3, 0), nrow(source), 2, byrow = TRUE)
#' fit <- fitFlow(source, target, method = "otcfm",
#'                training = TrainingParam(steps = 200), verbose = FALSE)
#' fit
#' colMeans(predict(fit, source))
#'
#' # Held-out cells scored every 50 steps; the model keeps the best weights.
#' val <- matrix(rnorm(200), ncol = 2)
#' fit <- fitFlow(source, target, method = "otcfm", training = TrainingParam(steps = 300),
#'                held_out = list(x = val, target = val + matrix(c(3, 0), 100, 2, byrow = TRUE)),
#'                validation = ValidationParam(every = 50), verbose = FALSE)
#' fit$validation$best_step
#' plotLoss(fit)
#' @export
fitFlow <- function(x, ...) UseMethod("fitFlow")

#' @rdname fitFlow
#' @export
fitFlow.default <- function(x, target = NULL, time = NULL, group = NULL, method = "otcfm",
                            network = NetworkParam(), training = TrainingParam(), device = "cpu",
                            threads = 1L, verbose = TRUE, population = NULL, label = NULL, resume = NULL,
                            held_out = NULL, validation = NULL, sizes = NULL, parallel = NULL, ...) {
  resume <- resume_model(resume)
  if (!is.null(resume)) {
    if (missing(method)) method <- resume$method
    if (missing(network)) network <- resume$network
    if (missing(training)) training <- resume$training
    if (is.null(sizes)) sizes <- resume$sizes
  }
  method <- as_flow_param(method)
  if (!is.null(sizes) && !is_unbalanced(method)) {
    pf_abort("sizes", sprintf("is used only by unbalanced flows, not by method \"%s\"", attr(method, "kind")),
             "use method = UnbalancedParam() (\"uotcfm\") to learn growth, or leave `sizes` out")
  }
  check_dots(..., .verb = "fitFlow",
             .params = c(training = "TrainingParam", network = "NetworkParam", method = class(method)[1],
                         validation = "ValidationParam"))
  network <- expect_param(network, "network", "NetworkParam")
  training <- expect_param(training, "training", "TrainingParam")
  check_resume_settings(resume, method, network, training)
  device <- check_device(device)
  threads <- check_count(threads, "threads")
  verbose <- check_flag(verbose, "verbose")
  parallel <- check_parallel(parallel, method, device)
  if (!is.null(parallel)) threads <- parallel$threads  # per worker
  validation <- fit_validation(validation, held_out)
  args <- list(method, x, target = target, time = time, group = group, population = population, label = label,
               network = network, training = training, device = device, threads = threads, verbose = verbose,
               resume = resume, validation = validation)
  if (is_unbalanced(method)) args$sizes <- sizes
  if (!is.null(parallel)) args$parallel <- parallel
  do.call(fit_method, args)
}

# fitFlow() for a method family: a flow (I-CFM, OT-CFM, SB-CFM, target FM) or a population model (MFM, CGFM).
# Methods end in `...` as the generic does (R CMD check on R 4.5 asks); fitFlow() passes what each takes.
fit_method <- function(method, x, ...) UseMethod("fit_method")

#' @export
fit_method.popflow_flow_param <- function(method, x, target, time, group, population, label, network, training,
                                          device, threads, verbose, resume, validation = NULL, sizes = NULL,
                                          parallel = NULL, ...) {
  if (is_population_store(x)) {
    pf_abort("x", sprintf("is a population store, which only population models read, not method \"%s\"", attr(method, "kind")),
             "use method = \"mfm\" or \"cgfm\" with a store, or give the cells as matrices")
  }
  if (!is.null(population) || !is.null(label)) {
    pf_abort(if (is.null(population)) "label" else "population",
             "is used only by method = \"mfm\" or \"cgfm\"", "use `group` to pair cells within groups")
  }
  data <- flow_training_data(x, target, time, group, generative = is_generative(method))
  if (identical(method$coupling, "paired")) {
    if (is.null(target)) {
      pf_abort("coupling", "= \"paired\" needs source cells `x` and their `target` cells, not `time`",
               "give target row i for source row i, or use coupling = \"independent\"")
    }
    codes <- if (length(data$group)) data$group + 1L else rep(1L, nrow(data$x))
    n_groups <- max(length(data$groups), 1L)
    check_paired_counts(tabulate(codes[data$time_index == 0], n_groups),
                        tabulate(codes[data$time_index == 1], n_groups),
                        if (length(data$groups)) data$groups else "all cells",
                        if (length(data$groups)) "group" else "target")
  }
  check_source_features(method$source, data$x)
  check_metric_fit(method, training, resume)
  check_resume_data(resume, data$x, data$times)
  if (is_unbalanced(method)) {
    if (is_generative(method) || identical(method$coupling, "paired")) stop("unreachable: unbalanced paths pair cells")
    sizes <- snapshot_sizes(sizes, data$n_cells)
    if (!is.null(resume) && !isTRUE(all.equal(unname(sizes / sizes[1]), unname(resume$sizes / resume$sizes[1])))) {
      pf_abort("sizes", sprintf("differ from those `resume` was fitted with (%s)",
                                paste(format(resume$sizes, digits = 4), collapse = ", ")),
               "resume with the sizes of the first fit (leave `sizes` out to use them)")
    }
  }
  training <- flow_step_limits(method, network, training, data, device, verbose)
  config <- fit_config(method, network, training, device, threads, dim = ncol(data$x), times = data$times)
  sets <- if (!is.null(validation)) {
    flow_validation_sets(validation$data, data, is_generative(method), training$seed,
                         function(n, d) draw_source(method$source, n, d, training$seed, config))
  }
  fields <- list(
    method = method, network = network, training = training, times = data$times,
    time_labels = data$time_labels, feature_names = colnames(data$x), n_features = ncol(data$x),
    n_cells = data$n_cells, time_means = data$time_means, groups = data$groups, sizes = sizes,
    loss = numeric(0), steps_done = 0, status = "", seconds = 0, device = device, threads = threads,
    validation = validation_fields(validation, sets, sprintf("%d held-out set%s", length(sets),
                                                             if (length(sets) == 1) "" else "s"))
  )
  # Relative masses, the first snapshot's 1: the engine spreads each over its snapshot's cells.
  if (is_unbalanced(method)) config$flow$masses <- unname(sizes / sizes[1])
  engine_validation <- if (!is.null(validation)) validation_config(validation, sets, training$seed)
  train_model(fields, training, verbose, resume, function(progress, every, metadata, parallel = NULL) {
    pf_fit(data$x, data$time_index, data$group, NULL, rank_config(config, parallel), progress, every, resume$bytes,
           metadata, engine_validation, parallel)
  }, parallel)
}

#' @export
fit_method.popflow_population_param <- function(method, x, target, time, group, population, label, network,
                                                training, device, threads, verbose, resume, validation = NULL,
                                                parallel = NULL, ...) {
  if (is_population_store(x)) {
    return(fit_population_store(method, x, target, time, group, population, label, network, training, device,
                                threads, verbose, resume, validation, parallel))
  }
  if (!is.null(time) || !is.null(group)) {
    pf_abort(if (is.null(time)) "group" else "time", sprintf("is not used by method \"%s\"", attr(method, "kind")),
             "give source cells as `x`, target cells as `target`, and `population` (and `label`)")
  }
  if (is.null(target)) {
    pf_abort("target", "is missing", sprintf("method \"%s\" learns source -> target: give `target` cells", attr(method, "kind")))
  }
  cells <- source_target_cells(x, target)
  x <- cells$x
  target <- cells$target
  warn_constant_features(rbind(x, target), "x")
  n <- nrow(x) + nrow(target)
  side <- rep(0:1, c(nrow(x), nrow(target)))
  cols <- label_columns(label, n)
  check_fit_labels(method, cols)
  pops <- population_codes(population, cols, n, method)
  n_source <- tabulate(pops$code[side == 0], length(pops$names))
  n_target <- tabulate(pops$code[side == 1], length(pops$names))
  if (!any(n_source > 0 & n_target > 0)) {
    pf_abort("population", "has no population with both source and target cells",
             "give source and target cells of the same population the same id")
  }
  graph_k <- check_graph_sizes(method, n_source, pops$names)
  if (identical(method$coupling, "paired")) check_paired_counts(n_source, n_target, pops$names, "population")
  check_resume_data(resume, x)
  population_step_limits(method, network, training, ncol(x), device)
  if (!is.null(resume) && length(cols) != length(resume$labels)) {
    pf_abort("label", sprintf("has %d label column%s but `resume` was fitted with %d", length(cols),
                              if (length(cols) == 1) "" else "s", length(resume$labels)),
             "give the labels the resumed model was fitted with")
  }
  labels <- encode_labels(cols, pops$code, pops$names, resume$labels)
  sets <- if (!is.null(validation)) {
    population_validation_sets(validation$data, method, x, labels$info, validation$param$unseen_label)
  }
  fields <- list(
    method = method, network = network, training = training, times = c(0, 1),
    time_labels = c("source", "target"), feature_names = colnames(x), n_features = ncol(x),
    n_cells = c(source = nrow(x), target = nrow(target)),
    time_means = rbind(colMeans(x), colMeans(target)), groups = NULL,
    population_means = population_means(x, target, pops$code, side, length(pops$names)),
    populations = data.frame(population = pops$names, source_cells = n_source, target_cells = n_target),
    population_labels = population_label_values(cols, pops$code, length(pops$names)),
    labels = labels$info, loss = numeric(0), steps_done = 0, status = "", seconds = 0, device = device,
    threads = threads,
    validation = validation_fields(validation, sets, sprintf("%d held-out population%s", length(sets),
                                                             if (length(sets) == 1) "" else "s"))
  )
  fields$populations$graph_k <- graph_k  # the k of each population's kNN graph (GCN encoder only)
  # The kNN graphs of populations larger than max_cells are subsampled with the seed of the first fit.
  config <- fit_config(method, network, training, device, threads, dim = ncol(x), times = c(0, 1),
                       population = list(graph_seed = if (is.null(resume)) training$seed else resume$training$seed,
                                         label_levels = labels$levels, covariates = ncol(labels$covariates) %||% 0L))
  engine_validation <- if (!is.null(validation)) validation_config(validation, sets, training$seed)
  train_model(fields, training, verbose, resume, function(progress, every, metadata, parallel = NULL) {
    pf_population_fit(rbind(x, target), side, pops$code - 1L, labels$codes, labels$covariates,
                      rank_config(config, parallel), progress, every, resume$bytes, metadata, engine_validation,
                      graph_cache_mb = graph_cache_mb(method), parallel = parallel)
  }, parallel)
}

# The engine's configuration of a fit: the sections of the parameter objects
# and what comes from the data and the call. Flows take no conditioning input
# of their own (cond_dim 0; a population model adds its conditioning width).
fit_config <- function(method, network, training, device, threads, dim, times, population = NULL) {
  merge_sections(engine_config(method), engine_config(network), engine_config(training),
                 list(flow = list(dim = dim, cond_dim = 0L, times = times),
                      training = list(threads = threads, device = device), population = population))
}

# Runs the engine's training (`engine_fit(progress, every, metadata, parallel)`)
# with a progress bar, or as the ranks of `parallel` (R/parallel.R), and
# returns the fitted model, reporting how training ended. `on_result` sees the
# engine's result (rank 0's), attributes included, before the model is made.
train_model <- function(fields, training, verbose, resume, engine_fit, parallel = NULL, on_result = NULL) {
  every <- max(1L, training$steps %/% 100L)
  if (!is.null(parallel)) {
    res <- parallel_fit(parallel, engine_fit, every, checkpoint_metadata(fields, training), verbose, training$steps)
  } else {
    progress <- if (verbose) training_progress(training$steps) else NULL
    res <- engine_fit(progress$update, every, checkpoint_metadata(fields, training))
    if (!is.null(progress)) progress$done()
  }
  if (!is.null(on_result)) on_result(res)
  fit <- new_flow(res$bytes, fitted_fields(fields, res, resume))
  report_training_status(fit, training$steps)
  fit
}

# `sizes` of an unbalanced fit checked against the snapshots (`n_cells`,
# named by time label): positive numbers, one per time point, in time order or
# named by the labels; NULL means the cell counts. Returns them named, in time order.
snapshot_sizes <- function(sizes, n_cells) {
  labels <- names(n_cells)
  if (is.null(sizes)) return(stats::setNames(as.numeric(n_cells), labels))
  fix <- sprintf("give %d positive numbers, one per time point (%s), e.g. the cells counted at each", length(labels),
                 paste(labels, collapse = ", "))
  if (!is.numeric(sizes) || length(sizes) != length(labels)) {
    pf_abort("sizes", sprintf("must be %d numbers, one per time point, not %s", length(labels),
                              if (is.numeric(sizes)) sprintf("%d", length(sizes)) else class(sizes)[1]), fix)
  }
  if (any(!is.finite(sizes)) || any(sizes <= 0)) {
    pf_abort("sizes", sprintf("must be finite and > 0; it has %s",
                              paste(format(sizes[!is.finite(sizes) | sizes <= 0]), collapse = ", ")), fix)
  }
  if (!is.null(names(sizes))) {
    k <- match(labels, names(sizes))
    if (anyNA(k)) {
      pf_abort("sizes", sprintf("is named, but not by the time labels: %s missing",
                                paste(labels[is.na(k)], collapse = ", ")), fix)
    }
    sizes <- sizes[k]
  }
  stats::setNames(as.numeric(sizes), labels)
}

# Source and target cells as matrices with the same features.
source_target_cells <- function(x, target) {
  x <- as_cell_matrix(x, "x", min_rows = 2)
  target <- as_cell_matrix(target, "target", min_rows = 2)
  if (ncol(target) != ncol(x)) {
    pf_abort("target", sprintf("has %d features but `x` has %d", ncol(target), ncol(x)),
             "use the same features (columns) for source and target cells")
  }
  list(x = x, target = target)
}

# Paired coupling pairs the k-th source cell of a group (population) with its
# k-th target cell, so both sides need the same number of cells in each; names
# every group that breaks it.
check_paired_counts <- function(n_source, n_target, names, arg) {
  bad <- which(n_source != n_target)
  if (!length(bad)) return(invisible())
  shown <- utils::head(bad, 5)
  pf_abort(arg, sprintf("has %s with unequal numbers of source and target cells, which coupling = \"paired\" cannot pair: %s%s",
                        if (length(bad) == 1) "one group" else sprintf("%d groups", length(bad)),
                        paste(sprintf("'%s' (%d source, %d target)", names[shown], n_source[shown], n_target[shown]),
                              collapse = ", "),
                        if (length(bad) > length(shown)) ", ..." else ""),
           "give target row i for source row i within each group, or use coupling = \"independent\" or \"exact\"")
}

# Cells, time indices and groups in the engine's form.
flow_training_data <- function(x, target, time, group, generative) {
  if (!is.null(target)) {
    if (!is.null(time)) pf_abort("time", "must be NULL when `target` is given", "give either `target` or `time`")
    cells <- source_target_cells(x, target)
    labels <- c(0, 1)
    idx <- rep(0:1, c(nrow(cells$x), nrow(cells$target)))
    x <- rbind(cells$x, cells$target)
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

# Mean source and target cell of every training population (rows; NA without cells).
population_means <- function(x, target, pop_code, side, n_pop) {
  means <- function(m, code) {
    out <- matrix(NA_real_, n_pop, ncol(m))
    sums <- rowsum(m, code, reorder = TRUE)
    out[as.integer(rownames(sums)), ] <- sums / as.vector(table(code)[rownames(sums)])
    out
  }
  list(source = means(x, pop_code[side == 0]), target = means(target, pop_code[side == 1]))
}

# The label values of every training population (one row each, in the order
# of `populations`; categorical values as character), for the "label mean
# shift" baseline of evaluateFlow(); NULL without labels.
population_label_values <- function(cols, pop_code, n_pop) {
  if (!length(cols)) return(NULL)
  first <- match(seq_len(n_pop), pop_code)
  as.data.frame(lapply(cols, function(v) if (is.numeric(v)) as.numeric(v[first]) else as.character(v[first])),
                stringsAsFactors = FALSE, optional = TRUE)
}

#' Fit a flow on a SingleCellExperiment or Seurat object
#'
#' The same [fitFlow()], reading cells from a single-cell object: name the
#' space the cells live in and the metadata columns that say which cells are
#' the source and which the target (or the time of each cell), and, for
#' population models, the population and label of each cell. The model
#' records these names, so that `predict(fit, object)`,
#' `embedPopulations(fit, object)` and `evaluateFlow(fit, object)` need no
#' more arguments; see [cell-objects].
#'
#' Space:
#' - `space`: a reducedDim of a SingleCellExperiment (default `"PCA"`, as
#'   `scater::runPCA()` names it) or a reduction of a Seurat object (default
#'   `"pca"`). When it is a PCA with loadings (the `"rotation"` attribute of
#'   the reducedDim, as scater stores it, or `Loadings()` of the Seurat
#'   reduction), the model also records what it needs to write predicted cells
#'   back as expression of the loading genes; see [cell-objects].
#' - `assay` with `features`: expression itself (a SummarizedExperiment
#'   assay, e.g. `"logcounts"`, or the `data` of a Seurat assay, e.g. `"RNA"`),
#'   restricted to `features` (default: all rows). Keep it to a few dozen
#'   genes: every feature is a dimension of the flow.
#'
#' Cells:
#' - `condition`, `source`, `target`: the column and its two values that mark
#'   source (e.g. control) and target (e.g. stimulated) cells; cells with other
#'   values are not used.
#' - `time`: a column of time points (numeric, or a factor with levels in time
#'   order), for a time course.
#' - `population`: one or several columns; their values joined by `"/"` name
#'   each cell's population (e.g. `c("patient", "cell_type")` gives
#'   `"101/B cells"`). For `"mfm"` and `"cgfm"` these are the populations of
#'   [fitFlow()]; for the other methods they are its `group` (cells are paired
#'   only within a population), and [evaluateFlow()] scores each population.
#' - `label`: columns of known labels (`"mfm"`, `"cgfm"`), constant within a
#'   population.
#'
#' Big objects: only the cells fitted on (after `cells`, `condition` or
#' `time`) and, for an assay, only `features` are read, in blocks of at most
#' `DelayedArray::getAutoBlockSize()` bytes (100 MB by default). An assay or
#' reducedDim may be a dense matrix, a sparse `dgCMatrix` or a DelayedArray
#' (an `HDF5Array::HDF5Array()` on disk, or any DelayedMatrix): the whole
#' matrix is never realised, and the fit equals the fit on the same values in
#' memory. The expression model of a PCA reads the loading genes of the
#' fitted cells, block by block too. A Seurat v5 assay whose layers are split
#' by sample (`obj[["RNA"]] <- split(obj[["RNA"]], f = obj$sample)`: layers
#' `data.1`, `data.2`, ...) is read layer by layer, each cell from the layer
#' that holds it, as `JoinLayers()` would give (not only the first layer,
#' which is what `LayerData(obj, layer = "data")` returns); an assay without
#' a `data` layer is an error that says to run `NormalizeData()`.
#'
#' @param x A SingleCellExperiment (or SummarizedExperiment, with `assay`) or
#'   a Seurat object (SeuratObject 4 or 5). Its assays and reducedDims may be
#'   matrices, sparse matrices or DelayedArrays (e.g. HDF5-backed); see "Big
#'   objects" below.
#' @param space Name of the reducedDim (SingleCellExperiment) or reduction
#'   (Seurat) holding the cells' coordinates.
#' @param condition,source,target Column of the cell metadata (colData /
#'   meta.data) and its values for source and target cells.
#' @param time Column holding each cell's time point (instead of `condition`).
#' @param population Columns whose combined values are each cell's population.
#' @param label Columns of known labels (population models).
#' @param assay,features An assay and its features (rows) to use instead of
#'   `space`.
#' @param cells The cells to fit on: a logical vector (one value per cell),
#'   cell indices or cell names; default all. Hold out a patient here rather
#'   than with `sce[, keep]`: subsetting a SingleCellExperiment's cells drops
#'   the `"rotation"` attribute of its PCA, and with it the loadings the model
#'   needs to predict expression.
#' @param method,... As in [fitFlow()]: the method, and `network`,
#'   `training`, `device`, `threads`, `verbose`, `resume`, `validation` and
#'   `held_out`, which may be an object of the same kind holding held-out
#'   cells (for example other patients), read with the same space and columns.
#' @return A model as from [fitFlow()], which also holds `cell_object`: the
#'   space, the column names and values, and the expression model of a PCA.
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sce <- kangPBMC()
#'   fit <- fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
#'                  population = c("patient", "cell_type"), method = "icfm",
#'                  cells = sce$patient != "107", training = TrainingParam(steps = 100), verbose = FALSE)
#'   fit
#' }
#' @name fitFlow-objects
#' @export
fitFlow.SummarizedExperiment <- function(x, space = NULL, condition = NULL, source = NULL, target = NULL,
                                         time = NULL, population = NULL, label = NULL, assay = NULL,
                                         features = NULL, cells = NULL, method = "otcfm", ...) {
  fit_cell_object(x, space, condition, source, target, time, population, label, assay, features, cells, method, ...)
}

#' @rdname fitFlow-objects
#' @export
fitFlow.Seurat <- function(x, space = NULL, condition = NULL, source = NULL, target = NULL, time = NULL,
                           population = NULL, label = NULL, assay = NULL, features = NULL, cells = NULL,
                           method = "otcfm", ...) {
  fit_cell_object(x, space, condition, source, target, time, population, label, assay, features, cells, method, ...)
}

fit_cell_object <- function(x, space, condition, source, target, time, population, label, assay, features, cells,
                            method, ...) {
  need_object_packages(x, "x")
  method <- as_flow_param(method)
  layout <- object_layout(x, space, assay, features)
  read_features <- layout_source(x, layout, "x")$features  # checked now, read below
  if (!is.null(layout$assay)) layout$features <- read_features
  cells_arg <- cells
  keep <- cell_subset(cells, x)
  meta <- cell_columns(x)[keep, , drop = FALSE]
  # Only the cells fitted on are read (in blocks: an HDF5- or DelayedArray-backed object is never realised whole).
  read_cells <- function(rows) layout_coordinates(x, layout, "x", keep[rows])
  population <- check_columns(population, x, meta, "population")
  label <- check_columns(label, x, meta, "label")
  labels <- label_frame(meta, label)
  fit_args <- list(...)
  fit_on <- function(cells, ...) {
    fit_args$held_out <- object_held_out(fit_args$held_out, method, layout, condition, source, target, time,
                                         population, label)
    do.call(fitFlow.default, c(list(...), object_cells(method, population_ids(meta, population, cells),
                                                            rows_of(labels, cells),
                                                            if (!is.null(time)) meta[[time]][cells]),
                               list(method = method), fit_args))
  }
  if (!is.null(condition)) {
    if (!is.null(time)) pf_abort("time", "and `condition` are both given", "give `condition` (with `source`, `target`) or `time`")
    condition <- check_columns(condition, x, meta, "condition", single = TRUE)
    # Values of the whole object: a value outside the `cells` subset is the subset's doing (below).
    source <- check_value(source, cell_columns(x)[[condition]], "source", condition)
    target <- check_value(target, cell_columns(x)[[condition]], "target", condition)
    if (source == target) pf_abort("target", "is the same value as `source`", "give two different values of the column")
    # After a `cells` subset, a missing condition value is the subset's doing.
    where <- function(value) {
      if (is.null(cells_arg)) return(cells_where(meta, condition, value, "x"))
      cells_where(meta, condition, value, "cells", "select cells of both conditions (source and target)")
    }
    src <- where(source)
    tgt <- where(target)
    cells <- c(src, tgt)
    coords <- read_cells(cells)
    fit <- fit_on(cells, coords[seq_along(src), , drop = FALSE], coords[-seq_along(src), , drop = FALSE])
  } else if (!is.null(time)) {
    time <- check_columns(time, x, meta, "time", single = TRUE)
    cells <- seq_along(keep)
    coords <- read_cells(cells)
    fit <- fit_on(cells, coords)
  } else if (is_generative(method)) {
    cells <- seq_along(keep)
    coords <- read_cells(cells)
    fit <- fit_on(cells, coords)
  } else {
    pf_abort("condition", "and `time` are both missing",
             "name the column that marks source and target cells (condition = , source = , target = ), or the time column (time = )")
  }
  fit$cell_object <- list(
    class = class(x)[1], space = layout$space, assay = layout$assay, features = layout$features,
    condition = condition, source = source, target = target, time = time, population = population, label = label,
    expression = expression_model(x, layout, keep[cells], coords)
  )
  fit
}

# How an object's cells enter fitFlow(): a flow takes the population columns
# as its groups (and the time column, if any); a population model takes them
# as its populations, with the labels.
object_cells <- function(method, population, label, time) UseMethod("object_cells")

#' @export
object_cells.popflow_flow_param <- function(method, population, label, time) {
  if (!is.null(label)) {
    pf_abort("label", "is used only by method = \"mfm\" or \"cgfm\"", "drop `label`, or use a population model")
  }
  list(time = time, group = population)
}

#' @export
object_cells.popflow_population_param <- function(method, population, label, time) {
  if (!is.null(time)) {
    pf_abort("time", sprintf("is not used by method \"%s\"", attr(method, "kind")),
             "give `condition`, `source` and `target` for a population model")
  }
  list(population = population, label = label)
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

# How to go on from a fit that stopped early: resuming, where the fit kept its
# training state (the ICNN, metric flow matching and the alternating schedule keep none).
continuation_hint <- function(fit) {
  if (pf_training_state(fit$bytes)$steps > 0) return("continue with fitFlow(..., resume = fit)")
  "this kind of fit cannot be resumed: fit again with more steps or a longer time_limit in TrainingParam()"
}

report_training_status <- function(fit, steps) {
  done <- fit$steps_done
  switch(fit$status,
    interrupted = warning(sprintf(paste0(
      "training was interrupted at step %d of %d; the model holds step %d. %s, or use the model as it is."),
      done, steps, done, continuation_hint(fit)), call. = FALSE),
    time_limit = message(sprintf("training stopped at its time limit after %d of %d steps; %s", done, steps,
                                 continuation_hint(fit))),
    early_stop = message(early_stop_message(fit, steps)),
    nonfinite = {
      # The engine returns the last step whose weights still gave a finite loss.
      if (done == 0) {
        stop("training diverged: the loss or its gradient became NaN or infinite in the first steps, before any usable model.\n  Fix: ",
             "lower `lr` in TrainingParam() (e.g. lr = 1e-4), set clip_norm = 1, or scale the features.", call. = FALSE)
      }
      warning(sprintf(paste0("training diverged after step %d: the loss or its gradient became NaN or infinite; the model holds ",
                             "step %d, the last whose weights gave a finite loss.\n  Fix: lower `lr` in ",
                             "TrainingParam() or set clip_norm = 1."), done, done), call. = FALSE)
    }
  )
  # TrainingParam(step_graph = TRUE) that took the usual steps says why (fit$step_graph keeps it).
  if (!is.null(fit$step_graph) && fit$step_graph != "captured") {
    message(sprintf("TrainingParam(step_graph = TRUE): no CUDA graph was captured (%s)", fit$step_graph))
  }
  invisible(fit)
}

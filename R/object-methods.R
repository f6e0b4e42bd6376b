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
#' @param x A SingleCellExperiment (or SummarizedExperiment, with `assay`) or
#'   a Seurat object.
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
#'   `training`, `device`, `threads`, `verbose`.
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
  coords <- layout_coordinates(x, layout, "x")
  if (!is.null(layout$assay)) layout$features <- colnames(coords)
  keep <- cell_subset(cells, x)
  coords <- coords[keep, , drop = FALSE]
  meta <- cell_columns(x)[keep, , drop = FALSE]
  population <- check_columns(population, x, meta, "population")
  label <- check_columns(label, x, meta, "label")
  pops <- population_ids(meta, population)
  labels <- label_frame(meta, label)
  population_model <- is_population_method(method)
  if (length(label) && !population_model) {
    pf_abort("label", "is used only by method = \"mfm\" or \"cgfm\"", "drop `label`, or use a population model")
  }
  if (!is.null(condition)) {
    if (!is.null(time)) pf_abort("time", "and `condition` are both given", "give `condition` (with `source`, `target`) or `time`")
    condition <- check_columns(condition, x, meta, "condition", single = TRUE)
    source <- check_value(source, meta[[condition]], "source", condition)
    target <- check_value(target, meta[[condition]], "target", condition)
    if (source == target) pf_abort("target", "is the same value as `source`", "give two different values of the column")
    src <- cells_where(meta, condition, source, "x")
    tgt <- cells_where(meta, condition, target, "x")
    cells <- c(src, tgt)
    if (population_model) {
      fit <- fitFlow.default(coords[src, , drop = FALSE], coords[tgt, , drop = FALSE], population = pops[cells],
                             label = rows_of(labels, cells), method = method, ...)
    } else {
      fit <- fitFlow.default(coords[src, , drop = FALSE], coords[tgt, , drop = FALSE], group = pops[cells],
                             method = method, ...)
    }
  } else if (!is.null(time)) {
    time <- check_columns(time, x, meta, "time", single = TRUE)
    if (population_model) {
      pf_abort("time", sprintf("is not used by method \"%s\"", attr(method, "kind")),
               "give `condition`, `source` and `target` for a population model")
    }
    cells <- seq_len(nrow(coords))
    fit <- fitFlow.default(coords, time = meta[[time]], group = pops, method = method, ...)
  } else if (attr(method, "kind") == "targetfm") {
    cells <- seq_len(nrow(coords))
    fit <- fitFlow.default(coords, group = pops, method = method, ...)
  } else {
    pf_abort("condition", "and `time` are both missing",
             "name the column that marks source and target cells (condition = , source = , target = ), or the time column (time = )")
  }
  fit$cell_object <- list(
    class = class(x)[1], space = layout$space, assay = layout$assay, features = layout$features,
    condition = condition, source = source, target = target, time = time, population = population, label = label,
    expression = expression_model(x, layout, keep[cells], coords[cells, , drop = FALSE])
  )
  fit
}

#' Predict, embed and evaluate cells of SingleCellExperiment and Seurat objects
#'
#' A model fitted on an object with [fitFlow()][fitFlow-objects] remembers
#' where the cells live and what the metadata columns mean, so the verbs take
#' an object directly:
#'
#' - `predict(fit, object)` moves the object's source cells (condition ==
#'   `source`; for a time course, time == `from`, default the first time
#'   point; all cells when the object lacks that column) and returns the
#'   predicted cells in the same kind of object: a SingleCellExperiment for a
#'   SingleCellExperiment or SummarizedExperiment, a Seurat object for a
#'   Seurat object. Population models read each cell's population and labels
#'   from the fitted columns, which the object must have.
#' - `embedPopulations(fit, object)` embeds each population of the object's
#'   source cells (MFM): a `DataFrame` (Seurat: a `data.frame`) with one row
#'   per population, row names the population ids, columns `population`, the
#'   population columns, `source_cells` and `embedding` (a matrix, populations
#'   x dimensions). Keep it with the data:
#'   `S4Vectors::metadata(sce)$popflow_embeddings <- emb`, or
#'   `SeuratObject::Misc(seu, "popflow_embeddings") <- emb`.
#' - `evaluateFlow(fit, object)` predicts from the object's source cells and
#'   compares with its observed target cells (or with the target cells of a
#'   second object, `evaluateFlow(fit, object, observed_object)`), beside the
#'   "no change" and "mean shift" baselines, as [evaluateFlow()] does for
#'   matrices. When the model has population columns, each population with
#'   both source and observed cells is scored on its own: the result has the
#'   population id and the population columns first.
#'
#' The predicted object has one cell per source cell, named
#' `<source cell>_pred` (made unique), with metadata columns: the population
#' and label columns of its source cell, the condition column set to the
#' target value (time course: the time column set to `to`), `predicted =
#' TRUE`, and `source_cell`, the name of the source cell. Its coordinates are
#' under the fitted space's name (a reducedDim, or a Seurat reduction with the
#' input reduction's key); models fitted on an assay return the predicted
#' features in that assay instead.
#'
#' Expression of predicted cells (PCA spaces with loadings). The fitted
#' model holds the loadings `rotation` (genes x PCs), a per-gene `center` and
#' `scale` (see `fit$cell_object$expression`), and predicted PCs are turned
#' into expression of the loading genes as
#' `center + scale * (PCs %*% t(rotation))`:
#' - SingleCellExperiment (a scater-style PCA of centred logcounts): `scale`
#'   is 1, `center` is the mean `logcounts` of the fitted cells minus their
#'   mean PCs `%*% t(rotation)` (the PCA's own centre when it was computed on
#'   those cells). The result is the `logcounts` assay of the predicted object.
#' - Seurat (PCA of scaled data): `scale` is each gene's standard deviation
#'   in the `data` of the reduction's assay over the fitted cells, and
#'   `center` their mean minus `scale * (mean PCs %*% t(rotation))`. This
#'   undoes Seurat's centring and scaling (not its clipping at `scale.max` or
#'   regressed variables). The result is the `data` of that assay in the
#'   predicted object.
#'
#' The loadings are read at fit time from the fitted object: subsetting a
#' SingleCellExperiment's cells drops them (choose cells with `cells =` in
#' [fitFlow()][fitFlow-objects] instead), and without them there is no
#' expression. This is the projection of expression onto the PCA's span: variation outside
#' the first PCs is not recovered, and values can be slightly negative. A
#' reduction without loadings (UMAP, Harmony) gives no expression; the
#' predicted Seurat object then holds the coordinates also as an assay
#' `popflow` (a Seurat object needs one).
#'
#' @param object A model fitted on a single-cell object.
#' @param newdata,x,source A SingleCellExperiment or Seurat object with the
#'   fitted space and metadata columns.
#' @name cell-objects
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sce <- kangPBMC()
#'   some_types <- sce$cell_type %in% c("B cells", "CD14+ Monocytes", "CD4 T cells")
#'   fit <- fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
#'                  population = c("patient", "cell_type"), cells = some_types & sce$patient != "107",
#'                  method = MFMParam(k = 10, width = 16, populations_per_step = 4, cells_per_population = 64),
#'                  training = TrainingParam(steps = 100), verbose = FALSE)
#'   held_out <- sce[, some_types & sce$patient == "107"]
#'   pred <- predict(fit, held_out, solver = SolverParam("rk4", steps = 5))
#'   print(pred)
#'   print(embedPopulations(fit, sce[, some_types]))
#'   evaluateFlow(fit, held_out, solver = SolverParam("rk4", steps = 5))
#' }
NULL

model_cell_object <- function(object, x, arg) {
  spec <- object$cell_object
  if (is.null(spec)) {
    pf_abort(arg, sprintf("is a %s, but the model was fitted on a matrix", class(x)[1]),
             "fit the model on the object (fitFlow(object, space = , condition = , ...)), or pass a cells x features matrix")
  }
  need_object_packages(x, arg)
  spec
}

# Source cells of an object, with their populations and labels, in the fitted space.
object_source_cells <- function(object, x, from, arg) {
  spec <- model_cell_object(object, x, arg)
  meta <- cell_columns(x)
  coords <- layout_coordinates(x, spec, arg)
  if (!is.null(spec$time)) {
    from <- from %||% object$time_labels[1]
    cells <- cells_where(meta, spec$time, from, arg)
  } else {
    cells <- cells_where(meta, spec$condition, spec$source, arg)
  }
  fitted_columns(c(spec$population, spec$label), x, meta, arg)
  list(x = coords[cells, , drop = FALSE], cells = cells, meta = meta, spec = spec,
       population = population_ids(meta, spec$population)[cells],
       label = rows_of(label_frame(meta, spec$label), cells))
}

predict_cell_object <- function(object, newdata, from = NULL, to = NULL, solver = SolverParam(),
                                threads = object$threads, device = NULL) {
  if (attr(object$method, "kind") == "targetfm") {
    pf_abort("newdata", "is an object, but a target FM model starts from Gaussian noise, not from cells",
             "draw new cells with predict(fit, n = )")
  }
  src <- object_source_cells(object, newdata, from, "newdata")
  if (inherits(object, "popflow_meta")) {
    pred <- predict.popflow_meta(object, src$x, population = src$population, label = src$label, solver = solver,
                                 threads = threads, device = device)
  } else {
    pred <- predict.popflow_flow(object, src$x, from = from, to = to, solver = solver, threads = threads,
                                 device = device)
  }
  predicted_cells_object(object, newdata, src, pred, to)
}

# Metadata of predicted cells: their source cells' populations and labels,
# the target condition (or time), the predicted flag and the source cell.
predicted_metadata <- function(object, src, to) {
  spec <- src$spec
  source_names <- rownames(src$x) %||% as.character(src$cells)
  out <- data.frame(row.names = make.unique(paste0(source_names, "_pred")))
  for (nm in unique(c(spec$population, spec$label))) out[[nm]] <- src$meta[[nm]][src$cells]
  if (!is.null(spec$condition)) out[[spec$condition]] <- spec$target
  if (!is.null(spec$time)) {
    out[[spec$time]] <- to %||% object$time_labels[length(object$time_labels)]
  }
  out$predicted <- TRUE
  out$source_cell <- source_names
  out
}

predicted_cells_object <- function(object, newdata, src, pred, to) {
  spec <- src$spec
  meta <- predicted_metadata(object, src, to)
  rownames(pred) <- rownames(meta)
  expression <- if (!is.null(spec$expression)) reconstruct_expression(spec$expression, pred)
  if (is_seurat_cells(newdata)) {
    seurat_cells(newdata, spec, pred, meta, expression)
  } else {
    bioc_cells(spec, pred, meta, expression)
  }
}

bioc_cells <- function(spec, pred, meta, expression) {
  need_package("SingleCellExperiment", "newdata", "SummarizedExperiment")
  col_data <- S4Vectors::DataFrame(meta, check.names = FALSE)
  if (is.null(spec$space)) {
    return(SingleCellExperiment::SingleCellExperiment(assays = stats::setNames(list(t(pred)), spec$assay),
                                                      colData = col_data))
  }
  assays <- if (!is.null(expression)) list(logcounts = expression) else list()
  sce <- SingleCellExperiment::SingleCellExperiment(assays = assays, colData = col_data)
  if (!is.null(expression)) attr(pred, "rotation") <- spec$expression$rotation
  SingleCellExperiment::reducedDim(sce, spec$space) <- pred
  sce
}

seurat_cells <- function(newdata, spec, pred, meta, expression) {
  if (is.null(spec$space)) {
    data <- t(pred)
    assay <- spec$assay
  } else if (!is.null(expression)) {
    data <- expression
    assay <- spec$expression$assay
  } else {
    data <- t(pred)
    assay <- "popflow"
  }
  assay_object <- SeuratObject::CreateAssayObject(data = data)
  SeuratObject::Key(assay_object) <- paste0(gsub("[^[:alnum:]]", "", tolower(assay)), "_")
  out <- SeuratObject::CreateSeuratObject(counts = assay_object, assay = assay, meta.data = meta, project = "popflow")
  if (!is.null(spec$space)) {
    key <- SeuratObject::Key(newdata[[spec$space]])
    colnames(pred) <- paste0(key, seq_len(ncol(pred)))
    reduction <- list(embeddings = pred, key = key, assay = assay)
    if (!is.null(expression)) reduction$loadings <- `colnames<-`(spec$expression$rotation, colnames(pred))
    out[[spec$space]] <- do.call(SeuratObject::CreateDimReducObject, reduction)
  }
  out
}

embed_cell_populations <- function(object, x, threads) {
  if (!inherits(object, "popflow_meta") || attr(object$method, "kind") != "mfm") {
    pf_abort("object", "must be an MFM model from fitFlow(method = \"mfm\")",
             "CGFM and plain flows have no population encoder")
  }
  src <- object_source_cells(object, x, NULL, "x")
  emb <- embedPopulations(object, src$x, src$population, threads = threads)
  first <- match(rownames(emb), src$population)
  out <- data.frame(population = rownames(emb), row.names = rownames(emb), stringsAsFactors = FALSE)
  for (nm in src$spec$population) out[[nm]] <- src$meta[[nm]][src$cells][first]
  out$source_cells <- tabulate(match(src$population, rownames(emb)), nrow(emb))
  out$embedding <- emb
  if (is_seurat_cells(x)) out else S4Vectors::DataFrame(out, check.names = FALSE)
}

# evaluateFlow() on objects: observed cells are the target-condition (or
# time `to`) cells of `target`, or of `source` itself.
evaluate_cell_object <- function(object, source, target, from, to, solver, max_cells, seed, baselines) {
  src <- object_source_cells(object, source, from, "source")
  spec <- src$spec
  observed_object <- if (is.null(target)) source else target
  if (!is_cell_object(observed_object)) {
    pf_abort("target", "must be a single-cell object like `source`, or missing",
             "leave it out to compare with the target cells of `source`")
  }
  obs_meta <- cell_columns(observed_object)
  obs_coords <- layout_coordinates(observed_object, spec, "target")
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
  if (inherits(object, "popflow_meta")) {
    in_obs <- obs_population %in% shared
    by_population <- evaluate_populations(object, src$x[keep, , drop = FALSE], obs_coords[obs[in_obs], , drop = FALSE],
                                          src$population[keep], obs_population[in_obs], rows_of(src$label, keep),
                                          "error", solver, max_cells, seed, baselines)
  }
  rows <- lapply(shared, function(p) {
    in_p <- src$population == p
    observed <- obs_coords[obs[obs_population == p], , drop = FALSE]
    scores <- if (inherits(object, "popflow_meta")) {
      by_population[by_population$population == p, names(by_population) != "population", drop = FALSE]
    } else {
      evaluateFlow(object, src$x[in_p, , drop = FALSE], observed, from = from, to = to, solver = solver,
                   max_cells = max_cells, seed = seed, baselines = baselines)
    }
    first <- which(in_p)[1]
    ids <- data.frame(population = rep(p, nrow(scores)), stringsAsFactors = FALSE)
    for (nm in spec$population) ids[[nm]] <- rep(as.character(src$meta[[nm]][src$cells][first]), nrow(scores))
    cbind(ids, scores)
  })
  out <- do.call(rbind, rows)
  rownames(out) <- NULL
  out
}

# One line of print() for a model fitted on an object: where its cells come from.
cell_object_line <- function(spec) {
  if (is.null(spec)) return("")
  where <- if (!is.null(spec$space)) {
    sprintf("%s '%s'", if (spec$class == "Seurat") "reduction" else "reducedDim", spec$space)
  } else {
    sprintf("assay '%s' (%d features)", spec$assay, length(spec$features))
  }
  cells <- if (!is.null(spec$condition)) {
    sprintf("%s %s -> %s", spec$condition, spec$source, spec$target)
  } else if (!is.null(spec$time)) {
    sprintf("time '%s'", spec$time)
  } else {
    "all cells"
  }
  extra <- c(if (length(spec$population)) sprintf("populations %s", paste(spec$population, collapse = " x ")),
             if (length(spec$label)) sprintf("labels %s", paste(spec$label, collapse = ", ")),
             if (!is.null(spec$expression)) sprintf("expression of %d genes", nrow(spec$expression$rotation)))
  sprintf("  object: %s, %s; %s%s\n", spec$class, where, cells, paste0("; ", extra, collapse = ""))
}

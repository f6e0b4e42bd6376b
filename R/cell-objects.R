# Reading cells from single-cell objects: SingleCellExperiment (and plain
# SummarizedExperiment) and Seurat (v4 and v5). Where the cells live (a
# reducedDim / reduction, or an assay with chosen features) and which metadata
# columns mean what are recorded in the fitted model as `cell_object`, so that
# predict(), embedPopulations() and evaluateFlow() on an object need no more.

is_bioc_cells <- function(x) isS4(x) && inherits(x, "SummarizedExperiment")
is_seurat_cells <- function(x) inherits(x, "Seurat")
is_cell_object <- function(x) is_bioc_cells(x) || is_seurat_cells(x)

need_package <- function(pkg, arg, what) {
  if (!requireNamespace(pkg, quietly = TRUE)) {
    pf_abort(arg, sprintf("is a %s, which needs the package '%s'", what, pkg),
             sprintf("install it: %s", if (pkg %in% c("SeuratObject", "Seurat")) sprintf("install.packages(\"%s\")", pkg)
                     else sprintf("BiocManager::install(\"%s\")", pkg)))
  }
}

need_object_packages <- function(x, arg) {
  if (is_seurat_cells(x)) {
    need_package("SeuratObject", arg, "Seurat object")
  } else {
    need_package("SummarizedExperiment", arg, class(x)[1])
    if (inherits(x, "SingleCellExperiment")) need_package("SingleCellExperiment", arg, class(x)[1])
  }
}

# Cell metadata: colData (a DataFrame) or meta.data (a data.frame); both take `[[` and names().
cell_columns <- function(x) {
  if (is_seurat_cells(x)) x[[]] else SummarizedExperiment::colData(x)
}

metadata_place <- function(x) if (is_seurat_cells(x)) "meta.data" else "colData"

# Column names the user gave, checked against the object's metadata.
check_columns <- function(cols, x, meta, arg, single = FALSE) {
  if (is.null(cols)) return(NULL)
  if (!is.character(cols) || !length(cols) || anyNA(cols) || (single && length(cols) != 1)) {
    pf_abort(arg, sprintf("must be %s of the %s, not %s", if (single) "the name of one column" else "column names",
                          metadata_place(x), deparse1(cols)))
  }
  missing <- setdiff(cols, names(meta))
  if (length(missing)) {
    pf_abort(arg, sprintf("names %s not in the %s; available columns: %s",
                          paste0("'", missing, "'", collapse = ", "), metadata_place(x), paste(names(meta), collapse = ", ")),
             sprintf("use one of the available columns, or add it (%s)",
                     if (is_seurat_cells(x)) "obj$column <- values" else "sce$column <- values"))
  }
  cols
}

# A column the model was fitted with must also exist in new data.
fitted_columns <- function(cols, x, meta, arg) {
  missing <- setdiff(cols, names(meta))
  if (length(missing)) {
    pf_abort(arg, sprintf("lacks the %s column%s %s the model was fitted with; available columns: %s",
                          metadata_place(x), if (length(missing) > 1) "s" else "", paste0("'", missing, "'", collapse = ", "),
                          paste(names(meta), collapse = ", ")),
             "add the column, with the values used in fitting")
  }
  cols
}

# One population id per cell (of the cells `rows`, default all): the values
# of one column, or of several joined by "/". NA is no population, and ids
# that two different combinations share ("x/y" + "z", "x" + "y/z") would merge them.
population_ids <- function(meta, cols, rows = NULL, arg = "population") {
  if (!length(cols)) return(NULL)
  values <- lapply(cols, function(nm) {
    v <- as.character(meta[[nm]])
    if (is.null(rows)) v else v[rows]
  })
  for (i in seq_along(cols)) {
    if (anyNA(values[[i]])) {
      pf_abort(arg, sprintf("%scolumn '%s' is NA for %d of the cells used", if (arg == "population") "" else "population ",
                            cols[i], sum(is.na(values[[i]]))),
               sprintf("give those cells a value, or leave them out (%s)",
                       if (arg == "population") sprintf("fitFlow(..., cells = !is.na(x$%s))", cols[i])
                       else sprintf("%s[, !is.na(%s$%s)]", arg, arg, cols[i])))
    }
  }
  ids <- do.call(paste, c(values, sep = "/"))
  if (length(cols) > 1) {
    combos <- unique(as.data.frame(values, col.names = cols, stringsAsFactors = FALSE))
    id <- do.call(paste, c(unname(as.list(combos)), sep = "/"))
    if (anyDuplicated(id)) {
      clash <- combos[id == id[anyDuplicated(id)], , drop = FALSE]
      pf_abort(arg, sprintf("columns %s give different cells the same population id '%s' (%s): their values contain \"/\", the separator",
                            paste0("'", cols, "'", collapse = ", "), id[anyDuplicated(id)],
                            paste(apply(clash, 1, function(r) paste0("'", r, "'", collapse = " + ")), collapse = " and ")),
               "replace \"/\" in those values, e.g. x$col <- gsub(\"/\", \"-\", x$col)")
    }
  }
  ids
}

rows_of <- function(df, i) if (is.null(df)) NULL else df[i, , drop = FALSE]

label_frame <- function(meta, cols) {
  if (!length(cols)) return(NULL)
  as.data.frame(stats::setNames(lapply(cols, function(nm) {
    v <- meta[[nm]]
    if (is.factor(v)) as.character(v) else v
  }), cols), stringsAsFactors = FALSE, optional = TRUE)
}

check_value <- function(value, values, arg, column) {
  present <- unique(as.character(values))
  if (is.null(value)) {
    pf_abort(arg, "is missing", sprintf("give the value of column '%s' that marks the %s cells; its values: %s",
                                        column, arg, paste(present, collapse = ", ")))
  }
  if (length(value) != 1 || is.na(value) || !(as.character(value) %in% present)) {
    pf_abort(arg, sprintf("is %s, not a value of column '%s'; its values: %s", deparse1(value), column,
                          paste(present, collapse = ", ")))
  }
  as.character(value)
}

# Where cells are read from: a reducedDim / reduction (`space`), or the rows
# `features` of an assay. Seurat's default reduction is "pca", scater's "PCA".
object_layout <- function(x, space, assay, features) {
  if (!is.null(assay)) {
    if (!is.null(space)) {
      pf_abort("space", "and `assay` are both given",
               "give `space` (a reducedDim or reduction) or `assay` (with `features`), not both")
    }
    if (!is.character(assay) || length(assay) != 1 || is.na(assay)) pf_abort("assay", "must be one assay name")
    if (!is.null(features) && (!is.character(features) || !length(features) || anyNA(features))) {
      pf_abort("features", "must be feature (gene) names, a character vector")
    }
    return(list(space = NULL, assay = assay, features = features))
  }
  if (!is.null(features)) pf_abort("features", "is used only with `assay`", "give `assay` too, e.g. assay = \"logcounts\"")
  space <- space %||% (if (is_seurat_cells(x)) "pca" else "PCA")
  if (!is.character(space) || length(space) != 1 || is.na(space)) pf_abort("space", "must be one reducedDim or reduction name")
  list(space = space, assay = NULL, features = NULL)
}

# Cells x features matrix of `x` in the layout's space.
layout_coordinates <- function(x, layout, arg) {
  if (!is.null(layout$space)) {
    m <- space_matrix(x, layout$space, arg)
  } else {
    a <- assay_matrix(x, layout$assay, arg)
    features <- layout$features %||% rownames(a)
    missing <- setdiff(features, rownames(a))
    if (length(missing)) {
      pf_abort(if (arg == "x") "features" else arg,
               sprintf("%s %d feature%s not among the rows of assay '%s': %s", if (arg == "x") "has" else "lacks",
                       length(missing), if (length(missing) > 1) "s" else "", layout$assay,
                       paste(utils::head(missing, 5), collapse = ", ")),
               "use feature names from rownames() of the object")
    }
    m <- t(as.matrix(a[features, , drop = FALSE]))
  }
  m <- matrix(as.numeric(m), nrow(m), ncol(m), dimnames = list(colnames(x), colnames(m)))
  as_cell_matrix(m, arg)
}

space_matrix <- function(x, space, arg) {
  if (is_seurat_cells(x)) {
    available <- SeuratObject::Reductions(x)
    if (!(space %in% available)) {
      pf_abort("space", sprintf("is '%s', not a reduction of `%s`; its reductions: %s", space, arg,
                                if (length(available)) paste(available, collapse = ", ") else "none"),
               "run RunPCA() first, or name one of its reductions")
    }
    return(SeuratObject::Embeddings(x, reduction = space))
  }
  if (!inherits(x, "SingleCellExperiment")) {
    pf_abort("space", sprintf("needs a SingleCellExperiment; `%s` is a %s, which has no reducedDims", arg, class(x)[1]),
             "give `assay` (and `features`) instead, or convert with as(x, \"SingleCellExperiment\")")
  }
  available <- SingleCellExperiment::reducedDimNames(x)
  if (!(space %in% available)) {
    pf_abort("space", sprintf("is '%s', not a reducedDim of `%s`; its reducedDims: %s", space, arg,
                              if (length(available)) paste(available, collapse = ", ") else "none"),
             "compute one first (e.g. scater::runPCA(x)) or name one of its reducedDims")
  }
  SingleCellExperiment::reducedDim(x, space, withDimnames = TRUE)
}

# Features x cells matrix of an assay (Seurat: the assay's "data" layer).
assay_matrix <- function(x, assay, arg) {
  available <- if (is_seurat_cells(x)) SeuratObject::Assays(x) else SummarizedExperiment::assayNames(x)
  if (!(assay %in% available)) {
    pf_abort("assay", sprintf("is '%s', not an assay of `%s`; its assays: %s", assay, arg,
                              if (length(available)) paste(available, collapse = ", ") else "none"),
             "name one of its assays")
  }
  if (is_seurat_cells(x)) seurat_layer(x, assay, "data") else SummarizedExperiment::assay(x, assay, withDimnames = TRUE)
}

# Seurat v5 stores layers (LayerData); v4 slots (GetAssayData(slot =)).
seurat_layer <- function(x, assay, layer) {
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    layer_data <- getExportedValue("SeuratObject", "LayerData")
    layer_data(x, assay = assay, layer = layer)
  } else {
    SeuratObject::GetAssayData(x, slot = layer, assay = assay)
  }
}

# The cells to fit on (logical, indices or names), as column indices of `x`.
cell_subset <- function(cells, x) {
  n <- ncol(x)
  if (is.null(cells)) return(seq_len(n))
  if (anyNA(cells)) {
    pf_abort("cells", sprintf("contains %d NA value%s", sum(is.na(cells)), if (sum(is.na(cells)) > 1) "s" else ""),
             "NA selects nothing: decide for those cells, e.g. cells = !is.na(x$patient) & x$patient != \"107\"")
  }
  if (is.logical(cells)) {
    if (length(cells) != n) {
      pf_abort("cells", sprintf("is a logical vector of %d values but `x` has %d cells", length(cells), n),
               "give one TRUE/FALSE per cell (column) of `x`, e.g. cells = x$patient != \"107\"")
    }
    keep <- which(cells)
  } else if (is.character(cells)) {
    keep <- match(cells, colnames(x))
    if (anyNA(keep)) {
      pf_abort("cells", sprintf("names cells that are not in `x`, e.g. '%s'", cells[is.na(keep)][1]), "use colnames(x)")
    }
  } else if (is.numeric(cells)) {
    bad <- cells[cells != round(cells) | cells < 1 | cells > n]
    if (length(bad)) {
      pf_abort("cells", sprintf("has %d index%s that %s not a cell of `x` (1 to %d), e.g. %s", length(bad),
                                if (length(bad) > 1) "es" else "", if (length(bad) > 1) "are" else "is", n, format(bad[1])),
               "give whole numbers between 1 and ncol(x), a logical vector or cell names")
    }
    keep <- as.integer(cells)
  } else {
    pf_abort("cells", sprintf("must be a logical vector with one value per cell (%d), cell indices or cell names, not %s",
                              n, class(cells)[1]), "e.g. cells = x$patient != \"107\"")
  }
  if (!length(keep)) pf_abort("cells", "selects no cells", "select at least the source and target cells to fit on")
  keep
}

# Cells of one condition value or time point; all cells when the column is absent.
cells_where <- function(meta, column, value, arg, fix = "pass an object that holds such cells") {
  if (is.null(column) || !(column %in% names(meta))) return(seq_len(nrow(meta)))
  cells <- which(as.character(meta[[column]]) == as.character(value))
  if (!length(cells)) {
    pf_abort(arg, sprintf("%s no cells with %s == '%s'; %s: %s", if (arg == "cells") "selects" else "has", column, value,
                          if (arg == "cells") "the selected cells have" else "its values",
                          paste(unique(as.character(meta[[column]])), collapse = ", ")), fix)
  }
  cells
}

# A PCA recomputed on other cells has as many components but another basis:
# its coordinates mean other cells than the model's. Compared when both the
# model and `x` hold loadings (subsetting a SingleCellExperiment drops them).
check_same_loadings <- function(spec, x, arg) {
  fitted <- spec$expression$rotation
  if (is.null(fitted) || is.null(spec$space)) return(invisible())
  rotation <- if (is_seurat_cells(x)) {
    tryCatch(SeuratObject::Loadings(x[[spec$space]]), error = function(e) NULL)
  } else {
    attr(SingleCellExperiment::reducedDim(x, spec$space), "rotation")
  }
  if (is.null(rotation) || !length(rotation)) return(invisible())
  same <- identical(dim(rotation), dim(fitted)) && identical(rownames(rotation), rownames(fitted)) &&
    max(abs(as.numeric(rotation) - as.numeric(fitted))) <= 1e-6 * max(abs(fitted))
  if (!same) {
    pf_abort(arg, sprintf("has a %s '%s' with other loadings than the one the model was fitted on (recomputed on other cells?): its coordinates mean other cells",
                          if (is_seurat_cells(x)) "reduction" else "PCA", spec$space),
             paste0("project the cells onto the fitted PCA: with e <- fit$cell_object$expression, the coordinates are ",
                    "t((expr[rownames(e$rotation), ] - e$center) / e$scale) %*% e$rotation (expr: genes x cells, ",
                    "the fitted assay)"))
  }
  invisible()
}

# Expression model of a PCA space, recorded at fit so that predicted cells can
# be written back as expression of the loading genes:
#   expression = center + scale * (PCs %*% t(rotation))
# with rotation = the loadings (genes x PCs), scale = 1 for a scater-style PCA
# of centred logcounts, and scale = the genes' standard deviation for a Seurat
# PCA of scaled data; center = mean expression of the fitted cells minus
# scale * (their mean PCs %*% t(rotation)), which is the PCA's own centre when
# the PCA was computed on those cells.
expression_model <- function(x, layout, cells, pcs) {
  if (is.null(layout$space)) return(NULL)
  if (is_seurat_cells(x)) {
    reduction <- x[[layout$space]]
    rotation <- SeuratObject::Loadings(reduction)
    assay <- SeuratObject::DefaultAssay(reduction)
  } else {
    rotation <- attr(SingleCellExperiment::reducedDim(x, layout$space), "rotation")
    assay <- "logcounts"
  }
  if (is.null(rotation) || !length(rotation) || ncol(rotation) != ncol(pcs) || is.null(rownames(rotation))) return(NULL)
  data <- tryCatch(assay_matrix(x, assay, "x"), error = function(e) NULL)
  genes <- rownames(rotation)
  if (is.null(data) || !all(genes %in% rownames(data))) return(NULL)
  expr <- as.matrix(data[genes, cells, drop = FALSE])
  mean <- rowMeans(expr)
  scale <- if (is_seurat_cells(x)) sqrt(rowSums((expr - mean)^2) / max(1, ncol(expr) - 1)) else rep(1, length(genes))
  pc_mean <- colMeans(pcs)
  rotation <- matrix(as.numeric(rotation), nrow(rotation), dimnames = list(genes, colnames(pcs)))
  list(assay = assay, center = mean - scale * drop(rotation %*% pc_mean), scale = stats::setNames(scale, genes),
       rotation = rotation)
}

# Genes x cells expression of cells given by their PCs (cells x PCs).
reconstruct_expression <- function(model, pcs) {
  out <- model$rotation %*% t(pcs) * model$scale + model$center
  dimnames(out) <- list(rownames(model$rotation), rownames(pcs))
  out
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
#'   from the fitted columns, which the object must have; `unseen_label`
#'   works as for matrices (also in `evaluateFlow()`).
#' - `embedPopulations(fit, object)` embeds each population of the object's
#'   source cells (MFM): a `DataFrame` (Seurat: a `data.frame`) with one row
#'   per population, row names the population ids, columns `population`, the
#'   population columns, `source_cells` and `embedding` (a matrix, populations
#'   x dimensions); [plotEmbeddings()] takes it as it is.
#' - `evaluateFlow(fit, object)` predicts from the object's source cells and
#'   compares with its observed target cells (or with the target cells of a
#'   second object, `evaluateFlow(fit, object, observed_object)`), beside the
#'   baselines and the noise floor, as [evaluateFlow()] does for matrices.
#'   When the model has population columns, each population with both source
#'   and observed cells is scored on its own: the result has the population id
#'   and the population columns first. In a PCA space with loadings it also
#'   reports the R^2 of mean expression over all loading genes and over the
#'   most responsive ones (`R2_all_genes`, `R2_top_genes`; see [evaluateFlow()]).
#'
#' The predicted object has one cell per source cell, named
#' `<source cell>_pred` (made unique), with metadata columns: every column of
#' its source cell (cell type, patient, sample, ...; for Seurat not
#' `orig.ident`, `nCount_*` and `nFeature_*`, which the new object sets
#' itself: `orig.ident` is `"popflow"`), the condition
#' column set to the target value (time course: the time column set to `to`),
#' `predicted = TRUE`, and `source_cell`, the name of the source cell. Its
#' coordinates are under the fitted space's name (a reducedDim, or a Seurat
#' reduction with the input reduction's key); models fitted on an assay
#' return the predicted features in that assay instead. Its genes are only
#' those it has values for (the loading genes, or the fitted features).
#'
#' Observed and predicted cells together: [combinePrediction()]`(observed,
#' predicted)` gives one object of the same kind. Not `cbind()` (the objects
#' have different metadata columns and assays) nor Seurat's `merge()`, which
#' fills every gene outside the loadings with 0 for the predicted cells, so
#' that `FindMarkers()` would report those genes as strongly down-regulated.
#' [plotPrediction()] and [sampleTrajectories()] take objects too.
#'
#' Keeping a model (or embeddings) with the data: a fitted model is an
#' ordinary R object that survives `saveRDS()` with the data it is stored in.
#' For a SingleCellExperiment, `S4Vectors::metadata(sce)$popflow_fit <- fit`;
#' for a Seurat object, `seu@misc$popflow_fit <- fit` (not
#' `SeuratObject::Misc(seu, "popflow_fit") <- fit`: SeuratObject 4 stores a
#' list through `c()`, which strips its class, so the stored model no longer
#' works with `predict()`). Read it back with `metadata(sce)$popflow_fit` or
#' `seu@misc$popflow_fit`.
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
  check_same_loadings(spec, x, arg)
  if (!is.null(spec$time)) {
    from <- from %||% object$time_labels[1]
    cells <- cells_where(meta, spec$time, from, arg)
  } else {
    cells <- cells_where(meta, spec$condition, spec$source, arg)
  }
  fitted_columns(c(spec$population, spec$label), x, meta, arg)
  list(x = coords[cells, , drop = FALSE], cells = cells, meta = meta, spec = spec, seurat = is_seurat_cells(x),
       population = population_ids(meta, spec$population, cells, arg),
       label = rows_of(label_frame(meta, spec$label), cells))
}

# Metadata of predicted cells: every metadata column of their source cells
# (cell type, patient, ...; not Seurat's per-cell counts, which the new object
# computes itself), the target condition (or time), the predicted flag and
# the source cell.
predicted_metadata <- function(object, src, to) {
  spec <- src$spec
  source_names <- rownames(src$x) %||% as.character(src$cells)
  meta <- src$meta[src$cells, , drop = FALSE]
  seurat_own <- if (isTRUE(src$seurat)) c("orig.ident", grep("^n(Count|Feature)_", names(meta), value = TRUE))
  keep <- setdiff(names(meta), c("predicted", "source_cell", seurat_own))
  out <- data.frame(row.names = make.unique(paste0(source_names, "_pred")))
  for (nm in keep) {
    v <- meta[[nm]]
    if (is.atomic(v) && length(v) == nrow(out)) out[[nm]] <- unname(v)  # plain columns (not nested tables)
  }
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
  # An unbalanced flow's weights become a cell column.
  if (!is.null(attr(pred, "weight"))) {
    meta$weight <- unname(attr(pred, "weight"))
    attr(pred, "weight") <- NULL
  }
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

# A single-cell object where a cells x features matrix is needed: as.matrix()
# would give genes x cells, so the error names the object's own accessors.
object_not_matrix <- function(x, arg) {
  how <- if (is_seurat_cells(x)) "SeuratObject::Embeddings(x, \"pca\")" else "SingleCellExperiment::reducedDim(x, \"PCA\")"
  pf_abort(arg, sprintf("is a %s, but a cells x features matrix is needed here", class(x)[1]),
           sprintf("give its cells' coordinates, e.g. %s (cells x PCs); as.matrix() gives genes x cells", how))
}

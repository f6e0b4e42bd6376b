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

# Cells x features matrix of `x` in the layout's space: all cells, or the
# cells `cells` (column indices of `x`, in that order). Only those cells (and
# an assay's chosen features) are read, block by block (see read_dense()), so
# an HDF5- or DelayedArray-backed object is never realised whole.
layout_coordinates <- function(x, layout, arg, cells = NULL) {
  cells <- if (is.null(cells)) seq_len(ncol(x)) else cells
  m <- layout_source(x, layout, arg)$read(cells)
  m <- matrix(as.numeric(m), nrow(m), ncol(m), dimnames = list(colnames(x)[cells], colnames(m)))
  as_cell_matrix(m, arg)
}

# Where a layout's cells are, checked but not read: `features` (the column
# names the cells will have) and `read(cells)`, cells x features.
layout_source <- function(x, layout, arg) {
  if (!is.null(layout$space)) {
    m <- check_readable(space_matrix(x, layout$space, arg), if (arg == "x") "space" else arg,
                        sprintf("%s '%s'", if (is_seurat_cells(x)) "reduction" else "reducedDim", layout$space))
    return(list(features = colnames(m), read = function(cells) read_dense(m, cells, NULL, along = "rows")))
  }
  src <- assay_source(x, layout$assay, arg)
  features <- layout$features %||% src$features
  missing <- setdiff(features, src$features)
  if (length(missing)) {
    pf_abort(if (arg == "x") "features" else arg,
             sprintf("%s %d feature%s not among the rows of assay '%s': %s", if (arg == "x") "has" else "lacks",
                     length(missing), if (length(missing) > 1) "s" else "", layout$assay,
                     paste(utils::head(missing, 5), collapse = ", ")),
             "use feature names from rownames() of the object")
  }
  list(features = features, read = function(cells) t(src$read(features, cells)))
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

# Features x cells matrix (as stored: dense, sparse or a DelayedArray) of an
# assay (Seurat: the assay's "data" layer; v5 assays with split layers: see
# assay_source()).
assay_matrix <- function(x, assay, arg) {
  check_assay_name(x, assay, arg)
  if (is_seurat_cells(x)) seurat_layer(x, assay, "data") else SummarizedExperiment::assay(x, assay, withDimnames = TRUE)
}

check_assay_name <- function(x, assay, arg) {
  available <- if (is_seurat_cells(x)) SeuratObject::Assays(x) else SummarizedExperiment::assayNames(x)
  if (!(assay %in% available)) {
    pf_abort("assay", sprintf("is '%s', not an assay of `%s`; its assays: %s", assay, arg,
                              if (length(available)) paste(available, collapse = ", ") else "none"),
             "name one of its assays")
  }
}

# An assay's values, checked but not read: `features` (its row names) and
# `read(features, cells)`, features x cells (dense; `cells` are column
# indices of `x`), reading those features and cells only.
assay_source <- function(x, assay, arg) {
  check_assay_name(x, assay, arg)
  if (is_seurat_cells(x)) return(seurat_data_source(x, assay, "data", arg))
  m <- check_readable(SummarizedExperiment::assay(x, assay, withDimnames = TRUE), if (arg == "x") "assay" else arg,
                      sprintf("assay '%s'", assay))
  list(features = rownames(m), read = function(features, cells) read_dense(m, match(features, rownames(m)), cells))
}

# A Seurat assay's layer (v4 slot). A v5 assay (Assay5) may hold it split by
# sample (data.1, data.2, ... after split()): each cell is read from the layer
# that holds it, and a feature a layer lacks is 0 for its cells, as
# JoinLayers() would give.
seurat_data_source <- function(x, assay, layer, arg) {
  a <- x[[assay]]
  if (!inherits(a, "Assay5")) {
    m <- check_readable(seurat_layer(x, assay, layer), if (arg == "x") "assay" else arg,
                        sprintf("the '%s' of assay '%s'", layer, assay))
    cell_names <- colnames(m)
    return(list(features = rownames(m), read = function(features, cells) {
      read_dense(m, match(features, rownames(m)), match(colnames(x)[cells], cell_names))
    }))
  }
  parts <- seurat_v5_layers(x, a, assay, layer, arg)
  list(features = seurat5("Features")(a), read = function(features, cells) {
    names <- colnames(x)[cells]
    out <- matrix(0, length(features), length(cells), dimnames = list(features, names))
    done <- logical(length(cells))
    for (p in parts) {
      at <- which(!done & names %in% p$cells)
      if (!length(at)) next
      f <- match(features, p$features)
      if (any(!is.na(f))) out[!is.na(f), at] <- read_dense(p$m, f[!is.na(f)], match(names[at], p$cells))
      done[at] <- TRUE
    }
    if (!all(done)) {
      pf_abort(arg, sprintf("has %d cell%s (e.g. '%s') in no '%s' layer of assay '%s' (layers: %s)", sum(!done),
                            if (sum(!done) > 1) "s" else "", names[!done][1], layer, assay,
                            paste(seurat5("Layers")(a), collapse = ", ")),
               sprintf("normalise all cells (Seurat::NormalizeData()), or select cells that have a '%s' layer", layer))
    }
    out
  })
}

# The layers of a v5 assay that hold `layer` ("data", or "data.1", "data.2",
# ... when split), each as its matrix (not read), features and cells.
seurat_v5_layers <- function(x, a, assay, layer, arg) {
  layers <- seurat5("Layers")(a, search = layer)
  if (!length(layers)) {
    pf_abort(if (arg == "x") "assay" else arg,
             sprintf("has no '%s' layer in the Seurat v5 assay '%s'; its layers: %s", layer, assay,
                     paste(seurat5("Layers")(a), collapse = ", ")),
             sprintf("normalise it first (Seurat::NormalizeData(x, assay = \"%s\")), which writes the '%s' layer%s",
                     assay, layer, if (length(seurat5("Layers")(a)) > 1) "s" else ""))
  }
  lapply(layers, function(l) {
    m <- check_readable(seurat5("LayerData")(a, layer = l, fast = TRUE), if (arg == "x") "assay" else arg,
                        sprintf("layer '%s' of assay '%s'", l, assay))
    list(m = m, features = seurat5("Features")(a, layer = l), cells = seurat5("Cells")(a, layer = l))
  })
}

# A function of SeuratObject 5 (looked up at run time: SeuratObject 4, which
# the code also supports, does not export it).
seurat5 <- function(name) getExportedValue("SeuratObject", name)

# Seurat v5 stores layers (LayerData); v4 slots (GetAssayData(slot =)).
seurat_layer <- function(x, assay, layer) {
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    seurat5("LayerData")(x, assay = assay, layer = layer)
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
    pca_rotation(x, spec$space)
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

# The loadings scater keeps as the "rotation" attribute of a reducedDim: read
# from the stored object (withDimnames = FALSE), since setting the cell names
# on a DelayedArray (HDF5) reducedDim gives a new object without it.
pca_rotation <- function(x, space) {
  attr(SingleCellExperiment::reducedDim(x, space, withDimnames = FALSE), "rotation")
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
    rotation <- pca_rotation(x, layout$space)
    assay <- "logcounts"
  }
  if (is.null(rotation) || !length(rotation) || ncol(rotation) != ncol(pcs) || is.null(rownames(rotation))) return(NULL)
  data <- tryCatch(assay_source(x, assay, "x"), error = function(e) NULL)
  genes <- rownames(rotation)
  if (is.null(data) || !all(genes %in% data$features)) return(NULL)
  # Mean and standard deviation of the loading genes, in blocks of cells.
  moments <- row_moments(function(at) data$read(genes, at), cells, length(genes))
  mean <- stats::setNames(moments$mean, genes)
  scale <- if (is_seurat_cells(x)) moments$sd else rep(1, length(genes))
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
#' Big objects: as in [fitFlow()][fitFlow-objects], only the cells used
#' (the source cells; for `evaluateFlow()` also the observed target cells) and
#' the fitted features or loading genes are read, in blocks, from dense,
#' sparse or DelayedArray (HDF5) assays and reducedDims, and from each layer
#' of a Seurat v5 assay split by sample. A Seurat v5 object gives a v5
#' prediction (an `Assay5` with one `data` layer); a v4 object a v4 one.
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
  layout_source(x, spec, arg)  # the space or assay checked before the columns
  check_same_loadings(spec, x, arg)
  if (!is.null(spec$time)) {
    from <- from %||% object$time_labels[1]
    cells <- cells_where(meta, spec$time, from, arg)
  } else {
    cells <- cells_where(meta, spec$condition, spec$source, arg)
  }
  fitted_columns(c(spec$population, spec$label), x, meta, arg)
  list(x = layout_coordinates(x, spec, arg, cells), cells = cells, meta = meta, spec = spec, seurat = is_seurat_cells(x),
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
  assay_object <- seurat_assay_like(newdata, data)
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

# An assay holding `data` (features x cells) of the version `like` uses: a v5
# assay (Assay5, one "data" layer) for a Seurat v5 object, else a v3/v4 Assay.
seurat_assay_like <- function(like, data) {
  if (inherits(like[[SeuratObject::DefaultAssay(like)]], "Assay5")) {
    return(seurat5("CreateAssay5Object")(data = data))
  }
  SeuratObject::CreateAssayObject(data = data)
}

# Rows `genes` of the "data" of a Seurat assay for all cells of `x`, in the
# order of colnames(x), as stored (a sparse layer stays sparse, a DelayedArray
# is realised as sparse): the layer of a v4 assay, or a v5 assay's split
# layers joined as JoinLayers() joins them (a gene a layer lacks is 0 there).
seurat_data_rows <- function(x, assay, genes, arg) {
  a <- x[[assay]]
  if (!inherits(a, "Assay5")) return(observed_rows(seurat_layer(x, assay, "data"), genes, sprintf("assay '%s'", assay)))
  features <- seurat5("Features")(a)
  observed_rows(matrix(0, length(features), 0, dimnames = list(features, NULL)), genes, sprintf("assay '%s'", assay))
  pieces <- lapply(seurat_v5_layers(x, a, assay, "data", arg), function(p) {
    f <- match(genes, p$features)
    piece <- p$m[f[!is.na(f)], , drop = FALSE]
    piece <- if (inherits(piece, "DelayedArray")) as(piece, "dgCMatrix") else SeuratObject::as.sparse(piece)
    if (anyNA(f)) {
      full <- Matrix::sparseMatrix(i = integer(0), j = integer(0), x = numeric(0), dims = c(length(genes), ncol(piece)))
      full[!is.na(f), ] <- piece
      piece <- full
    }
    dimnames(piece) <- list(genes, p$cells)
    piece
  })
  joined <- do.call(cbind, pieces)
  at <- match(colnames(x), colnames(joined))
  if (anyNA(at)) {
    pf_abort(arg, sprintf("has %d cells (e.g. '%s') in no 'data' layer of assay '%s'", sum(is.na(at)),
                          colnames(x)[is.na(at)][1], assay),
             "normalise all cells (Seurat::NormalizeData()), or give only cells that have a 'data' layer")
  }
  joined[, at, drop = FALSE]
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

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

# One population id per cell: the values of one column, or of several joined by "/".
population_ids <- function(meta, cols) {
  if (!length(cols)) return(NULL)
  do.call(paste, c(lapply(cols, function(nm) as.character(meta[[nm]])), sep = "/"))
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
  if (is.logical(cells) && length(cells) == n && !anyNA(cells)) {
    keep <- which(cells)
  } else if (is.character(cells)) {
    keep <- match(cells, colnames(x))
    if (anyNA(keep)) {
      pf_abort("cells", sprintf("names cells that are not in `x`, e.g. '%s'", cells[is.na(keep)][1]), "use colnames(x)")
    }
  } else if (is.numeric(cells) && !anyNA(cells) && all(cells == round(cells)) && all(cells >= 1 & cells <= n)) {
    keep <- as.integer(cells)
  } else {
    pf_abort("cells", sprintf("must be a logical vector with one value per cell (%d), cell indices or cell names", n))
  }
  if (!length(keep)) pf_abort("cells", "selects no cells")
  keep
}

# Cells of one condition value or time point; all cells when the column is absent.
cells_where <- function(meta, column, value, arg) {
  if (is.null(column) || !(column %in% names(meta))) return(seq_len(nrow(meta)))
  cells <- which(as.character(meta[[column]]) == as.character(value))
  if (!length(cells)) {
    pf_abort(arg, sprintf("has no cells with %s == '%s'; its values: %s", column, value,
                          paste(unique(as.character(meta[[column]])), collapse = ", ")),
             "pass an object that holds such cells")
  }
  cells
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

# combinePrediction(): observed and predicted cells in one object, for
# plotting, clustering or differential expression side by side.

#' Observed and predicted cells in one object
#'
#' Joins the cells of an object with the object [predict()] returned for it
#' (see [cell-objects]) into one object of the same kind, so that observed
#' and predicted cells can be plotted, clustered or compared together.
#' `cbind()` (SingleCellExperiment) fails on the two, and Seurat's `merge()`
#' fills every gene the prediction lacks with 0, which differential
#' expression (`FindMarkers()`) then reports as strongly down-regulated
#' genes: use this instead.
#'
#' The combined object holds:
#' - the genes (features) the prediction has, and only those: for a PCA space
#'   with loadings, the loading genes (predicted expression exists for no
#'   other gene); for a model fitted on an assay, its features. A message
#'   says how many of `observed`'s genes are left out. A space without
#'   loadings (UMAP, Harmony) gives no genes: the coordinates alone (a Seurat
#'   object then also holds them as the assay `popflow`).
#' - the prediction's assays (`logcounts` for a SingleCellExperiment; the
#'   `data` of the reduction's assay for Seurat) and its space (reducedDim or
#'   reduction), for both kinds of cell.
#' - every metadata column of either object; `predicted` (`FALSE` for
#'   observed cells) and `source_cell` (`NA` for them) tell the cells apart, and
#'   a column one object lacks is `NA` for the other's cells.
#'
#' A DelayedArray assay of `observed` (e.g. HDF5-backed) stays delayed: the
#' combined assay is a DelayedMatrix whose observed part is still read from
#' disk. A Seurat v5 assay split into layers by sample is joined (as
#' `JoinLayers()` joins it) into the combined object's one `data` layer, of a
#' v5 assay.
#'
#' @param observed A SingleCellExperiment or Seurat object: the observed
#'   cells (all of them, or e.g. only the target condition), with the space
#'   and genes the model was fitted on.
#' @param predicted The object `predict(fit, object)` returned, of the same kind.
#' @return An object of the kind of `observed` with the cells of both,
#'   observed cells first.
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sce <- kangPBMC()
#'   b_cells <- sce$cell_type == "B cells"
#'   fit <- fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
#'                  method = "icfm", cells = b_cells, training = TrainingParam(steps = 50), verbose = FALSE)
#'   pred <- predict(fit, sce[, b_cells], solver = SolverParam("rk4", steps = 5), verbose = FALSE)
#'   both <- combinePrediction(sce[, b_cells], pred)
#'   table(both$condition, both$predicted)
#' }
#' @export
combinePrediction <- function(observed, predicted) {
  if (!is_cell_object(observed)) {
    pf_abort("observed", sprintf("must be a SingleCellExperiment or Seurat object, not %s", class(observed)[1]),
             "for matrices, rbind() the observed and predicted cells")
  }
  need_object_packages(observed, "observed")
  if (!is_cell_object(predicted) || is_seurat_cells(predicted) != is_seurat_cells(observed) ||
      !("predicted" %in% names(cell_columns(predicted)))) {
    pf_abort("predicted", sprintf("must be the %s object that predict(fit, object) returned",
                                  if (is_seurat_cells(observed)) "Seurat" else "SingleCellExperiment"),
             "predict the cells of a model fitted on an object of the kind of `observed`")
  }
  meta <- combined_metadata(cell_columns(observed), cell_columns(predicted))
  if (is_seurat_cells(observed)) combine_seurat(observed, predicted, meta) else combine_bioc(observed, predicted, meta)
}

# Both objects' metadata columns, observed cells first; what one lacks is NA.
combined_metadata <- function(obs, pred) {
  obs <- as.data.frame(obs, optional = TRUE)
  pred <- as.data.frame(pred, optional = TRUE)
  obs$predicted <- FALSE
  obs$source_cell <- NA_character_
  for (nm in setdiff(names(pred), names(obs))) obs[[nm]] <- rep(NA, nrow(obs))
  for (nm in setdiff(names(obs), names(pred))) pred[[nm]] <- rep(NA, nrow(pred))
  pred <- pred[, names(obs), drop = FALSE]
  for (nm in names(obs)) {
    # A factor on one side and text on the other become text.
    if (is.factor(obs[[nm]]) != is.factor(pred[[nm]])) {
      obs[[nm]] <- as.vector(obs[[nm]])
      pred[[nm]] <- as.vector(pred[[nm]])
    }
  }
  out <- rbind(obs, pred)
  rownames(out) <- make.unique(c(rownames(obs), rownames(pred)))
  out
}

# Rows `genes` of an observed features x cells matrix, named in errors by `what`.
observed_rows <- function(m, genes, what) {
  missing <- setdiff(genes, rownames(m))
  if (length(missing)) {
    pf_abort("observed", sprintf("lacks %d of the predicted genes in %s (e.g. %s)", length(missing), what,
                                 paste(utils::head(missing, 3), collapse = ", ")),
             "give the object (or cells of the object) the model was fitted on")
  }
  m[genes, , drop = FALSE]
}

left_out_note <- function(n_all, genes) {
  dropped <- n_all - length(genes)
  if (dropped > 0 && length(genes)) {
    message(sprintf(paste0("combinePrediction(): the combined object holds the %d genes the prediction has (the PCA's ",
                           "loading genes, or the fitted features); %d other genes of `observed` are left out, ",
                           "as predicted cells have no values for them"), length(genes), dropped))
  }
}

combine_bioc <- function(observed, predicted, meta) {
  genes <- rownames(predicted) %||% character(0)
  assays <- lapply(stats::setNames(nm = SummarizedExperiment::assayNames(predicted)), function(a) {
    if (!(a %in% SummarizedExperiment::assayNames(observed))) {
      pf_abort("observed", sprintf("has no assay '%s', which the prediction holds", a),
               "give the object (or cells of the object) the model was fitted on")
    }
    obs <- observed_rows(SummarizedExperiment::assay(observed, a, withDimnames = TRUE), genes, sprintf("assay '%s'", a))
    pred <- SummarizedExperiment::assay(predicted, a, withDimnames = TRUE)
    # An observed DelayedArray (e.g. HDF5) stays on disk: a delayed cbind() (Bioconductor's generic), both sides delayed.
    if (inherits(obs, "DelayedArray")) return(BiocGenerics::cbind(obs, DelayedArray::DelayedArray(pred)))
    cbind(obs, pred)
  })
  left_out_note(nrow(observed), genes)
  out <- SingleCellExperiment::SingleCellExperiment(assays = assays,
                                                    colData = S4Vectors::DataFrame(meta, check.names = FALSE))
  if (length(genes) && length(assays)) SummarizedExperiment::rowData(out) <- SummarizedExperiment::rowData(observed)[genes, , drop = FALSE]
  for (space in SingleCellExperiment::reducedDimNames(predicted)) {
    pred <- SingleCellExperiment::reducedDim(predicted, space, withDimnames = TRUE)
    obs <- read_dense(space_matrix(observed, space, "observed"), along = "rows")
    if (ncol(obs) != ncol(pred)) {
      pf_abort("observed", sprintf("has %d dimensions in reducedDim '%s', the prediction %d", ncol(obs), space, ncol(pred)))
    }
    both <- rbind(matrix(as.numeric(obs), nrow(obs)), matrix(as.numeric(pred), nrow(pred)))
    dimnames(both) <- list(rownames(meta), colnames(pred))
    attr(both, "rotation") <- attr(pred, "rotation")
    SingleCellExperiment::reducedDim(out, space) <- both
  }
  out
}

combine_seurat <- function(observed, predicted, meta) {
  assay <- SeuratObject::DefaultAssay(predicted)
  pred_data <- seurat_layer(predicted, assay, "data")
  genes <- rownames(pred_data)
  spaces <- SeuratObject::Reductions(predicted)
  if (assay %in% SeuratObject::Assays(observed)) {
    obs_data <- seurat_data_rows(observed, assay, genes, "observed")
    left_out_note(nrow(observed[[assay]]), genes)
  } else if (identical(assay, "popflow") && length(spaces)) {
    # No expression: the prediction's coordinates are its assay; the observed cells' are theirs.
    obs_data <- t(read_dense(space_matrix(observed, spaces[1], "observed"), along = "rows"))
    rownames(obs_data) <- genes
  } else {
    pf_abort("observed", sprintf("has no assay '%s', which the prediction holds", assay),
             "give the object (or cells of the object) the model was fitted on")
  }
  data <- cbind(SeuratObject::as.sparse(obs_data), SeuratObject::as.sparse(pred_data))
  colnames(data) <- rownames(meta)
  assay_object <- seurat_assay_like(observed, data)
  SeuratObject::Key(assay_object) <- SeuratObject::Key(predicted[[assay]])
  out <- SeuratObject::CreateSeuratObject(counts = assay_object, assay = assay, meta.data = meta, project = "popflow")
  for (space in spaces) {
    reduction <- predicted[[space]]
    pred <- SeuratObject::Embeddings(reduction)
    obs <- read_dense(space_matrix(observed, space, "observed"), along = "rows")
    if (ncol(obs) != ncol(pred)) {
      pf_abort("observed", sprintf("has %d dimensions in reduction '%s', the prediction %d", ncol(obs), space, ncol(pred)))
    }
    both <- rbind(matrix(as.numeric(obs), nrow(obs)), pred)
    dimnames(both) <- list(rownames(meta), colnames(pred))
    args <- list(embeddings = both, key = SeuratObject::Key(reduction), assay = assay)
    loadings <- SeuratObject::Loadings(reduction)
    if (length(loadings)) args$loadings <- loadings
    out[[space]] <- do.call(SeuratObject::CreateDimReducObject, args)
  }
  out
}

#' Kang IFN-beta PBMC data (built-in data)
#'
#' Human peripheral blood mononuclear cells of three patients (101, 1015,
#' 107), control and stimulated with interferon-beta (Kang et al. 2018, Nature
#' Biotechnology), as subset and log-normalised in the Bioconductor package
#' `distinct` (its `Kang_subset`; GPL (>= 3), compatible with popflow's
#' GPL-3): 9,517 cells x 100 genes, 8 cell types. Cells per patient, control /
#' stimulated: 101: 1027 / 1363; 1015: 3138 / 2703; 107: 645 / 641. The
#' natural populations are patient x cell type, each with its control
#' (source) and stimulated (target) cells.
#'
#' The PCA is computed here, so that no other package is needed: `prcomp()`
#' of the cells' logcounts, centred, not scaled, first `n_pcs` components. As
#' `scater::runPCA()` does, the loadings (genes x PCs) are the `"rotation"`
#' attribute of the reducedDim and the percentage of variance explained its
#' `"percentVar"` attribute. For `format = "Seurat"` the PCA follows Seurat's
#' convention instead: components of the scaled data (each gene centred and
#' divided by its standard deviation), stored as reduction `"pca"` with key
#' `"PC_"` and its loadings, the logcounts being the `data` of assay `"RNA"`
#' (Seurat replaces the underscores of gene names with dashes).
#'
#' @param format `"SingleCellExperiment"`, `"Seurat"` or `"list"`.
#' @param n_pcs Number of principal components.
#' @return A SingleCellExperiment with assay `logcounts` (genes x cells),
#'   colData `patient`, `condition` (`ctrl`, `stim`) and `cell_type`, and
#'   reducedDim `"PCA"`; or a Seurat object with the same meta.data columns;
#'   or a list with `logcounts` (genes x cells), `cells` (a data.frame of the
#'   three columns) and `pca` (cells x PCs, with the `"rotation"` attribute).
#' @source Kang H.M. et al. (2018) Multiplexed droplet single-cell RNA-sequencing
#'   using natural genetic variation. Nature Biotechnology 36, 89-94. Subset
#'   from the Bioconductor package `distinct` (GPL (>= 3)).
#' @examples
#' kang <- kangPBMC("list")
#' dim(kang$logcounts)
#' table(kang$cells$patient, kang$cells$condition)
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sce <- kangPBMC()
#'   sce
#' }
#' @export
kangPBMC <- function(format = c("SingleCellExperiment", "Seurat", "list"), n_pcs = 20) {
  format <- check_choice(format[1], "format", c("SingleCellExperiment", "Seurat", "list"))
  n_pcs <- check_count(n_pcs, "n_pcs")
  if (n_pcs > 100) pf_abort("n_pcs", "must be at most 100, the number of genes")
  path <- system.file("extdata", "kang_ifnb_pbmc.csv.gz", package = "popflow", mustWork = TRUE)
  df <- utils::read.csv(path, check.names = FALSE)
  cells <- data.frame(patient = factor(df$patient), condition = factor(df$condition, levels = c("ctrl", "stim")),
                      cell_type = factor(df$cell_type), row.names = sprintf("cell%04d", seq_len(nrow(df))))
  expr <- as.matrix(df[, -(1:3)])
  dimnames(expr) <- list(rownames(cells), names(df)[-(1:3)])
  logcounts <- t(expr)
  if (format == "Seurat") return(kang_seurat(logcounts, cells, n_pcs))
  pca <- principal_components(expr, n_pcs, scale = FALSE)
  if (format == "list") return(list(logcounts = logcounts, cells = cells, pca = pca))
  need_package("SingleCellExperiment", "format", "SingleCellExperiment")
  SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = logcounts), colData = S4Vectors::DataFrame(cells),
                                             reducedDims = list(PCA = pca))
}

# Cells x PCs with scater's attributes.
principal_components <- function(expr, n_pcs, scale) {
  pc <- stats::prcomp(expr, center = TRUE, scale. = scale, rank. = n_pcs)
  out <- pc$x
  attr(out, "rotation") <- pc$rotation
  attr(out, "percentVar") <- 100 * pc$sdev[seq_len(n_pcs)]^2 / sum(pc$sdev^2)
  out
}

kang_seurat <- function(logcounts, cells, n_pcs) {
  need_package("SeuratObject", "format", "Seurat object")
  rownames(logcounts) <- gsub("_", "-", rownames(logcounts))
  assay <- SeuratObject::CreateAssayObject(data = logcounts)
  SeuratObject::Key(assay) <- "rna_"
  seu <- SeuratObject::CreateSeuratObject(counts = assay, assay = "RNA", meta.data = cells)
  sds <- apply(logcounts, 1, stats::sd)
  pca <- principal_components(t(logcounts[sds > 0, , drop = FALSE]), n_pcs, scale = TRUE)
  embeddings <- matrix(as.numeric(pca), nrow(pca), dimnames = list(colnames(logcounts), paste0("PC_", seq_len(n_pcs))))
  loadings <- attr(pca, "rotation")
  colnames(loadings) <- colnames(embeddings)
  seu[["pca"]] <- SeuratObject::CreateDimReducObject(embeddings = embeddings, loadings = loadings, key = "PC_",
                                                      assay = "RNA")
  seu
}

# Population stores: cells written once to disk (float32, sorted by block),
# read by the engine itself while a population model trains. A block is one
# population's source or target cells, or a control set that several
# populations share as their source. The file format is described in
# src/core/population_store.h; this file writes stores from R objects block
# by block and opens them.

#' Write cells to a population store
#'
#' Writes the cells of population models (MFM, CGFM) once to disk, as float32
#' rows sorted by population, with a table of the populations, their source
#' and target cells and their labels. [fitFlow()], [predict()] and
#' [evaluateFlow()] accept the store ([PopulationStore()]) in place of the
#' cells: training then reads the populations each step needs from the file
#' (reading ahead on a background thread), so the cells never sit in R's
#' memory and training's memory does not grow with the number of cells.
#'
#' The input is read `chunk_rows` cells at a time, so a matrix-like object
#' held on disk (a DelayedArray or HDF5Array, cells as rows: transpose a genes
#' x cells one with `t()`) is never made dense as a whole. Cells may come in
#' any order: each lands at its population's place in the file.
#'
#' **Shared controls.** When many populations share one set of source cells
#' (a cell line's DMSO cells for every drug on it), give each control set's
#' cells once in `x`, with the control set's id as their `population`, the
#' target cells with their populations' ids, and `controls`, naming each
#' population's control set. The control set is stored once, and training
#' builds one kNN graph and one embedding for it.
#'
#' The store is a plain binary file rather than HDF5: each population's cells
#' are one contiguous run of rows, which one `pread()` reads from any thread
#' without a library lock. Reading a step's 20 blocks of 500 cells x 50
#' features took 0.145 ms from the page cache, HDF5 hyperslabs of the same
#' cells 0.164 ms (`bench/store_read.c`; README, "Population stores").
#'
#' @param x Source cells (cells x features): a matrix, or any matrix-like
#'   object with `dim()` and `[` (DelayedArray, HDF5Array, sparse Matrix); or
#'   a SingleCellExperiment (with `dimred`) or Seurat object (with
#'   `reduction`) holding source and target cells, split by `condition`.
#' @param file Path of the store to write.
#' @param ... Arguments of the default method (object methods).
#' @param target Target cells, with the same features as `x`.
#' @param population The population of each cell of `x`, then of `target`
#'   (as in [fitFlow()]); with `controls`, the control set of each cell of `x`.
#' @param label Optional labels of each cell of `x`, then of `target` (a
#'   vector or a data.frame of columns), constant within a population; with
#'   `controls` only the target cells' labels are used.
#' @param controls `NULL`, or a named character vector: for each population
#'   (names) the id of its control set (values), as given in `population` for
#'   the cells of `x`.
#' @param chunk_rows Cells read from the input and written at a time.
#' @param overwrite Replace an existing file.
#' @param verbose Report progress for large inputs.
#' @return The store, opened with [PopulationStore()] (invisibly).
#' @seealso [PopulationStore()], [fitFlow()].
#' @examples
#' set.seed(1)
#' src <- matrix(rnorm(400), ncol = 2)
#' pop <- rep(c("a", "b"), each = 100)
#' file <- tempfile(fileext = ".pfstore")
#' store <- writePopulationStore(src, file, target = src + 2, population = c(pop, pop))
#' store
#'
#' # Two drugs on one shared control set.
#' ctrl <- matrix(rnorm(200), ncol = 2)
#' treated <- rbind(ctrl + 1, ctrl - 1)
#' shared <- writePopulationStore(ctrl, tempfile(), target = treated,
#'                                population = c(rep("dmso", 100), rep(c("drug1", "drug2"), each = 100)),
#'                                controls = c(drug1 = "dmso", drug2 = "dmso"))
#' summary(shared)
#' @export
writePopulationStore <- function(x, file, ...) UseMethod("writePopulationStore")

#' @rdname writePopulationStore
#' @export
writePopulationStore.default <- function(x, file, target, population, label = NULL, controls = NULL,
                                         chunk_rows = 65536, overwrite = FALSE, verbose = FALSE, ...) {
  check_dots(..., .verb = "writePopulationStore")
  path <- check_store_output(file, overwrite)
  chunk_rows <- check_count(chunk_rows, "chunk_rows")
  verbose <- check_flag(verbose, "verbose")
  if (missing(target) || is.null(target)) {
    pf_abort("target", "is missing", "give the target cells (cells x features), with `population` for x's and target's cells")
  }
  check_matrix_like(x, "x")
  check_matrix_like(target, "target")
  if (ncol(target) != ncol(x)) {
    pf_abort("target", sprintf("has %d features but `x` has %d", ncol(target), ncol(x)),
             "give source and target cells with the same features (columns)")
  }
  n_x <- nrow(x)
  n <- n_x + nrow(target)
  if (missing(population)) population <- NULL
  population <- check_population(population, n)
  side <- rep(0:1, c(n_x, nrow(target)))
  cols <- label_columns(label, n)
  layout <- store_layout(population, side, cols, controls)
  features <- colnames(x) %||% colnames(target) %||% paste0("V", seq_len(ncol(x)))
  text <- store_text(features, layout$labels)
  writer <- pf_store_write_open(path, ncol(x), layout$block_names, layout$block_sizes, layout$populations$population,
                                layout$populations$source_block, layout$populations$target_block, text)
  # Each cell's destination: cells in block order (stable), block after block.
  dest <- numeric(n)
  kept <- which(!is.na(layout$block))
  dest[kept[order(layout$block[kept], method = "radix")]] <- seq_along(kept) - 1
  written <- 0
  for (part in list(list(m = x, offset = 0L, arg = "x"), list(m = target, offset = n_x, arg = "target"))) {
    rows <- nrow(part$m)
    for (first in seq_len(ceiling(rows / chunk_rows))) {
      idx <- seq.int((first - 1) * chunk_rows + 1, min(first * chunk_rows, rows))
      global <- idx + part$offset
      use <- !is.na(layout$block[global])
      if (!any(use)) next
      m <- store_chunk(part$m, idx[use], part$arg)
      pf_store_write_rows(writer, m, dest[global[use]], layout$block[global[use]])
      written <- written + sum(use)
      if (verbose) message(sprintf("writePopulationStore: %d of %d cells written", written, length(kept)))
    }
  }
  pf_store_write_finish(writer)
  invisible(PopulationStore(path))
}

#' @rdname writePopulationStore
#' @param dimred,reduction The reducedDim (SingleCellExperiment) or reduction
#'   (Seurat) holding the cells' coordinates.
#' @param condition,source_value,target_value The cell metadata column that
#'   splits source from target cells, and its values for each.
#' @param population_column,label_columns Cell metadata columns with each
#'   cell's population (or control set, with `controls`) and labels.
#' @export
writePopulationStore.SingleCellExperiment <- function(x, file, dimred, condition, source_value, target_value,
                                                      population_column, label_columns = NULL, ...) {
  if (!dimred %in% SingleCellExperiment::reducedDimNames(x)) {
    pf_abort("dimred", sprintf("'%s' is not a reducedDim of `x` (it has: %s)", dimred,
                               paste(SingleCellExperiment::reducedDimNames(x), collapse = ", ")),
             "give the name of one of its reducedDims, e.g. \"PCA\"")
  }
  store_from_object(SingleCellExperiment::reducedDim(x, dimred), as.data.frame(SummarizedExperiment::colData(x)),
                    file, condition, source_value, target_value, population_column, label_columns, ...)
}

#' @rdname writePopulationStore
#' @export
writePopulationStore.Seurat <- function(x, file, reduction, condition, source_value, target_value,
                                        population_column, label_columns = NULL, ...) {
  if (!reduction %in% names(x@reductions)) {
    pf_abort("reduction", sprintf("'%s' is not a reduction of `x` (it has: %s)", reduction,
                                  paste(names(x@reductions), collapse = ", ")),
             "give the name of one of its reductions, e.g. \"pca\"")
  }
  store_from_object(SeuratObject::Embeddings(x, reduction = reduction), x@meta.data, file, condition, source_value,
                    target_value, population_column, label_columns, ...)
}

# Cells of an object's embedding split into source and target by a metadata column.
store_from_object <- function(coords, meta, file, condition, source_value, target_value, population_column,
                              label_columns, ...) {
  for (arg in c("condition", "population_column", label_columns)) {
    col <- if (arg %in% c("condition", "population_column")) get(arg) else arg
    if (!col %in% names(meta)) {
      pf_abort(if (arg %in% c("condition", "population_column")) arg else "label_columns",
               sprintf("names '%s', which is not a column of the cell metadata", col),
               sprintf("give one of: %s", paste(utils::head(names(meta), 20), collapse = ", ")))
    }
  }
  is_source <- meta[[condition]] %in% source_value
  is_target <- meta[[condition]] %in% target_value
  if (!any(is_source) || !any(is_target)) {
    pf_abort(if (!any(is_source)) "source_value" else "target_value",
             sprintf("matches no cell of column '%s'", condition), "give values that occur in that column")
  }
  rows <- c(which(is_source), which(is_target))
  labels <- if (length(label_columns)) meta[rows, label_columns, drop = FALSE]
  writePopulationStore.default(coords[is_source, , drop = FALSE], file, target = coords[is_target, , drop = FALSE],
                               population = as.character(meta[[population_column]][rows]), label = labels, ...)
}

#' Open a population store
#'
#' @param file Path of a store written by [writePopulationStore()].
#' @param verify Read every cell and compare the store's checksum (slow for
#'   large stores; opening always checks the header, the file's size and the
#'   table's checksum).
#' @return A `popflow_store`: the file's path, its cells' dimensions, the
#'   populations (with their source and target blocks and cell counts), and
#'   their labels. Pass it to [fitFlow()], [predict()] or [evaluateFlow()].
#' @examples
#' src <- matrix(rnorm(200), ncol = 2)
#' file <- tempfile()
#' writePopulationStore(src, file, target = src + 1, population = rep(c("a", "b"), 100))
#' store <- PopulationStore(file)
#' store
#' summary(store)
#' @export
PopulationStore <- function(file, verify = FALSE) {
  if (!is.character(file) || length(file) != 1 || is.na(file)) {
    pf_abort("file", sprintf("must be the path of a population store, not %s", deparse1(file)),
             "give the file written by writePopulationStore()")
  }
  path <- normalizePath(path.expand(file), mustWork = FALSE)
  if (!file.exists(path)) {
    pf_abort("file", sprintf("'%s' does not exist", file), "give the path of a store written by writePopulationStore()")
  }
  if (dir.exists(path)) pf_abort("file", sprintf("'%s' is a folder, not a store", file), "give the store's file")
  info <- store_call(pf_store_info(path), file)
  if (check_flag(verify, "verify")) store_call(pf_store_verify(path), file)
  meta <- read_store_text(info$text, file)
  pops <- info$populations
  pops$source_cells <- info$blocks$cells[pops$source_block + 1]
  pops$target_cells <- info$blocks$cells[pops$target_block + 1]
  structure(list(path = path, dim = info$dim, cells = info$cells, file_bytes = info$file_bytes,
                 features = meta$features, blocks = info$blocks, block_means = info$block_means,
                 populations = pops, labels = meta$labels),
            class = "popflow_store")
}

#' @export
print.popflow_store <- function(x, ...) {
  pops <- x$populations
  n_src <- length(unique(pops$source_block))
  cat(sprintf("<popflow population store> %s\n", x$path))
  cat(sprintf("  %s cells x %d features (%s), %d population%s, %d source block%s%s\n",
              format(x$cells, big.mark = ","), x$dim, format_bytes(x$file_bytes), nrow(pops),
              if (nrow(pops) == 1) "" else "s", n_src, if (n_src == 1) "" else "s",
              if (n_src < nrow(pops)) " (shared controls)" else ""))
  if (!is.null(x$labels)) cat(sprintf("  labels: %s\n", paste(names(x$labels), collapse = ", ")))
  invisible(x)
}

#' @export
summary.popflow_store <- function(object, ...) {
  pops <- object$populations
  out <- data.frame(population = pops$population, source = object$blocks$block[pops$source_block + 1],
                    source_cells = pops$source_cells, target_cells = pops$target_cells, stringsAsFactors = FALSE)
  if (!is.null(object$labels)) out <- cbind(out, object$labels)
  out
}

is_population_store <- function(x) inherits(x, "popflow_store")

format_bytes <- function(b) {
  units <- c("B", "KB", "MB", "GB", "TB")
  i <- max(1, min(length(units), floor(log(max(b, 1), 1024)) + 1))
  sprintf("%.3g %s", b / 1024^(i - 1), units[i])
}

# The engine's store errors, naming the argument and the fix.
store_call <- function(expr, file, arg = "file") {
  tryCatch(expr, error = function(e) {
    msg <- conditionMessage(e)
    fix <- if (grepl("not a popflow population store", msg)) {
      "give a file written by writePopulationStore()"
    } else if (grepl("truncated", msg)) {
      "the file was cut short (an interrupted copy or write, or a full disk): copy or write it again with writePopulationStore()"
    } else if (grepl("format version", msg)) {
      "read it with the popflow version that wrote it, or write the store again with this one"
    } else {
      "the file is damaged or was not written by writePopulationStore(): write the store again"
    }
    pf_abort(arg, sprintf("cannot be read as a population store: %s", sub("^store '[^']*' ", "", msg)), fix)
  })
}

check_store_output <- function(file, overwrite) {
  path <- check_output_file(file, "file", "cells.pfstore")
  if (file.exists(path) && !isTRUE(overwrite)) {
    pf_abort("file", sprintf("'%s' exists", file), "give another path, or overwrite = TRUE to replace it")
  }
  path
}

check_matrix_like <- function(x, arg) {
  d <- tryCatch(dim(x), error = function(e) NULL)
  if (length(d) != 2 || is.data.frame(x)) {
    pf_abort(arg, sprintf("must be a cells x features matrix (or matrix-like object), not %s", class(x)[1]),
             "give a matrix, DelayedArray or HDF5Array with one cell per row")
  }
  if (d[1] < 1 || d[2] < 1) pf_abort(arg, sprintf("has %d rows and %d columns", d[1], d[2]), "give at least one cell and one feature")
  invisible()
}

# Rows of a matrix-like object as a dense double matrix (one chunk).
store_chunk <- function(m, rows, arg) {
  chunk <- as.matrix(m[rows, , drop = FALSE])
  if (!is.numeric(chunk)) pf_abort(arg, "is not numeric", "give numeric cell coordinates")
  storage.mode(chunk) <- "double"
  if (any(!is.finite(chunk))) {
    pf_abort(arg, "contains NA, NaN or infinite values", "drop or impute those cells before writing the store")
  }
  chunk
}

# Blocks (source blocks first, then target blocks, each in order of first
# appearance), each population's source and target block, each cell's block
# (0-based; NA for cells of no population kept) and the labels per population.
store_layout <- function(population, side, cols, controls) {
  if (is.null(controls)) {
    pops <- unique(population)
    has_src <- pops %in% population[side == 0]
    has_tgt <- pops %in% population[side == 1]
    dropped <- pops[!(has_src & has_tgt)]
    if (length(dropped)) {
      message(sprintf("populations without source or target cells are left out of the store: %s%s",
                      paste0("'", utils::head(dropped, 5), "'", collapse = ", "),
                      if (length(dropped) > 5) sprintf(" and %d more", length(dropped) - 5) else ""))
    }
    pops <- pops[has_src & has_tgt]
    if (!length(pops)) {
      pf_abort("population", "has no population with both source and target cells",
               "give source and target cells of the same population the same id")
    }
    code <- match(population, pops)
    block <- ifelse(side == 0, code - 1L, length(pops) + code - 1L)
    source_names <- pops
    pop_source <- seq_along(pops) - 1L
    label_rows <- !is.na(code)
  } else {
    if (!is.character(controls) || is.null(names(controls)) || anyNA(controls) || any(names(controls) == "") ||
        anyDuplicated(names(controls))) {
      pf_abort("controls", "must be a named character vector: names the populations, values their control sets",
               "e.g. controls = c(drug1 = \"dmso\", drug2 = \"dmso\")")
    }
    pops <- unique(population[side == 1])
    missing_ctrl <- setdiff(pops, names(controls))
    if (length(missing_ctrl)) {
      pf_abort("controls", sprintf("does not name the control set of population '%s'", missing_ctrl[1]),
               "give every population of the target cells its control set")
    }
    source_names <- unique(population[side == 0])
    unknown <- setdiff(controls[pops], source_names)
    if (length(unknown)) {
      pf_abort("controls", sprintf("names the control set '%s', which no cell of `x` has as its population", unknown[1]),
               "the values of `controls` are the `population` ids of the control cells in `x`")
    }
    source_names <- source_names[source_names %in% controls[pops]]
    block <- ifelse(side == 0, match(population, source_names) - 1L, length(source_names) + match(population, pops) - 1L)
    pop_source <- match(controls[pops], source_names) - 1L
    label_rows <- side == 1
  }
  n_src <- length(source_names)
  sizes <- tabulate(block + 1L, n_src + length(pops))
  code_t <- match(population, pops)
  labels <- NULL
  if (length(cols)) {
    keep <- which(label_rows)
    labels <- as.data.frame(lapply(cols, function(v) {
      v <- if (is.factor(v)) as.character(v) else v
      per_population(v[keep], code_t[keep], pops, "label")
    }), stringsAsFactors = FALSE, optional = TRUE)
    names(labels) <- names(cols)
  }
  list(block = as.integer(block), block_names = c(source_names, pops), block_sizes = as.numeric(sizes),
       populations = data.frame(population = pops, source_block = as.integer(pop_source),
                                target_block = as.integer(n_src + seq_along(pops) - 1L), stringsAsFactors = FALSE),
       labels = labels)
}

# The store's text: its features and its populations' labels (tab-separated,
# a type line: "numeric" columns become covariates, the others categories).
store_text <- function(features, labels) {
  lines <- c("popflow-store-text 1", paste(c("features", features), collapse = "\t"))
  if (!is.null(labels)) {
    types <- vapply(labels, function(v) if (is.numeric(v)) "numeric" else "character", character(1))
    body <- utils::capture.output(utils::write.table(labels, sep = "\t", quote = TRUE, row.names = FALSE,
                                                     col.names = TRUE, qmethod = "double"))
    lines <- c(lines, paste(c("labels", types), collapse = "\t"), body)
  }
  paste(lines, collapse = "\n")
}

read_store_text <- function(text, file) {
  lines <- strsplit(text, "\n", fixed = TRUE)[[1]]
  if (length(lines) < 2 || lines[1] != "popflow-store-text 1") {
    pf_abort("file", "has a table this popflow cannot read (its text part is not popflow's)",
             "write the store again with writePopulationStore()")
  }
  features <- strsplit(lines[2], "\t", fixed = TRUE)[[1]][-1]
  labels <- NULL
  if (length(lines) >= 3) {
    types <- strsplit(lines[3], "\t", fixed = TRUE)[[1]][-1]
    labels <- utils::read.table(text = lines[-(1:3)], sep = "\t", header = TRUE, quote = "\"",
                                colClasses = unname(types), check.names = FALSE, comment.char = "",
                                na.strings = character(0), stringsAsFactors = FALSE)
  }
  list(features = features, labels = labels)
}

# Label columns of a store's populations a fit conditions on: `label` names them.
store_label_columns <- function(store, label) {
  if (is.null(label)) return(list())
  if (!is.character(label) || anyNA(label)) {
    pf_abort("label", "must name label columns of the store", "give column names, e.g. label = c(\"drug\", \"dose\")")
  }
  unknown <- setdiff(label, names(store$labels))
  if (length(unknown)) {
    pf_abort("label", sprintf("names '%s', which is not a label column of the store (it has: %s)", unknown[1],
                              if (is.null(store$labels)) "none" else paste(names(store$labels), collapse = ", ")),
             "write the store with that label, or name one it has")
  }
  as.list(store$labels[label])
}

# The store's populations to predict or score: `population` NULL (all) or names.
store_populations <- function(store, population) {
  if (is.null(population)) return(seq_len(nrow(store$populations)))
  idx <- match(population, store$populations$population)
  if (anyNA(idx)) {
    pf_abort("population", sprintf("names '%s', which is not a population of the store", population[is.na(idx)][1]),
             "give names from summary(store)$population, or NULL for all")
  }
  idx
}

# Cells of the given 0-based blocks, each block read once.
read_store_blocks <- function(store, blocks) {
  store_call(pf_store_read(store$path, as.integer(blocks)), store$path, "newdata")
}

# Source cells of the chosen populations, one copy per population, with each
# cell's population and the populations' labels repeated per cell.
store_source_cells <- function(store, idx, object) {
  pops <- store$populations[idx, ]
  blocks <- unique(pops$source_block)
  cells <- read_store_blocks(store, blocks)
  start <- c(0, cumsum(store$blocks$cells[blocks + 1]))
  rows <- unlist(lapply(pops$source_block, function(b) {
    k <- match(b, blocks)
    if (start[k + 1] > start[k]) seq.int(start[k] + 1, start[k + 1]) else integer(0)
  }))
  x <- cells[rows, , drop = FALSE]
  colnames(x) <- store$features
  each <- pops$source_cells
  label <- NULL
  if (length(object$labels)) {
    label <- store_label_columns(store, names(object$labels))
    label <- as.data.frame(lapply(label, function(v) rep(v[idx], each)), stringsAsFactors = FALSE, optional = TRUE)
    names(label) <- names(object$labels)
  }
  list(x = x, population = rep(pops$population, each), label = label)
}

store_target_cells <- function(store, idx) {
  pops <- store$populations[idx, ]
  x <- read_store_blocks(store, pops$target_block)
  colnames(x) <- store$features
  list(x = x, population = rep(pops$population, pops$target_cells))
}

# fitFlow() on a store (population models): the cells stay on disk; the
# engine reads the blocks each step needs.
fit_population_store <- function(method, store, target, time, group, population, label, network, training, device,
                                 threads, verbose, resume, validation, parallel = NULL) {
  for (arg in c("target", "time", "group", "population")) {
    if (!is.null(get(arg))) {
      pf_abort(arg, "is not used with a population store",
               "the store holds the cells, their populations and sides; `label` names store label columns")
    }
  }
  pops <- store$populations
  names <- pops$population
  n_pop <- nrow(pops)
  cols <- store_label_columns(store, label)
  check_fit_labels(method, cols)
  graph_k <- check_graph_sizes(method, pops$source_cells, names)
  if (identical(method$coupling, "paired")) check_paired_counts(pops$source_cells, pops$target_cells, names, "population")
  proto <- matrix(numeric(0), 0, store$dim, dimnames = list(NULL, store$features))
  check_resume_data(resume, proto)
  population_step_limits(method, network, training, store$dim, device)
  if (!is.null(resume) && length(cols) != length(resume$labels)) {
    pf_abort("label", sprintf("has %d label column%s but `resume` was fitted with %d", length(cols),
                              if (length(cols) == 1) "" else "s", length(resume$labels)),
             "give the labels the resumed model was fitted with")
  }
  labels <- encode_labels(cols, seq_len(n_pop), names, resume$labels)
  sets <- if (!is.null(validation)) {
    population_validation_sets(validation$data, method, proto, labels$info, validation$param$unseen_label)
  }
  src_blocks <- unique(pops$source_block)
  src_cells <- store$blocks$cells[src_blocks + 1]
  src_means <- store$block_means[src_blocks + 1, , drop = FALSE]
  tgt_means <- store$block_means[pops$target_block + 1, , drop = FALSE]
  fields <- list(
    method = method, network = network, training = training, times = c(0, 1),
    time_labels = c("source", "target"), feature_names = store$features, n_features = store$dim,
    n_cells = c(source = sum(src_cells), target = sum(pops$target_cells)),
    time_means = rbind(colSums(src_means * src_cells) / sum(src_cells),
                       colSums(tgt_means * pops$target_cells) / sum(pops$target_cells)),
    groups = NULL,
    population_means = list(source = store$block_means[pops$source_block + 1, , drop = FALSE], target = tgt_means),
    populations = data.frame(population = names, source_cells = pops$source_cells, target_cells = pops$target_cells),
    population_labels = population_label_values(cols, seq_len(n_pop), n_pop),
    labels = labels$info, loss = numeric(0), steps_done = 0, status = "", seconds = 0, device = device,
    threads = threads, store = store$path,
    validation = validation_fields(validation, sets, sprintf("%d held-out population%s", length(sets),
                                                             if (length(sets) == 1) "" else "s"))
  )
  fields$populations$graph_k <- graph_k
  config <- fit_config(method, network, training, device, threads, dim = store$dim, times = c(0, 1),
                       population = list(graph_seed = if (is.null(resume)) training$seed else resume$training$seed,
                                         label_levels = labels$levels, covariates = ncol(labels$covariates) %||% 0L))
  engine_validation <- if (!is.null(validation)) validation_config(validation, sets, training$seed)
  empty <- matrix(numeric(0), 0, store$dim)
  stats <- NULL
  # Data-parallel: each rank opens the store and reads only the blocks of its own draws.
  fit <- train_model(fields, training, verbose, resume, function(progress, every, metadata, parallel = NULL) {
    pf_population_fit(empty, integer(0), integer(0), labels$codes, labels$covariates, rank_config(config, parallel),
                      progress, every, resume$bytes, metadata, engine_validation, store = store$path,
                      graph_cache_mb = graph_cache_mb(method), parallel = parallel)
  }, parallel, on_result = function(res) stats <<- attr(res, "graph_stats"))
  # What training did with the store and its graphs (for tuning graph_cache_mb): graphs built and
  # evicted, the cache's peak bytes, blocks read (and of those, read by a draw itself, not ahead) and the
  # seconds spent reading them (on the prefetch thread, mostly); with `parallel`, rank 0's.
  fit$store_stats <- stats
  fit
}

# Population models: Meta Flow Matching (MFM) and conditional generator flow
# matching (CGFM). The R side turns population ids and labels into codes, the
# engine (src/core/population_model.h) trains and predicts.

#' Population-model parameters: Meta Flow Matching and CGFM
#'
#' `MFMParam()` selects Meta Flow Matching (Atanackovic et al., ICLR 2025):
#' the velocity field is conditioned on an embedding `phi(p0)` of the whole
#' source population, learnt end to end with the field, so that a model
#' trained on some populations (patients, letters) predicts how an unseen
#' population moves. `CGFMParam()` selects conditional generator flow
#' matching: the field is conditioned on known labels only (treatment, dose,
#' population id), with no population encoder.
#'
#' Encoders (`encoder`), all returning unit-length vectors:
#' - `"gcn"`: a graph convolutional network over the `k`-nearest-neighbour
#'   graph of the population's source cells (symmetrised, with self-loops and
#'   symmetric normalisation `D^-1/2 (A + I) D^-1/2`), `layers` layers of
#'   `width` units with ReLU between them, averaged over cells.
#' - `"mean"`: the same network without edges (a DeepSets mean encoder; `k`
#'   is ignored).
#' - `"kme"`: a kernel mean embedding: `width` random Fourier features of an
#'   RBF kernel with length scale `bandwidth`, averaged over cells. Fixed, not
#'   trained.
#'
#' kNN graphs are built once per population, on at most `max_cells` of its
#' source cells (a seeded random subsample for larger populations); the same
#' cap applies when new populations are embedded at prediction.
#'
#' Training (Algorithm 1) draws `populations_per_step` populations a step and
#' `cells_per_population` source and target cells from each (without
#' replacement where the population is large enough); these replace
#' `batch_size` and `groups_per_step` of [TrainingParam()], whose other
#' settings (steps, learning rate, seed, ...) apply.
#'
#' `schedule` chooses how the encoder and the field are optimised:
#' `"joint"` takes one Adam step on both a training step (end to end);
#' `"alternating"` follows the reference implementation of the letters
#' experiment: odd steps update the field (and label embeddings) on cached,
#' detached population embeddings, even steps update only the encoder (its own
#' Adam with learning rate `encoder_lr`) and refresh the cached embeddings of
#' the populations they drew. The fixed `"kme"` encoder trains jointly.
#'
#' Labels (the `label` argument of [fitFlow()]) must be constant within a
#' population. Categorical labels (factor, character or logical) are learnt
#' embeddings of `label_dim` numbers; numeric labels are used as they are.
#' A label value not seen in training is an error at prediction that names
#' the value and lists the known ones: a learnt embedding exists only for
#' values seen in training.
#'
#' @param k Neighbours per cell in the kNN graph (GCN encoder).
#' @param layers Encoder layers.
#' @param width Encoder width: the embedding size (for `"kme"`, the number of
#'   random features; even).
#' @param encoder `"gcn"`, `"mean"` or `"kme"`.
#' @param populations_per_step Populations drawn per training step.
#' @param cells_per_population Source and target cells drawn from each population per step.
#' @param max_cells Cap on the cells of a population used for its embedding (0 = all).
#' @param coupling Pairing of source and target cells within a population:
#'   `"independent"` or `"exact"` (minibatch optimal transport).
#' @param sigma Noise level of the probability path.
#' @param label_dim Embedding size of each categorical label.
#' @param bandwidth Length scale of the `"kme"` kernel (in the units of the data).
#' @param schedule `"joint"` or `"alternating"` (see above).
#' @param encoder_lr Learning rate of the encoder's optimiser under the
#'   alternating schedule (`NULL`: the `lr` of [TrainingParam()]).
#' @return An object of class `popflow_param`.
#' @examples
#' MFMParam(k = 10, encoder = "gcn")
#' MFMParam(k = 50, schedule = "alternating", encoder_lr = 1e-4)
#' CGFMParam(populations_per_step = 4)
#' @name PopulationParams
NULL

#' @rdname PopulationParams
#' @export
MFMParam <- function(k = 50, layers = 3, width = 64, encoder = c("gcn", "mean", "kme"), populations_per_step = 10,
                     cells_per_population = 700, max_cells = 2000, coupling = c("independent", "exact"),
                     sigma = 0.1, label_dim = 8, bandwidth = 1, schedule = c("joint", "alternating"),
                     encoder_lr = NULL) {
  encoder <- check_choice(encoder[1], "encoder", c("gcn", "mean", "kme"))
  width <- check_count(width, "width")
  if (encoder == "kme" && width %% 2 != 0) pf_abort("width", "must be even for the \"kme\" encoder", "use e.g. width = 64")
  k <- check_count(k, "k", min = 0)
  if (encoder == "gcn" && k < 1) pf_abort("k", "must be >= 1 for the \"gcn\" encoder", "use encoder = \"mean\" for no graph")
  new_param("mfm", "MFMParam", path = "icfm",
            coupling = check_choice(coupling[1], "coupling", c("independent", "exact")),
            sigma = check_number(sigma, "sigma", min = 0), encoder = encoder, k = k,
            layers = check_count(layers, "layers"), width = width,
            populations_per_step = check_count(populations_per_step, "populations_per_step"),
            cells_per_population = check_count(cells_per_population, "cells_per_population"),
            max_cells = check_count(max_cells, "max_cells", min = 0),
            label_dim = check_count(label_dim, "label_dim"),
            bandwidth = check_number(bandwidth, "bandwidth", min = 0, min_inclusive = FALSE),
            schedule = check_choice(schedule[1], "schedule", c("joint", "alternating")),
            encoder_lr = if (is.null(encoder_lr)) NULL else check_number(encoder_lr, "encoder_lr", min = 0,
                                                                          min_inclusive = FALSE))
}

#' @rdname PopulationParams
#' @export
CGFMParam <- function(populations_per_step = 10, cells_per_population = 700, coupling = c("independent", "exact"),
                      sigma = 0.1, label_dim = 8) {
  new_param("cgfm", "CGFMParam", path = "icfm",
            coupling = check_choice(coupling[1], "coupling", c("independent", "exact")),
            sigma = check_number(sigma, "sigma", min = 0), encoder = "none",
            populations_per_step = check_count(populations_per_step, "populations_per_step"),
            cells_per_population = check_count(cells_per_population, "cells_per_population"),
            label_dim = check_count(label_dim, "label_dim"))
}

is_population_method <- function(method) attr(method, "kind") %in% c("mfm", "cgfm")

# Labels as a list of columns (a vector is one column named "label").
label_columns <- function(label, n, arg = "label") {
  if (is.null(label)) return(list())
  cols <- if (is.data.frame(label)) as.list(label) else list(label = label)
  if (is.null(names(cols)) || any(names(cols) == "")) names(cols) <- paste0("label", seq_along(cols))
  for (nm in names(cols)) {
    v <- cols[[nm]]
    if (length(v) != n) {
      pf_abort(arg, sprintf("has %d values but there are %d cells", length(v), n),
               "give one label per cell (source and target cells together), or a data.frame of label columns")
    }
    if (anyNA(v)) pf_abort(arg, sprintf("contains NA or NaN (column '%s')", nm), "drop the cells without a label or give them a label value of their own")
    if (!(is.factor(v) || is.character(v) || is.logical(v) || is.numeric(v))) {
      pf_abort(arg, sprintf("column '%s' must be a factor, character, logical or numeric vector, not %s", nm, class(v)[1]),
               "convert it, e.g. with as.character() or as.numeric()")
    }
    if (is.numeric(v) && any(!is.finite(v))) pf_abort(arg, sprintf("column '%s' contains infinite values", nm),
                                                        "use finite numbers, or a categorical label")
  }
  cols
}

check_population <- function(population, n, arg = "population") {
  if (is.null(population)) {
    pf_abort(arg, "is missing", "give the population (e.g. patient or sample id) of every cell")
  }
  if (length(population) != n) {
    pf_abort(arg, sprintf("has %d values but there are %d cells", length(population), n),
             "give one population id per cell (source and target cells together for fitFlow())")
  }
  if (anyNA(population)) pf_abort(arg, "contains NA", "drop cells without a population")
  as.character(population)
}

# One value per population; an error when a label varies within a population.
per_population <- function(v, pop_code, pop_names, what) {
  first <- match(seq_along(pop_names), pop_code)
  vals <- v[first]
  bad <- which(v != vals[pop_code])
  if (length(bad)) {
    p <- pop_names[pop_code[bad[1]]]
    pf_abort("label", sprintf("varies within population '%s' (column '%s')", p, what),
             "labels must be constant within a population; split it, e.g. population = interaction(population, label)")
  }
  vals
}

# A GCN embeds a population through its kNN graph: it needs more than k cells.
check_graph_sizes <- function(method, sizes, names, what = "source cells") {
  if (attr(method, "kind") != "mfm" || method$encoder != "gcn") return(invisible())
  small <- which(sizes > 0 & sizes <= method$k)
  if (length(small)) {
    pf_abort("population", sprintf("'%s' has %d %s, too few for a kNN graph with k = %d", names[small[1]],
                                   sizes[small[1]], what, method$k),
             "every population needs more than k cells (lower `k` in MFMParam() or drop small populations)")
  }
}

# Labels in the engine's form: categorical codes [P, n_cat] (0-based) and
# covariates [P, n_num], with the label dictionary (fitting) or against it (prediction).
# unseen = "average": a categorical value not seen in training becomes code -1,
# which the engine reads as the mean of the learnt embeddings.
encode_labels <- function(cols, pop_code, pop_names, info = NULL, unseen = "error") {
  if (is.null(info)) {
    info <- lapply(cols, function(v) {
      if (is.numeric(v)) list(type = "numeric") else list(type = "categorical", levels = sort(unique(as.character(v))))
    })
  }
  cat_cols <- names(info)[vapply(info, function(i) i$type == "categorical", logical(1))]
  num_cols <- setdiff(names(info), cat_cols)
  missing <- setdiff(names(info), names(cols))
  if (length(missing)) {
    pf_abort("label", sprintf("lacks the label column%s %s used in fitting", if (length(missing) > 1) "s" else "",
                              paste0("'", missing, "'", collapse = ", ")),
             "give a data.frame with the label columns the model was fitted with, under the same names")
  }
  codes <- NULL
  if (length(cat_cols)) {
    codes <- vapply(cat_cols, function(nm) {
      v <- per_population(as.character(cols[[nm]]), pop_code, pop_names, nm)
      k <- match(v, info[[nm]]$levels)
      if (anyNA(k) && unseen == "average") {
        k[is.na(k)] <- 0L
      } else if (anyNA(k)) {
        pf_abort("label", sprintf("has the value '%s' (column '%s') that was not seen in training; known values: %s",
                                  v[is.na(k)][1], nm, paste(info[[nm]]$levels, collapse = ", ")),
                 "a categorical label has a learnt embedding only for values seen in training")
      }
      k - 1L
    }, integer(length(pop_names)))
    codes <- matrix(as.integer(codes), nrow = length(pop_names))
  }
  covariates <- NULL
  if (length(num_cols)) {
    covariates <- vapply(num_cols, function(nm) {
      v <- cols[[nm]]
      if (!is.numeric(v)) {
        pf_abort("label", sprintf("column '%s' must be numeric, as in fitting", nm), "convert it with as.numeric()")
      }
      per_population(as.numeric(v), pop_code, pop_names, nm)
    }, numeric(length(pop_names)))
    covariates <- matrix(as.numeric(covariates), nrow = length(pop_names))
  }
  levels <- vapply(cat_cols, function(nm) length(info[[nm]]$levels), integer(1))
  list(codes = codes, covariates = covariates, levels = as.integer(levels), info = info)
}

# Population codes: for CGFM without populations, the label combinations.
population_codes <- function(population, cols, n, method) {
  if (is.null(population) && attr(method, "kind") == "cgfm" && length(cols)) {
    population <- do.call(paste, c(lapply(cols, as.character), sep = "/"))
  }
  pop <- check_population(population, n)
  f <- factor(pop, levels = unique(pop))
  list(code = as.integer(f), names = levels(f))
}

fit_population_flow <- function(x, target, population, label, method, network, training, device, threads,
                                verbose, resume = NULL) {
  if (is.null(target)) {
    pf_abort("target", "is missing", sprintf("method \"%s\" learns source -> target: give `target` cells", attr(method, "kind")))
  }
  x <- as_cell_matrix(x, "x", min_rows = 2)
  target <- as_cell_matrix(target, "target", min_rows = 2)
  if (ncol(target) != ncol(x)) {
    pf_abort("target", sprintf("has %d features but `x` has %d", ncol(target), ncol(x)),
             "use the same features (columns) for source and target cells")
  }
  warn_constant_features(rbind(x, target), "x")
  n <- nrow(x) + nrow(target)
  side <- rep(0:1, c(nrow(x), nrow(target)))
  cols <- label_columns(label, n)
  if (attr(method, "kind") == "cgfm" && !length(cols)) {
    pf_abort("label", "is missing", "CGFM conditions on known labels: give one label per cell (e.g. the treatment)")
  }
  pops <- population_codes(population, cols, n, method)
  n_source <- tabulate(pops$code[side == 0], length(pops$names))
  n_target <- tabulate(pops$code[side == 1], length(pops$names))
  if (!any(n_source > 0 & n_target > 0)) {
    pf_abort("population", "has no population with both source and target cells",
             "give source and target cells of the same population the same id")
  }
  check_graph_sizes(method, n_source, pops$names)
  check_resume_data(resume, x)
  if (!is.null(resume) && length(cols) != length(resume$labels)) {
    pf_abort("label", sprintf("has %d label column%s but `resume` was fitted with %d", length(cols),
                              if (length(cols) == 1) "" else "s", length(resume$labels)),
             "give the labels the resumed model was fitted with")
  }
  labels <- encode_labels(cols, pops$code, pops$names, resume$labels)
  xx <- rbind(x, target)
  # MFMParam's population sampling takes the place of TrainingParam's batch settings.
  train <- unclass(training)
  train$batch_size <- method$cells_per_population
  train$groups_per_step <- method$populations_per_step
  config <- c(unclass(method)[c("path", "coupling", "sigma")], unclass(network), train,
              list(threads = threads, device = device))
  meta <- list(encoder = method$encoder, k = method$k, layers = method$layers, width = method$width,
               max_cells = method$max_cells, label_dim = method$label_dim, bandwidth = method$bandwidth,
               graph_seed = if (is.null(resume)) training$seed else resume$training$seed,
               schedule = method$schedule %||% "joint", encoder_lr = method$encoder_lr %||% 0)
  fields <- list(
    model_kind = "meta", method = method, network = network, training = training, times = c(0, 1),
    time_labels = c("source", "target"), feature_names = colnames(x), n_features = ncol(x),
    n_cells = c(source = nrow(x), target = nrow(target)),
    time_means = rbind(colMeans(x), colMeans(target)), groups = NULL,
    population_means = population_means(x, target, pops$code, side, length(pops$names)),
    populations = data.frame(population = pops$names, source_cells = n_source, target_cells = n_target),
    labels = labels$info, loss = numeric(0), steps_done = 0, status = "", seconds = 0, device = device,
    threads = threads
  )
  progress <- if (verbose) training_progress(training$steps) else NULL
  res <- pf_meta_fit(xx, side, pops$code - 1L, labels$codes, labels$levels, labels$covariates, config, meta,
                     progress$update, max(1L, training$steps %/% 100L), resume$bytes,
                     checkpoint_metadata(fields, training))
  if (!is.null(progress)) progress$done()
  fit <- new_flow(res$bytes, fitted_fields(fields, res, resume))
  report_training_status(fit, training$steps)
  fit
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

# The average over training populations of the target-minus-source mean
# ("mean shift" baseline of a population model).
population_mean_shift <- function(object) {
  pm <- object$population_means
  if (is.null(pm)) return(object$time_means[2, ] - object$time_means[1, ])  # models fitted before it was kept
  d <- pm$target - pm$source
  colMeans(d[stats::complete.cases(d), , drop = FALSE])
}

#' Predict cells of (new) populations with an MFM or CGFM model
#'
#' Algorithm 2 of Meta Flow Matching: the source cells of each population are
#' embedded once (at most `max_cells` of them, see [MFMParam()]), then every
#' cell is moved by integrating `dx/dt = v(x, t | phi(population), labels)`
#' from 0 to 1. Populations need not have been seen in training (MFM); label
#' values must have been (see [MFMParam()] for the error on an unseen value).
#'
#' @param object A model from [fitFlow()] with `method = "mfm"` or `"cgfm"`.
#' @param newdata Source cells (cells x features, the fitted features), or a
#'   SingleCellExperiment or Seurat object for a model fitted on one (its
#'   populations and labels are then read from the fitted columns; see
#'   [cell-objects]).
#' @param population The population of each row of `newdata`; a population's
#'   cells are embedded together. For CGFM it may be `NULL` (the label
#'   combinations are the populations).
#' @param label Labels of each row of `newdata`, as in fitting (a vector, or a
#'   data.frame with the fitted label columns).
#' @param unseen_label What a categorical label value not seen in training
#'   does: `"error"`, or `"average"`: the population is conditioned on the mean
#'   of the learnt embeddings of all training values of that label (what the
#'   MFM paper's CGFM does for unseen populations: the average of the training
#'   one-hot conditions).
#' @param solver A [SolverParam()] object.
#' @param threads LibTorch threads.
#' @param device `NULL` (the model's device when available, else CPU), `"cpu"` or `"cuda"`.
#' @param ... Unused.
#' @return A matrix of predicted target cells, one row per row of `newdata`, in the same order.
#' @examples
#' set.seed(1)
#' mu <- c(-2, -1, 1, 2)
#' src <- do.call(rbind, lapply(mu, function(m) matrix(rnorm(200, m), ncol = 2)))
#' pop <- rep(paste0("p", seq_along(mu)), each = 100)
#' fit <- fitFlow(src, src + 2 * rep(mu, each = 100), population = c(pop, pop),
#'                method = MFMParam(k = 5, width = 16, populations_per_step = 4, cells_per_population = 64),
#'                training = TrainingParam(steps = 100), verbose = FALSE)
#' new <- matrix(rnorm(100, 0.5), ncol = 2)
#' colMeans(predict(fit, new, population = rep("new", 50), solver = SolverParam("rk4", steps = 8)))
#' @export
predict.popflow_meta <- function(object, newdata, population = NULL, label = NULL, solver = SolverParam(),
                                 threads = object$threads, device = NULL, unseen_label = c("error", "average"), ...) {
  if (is_cell_object(newdata)) {
    return(predict_cell_object(object, newdata, solver = solver, threads = threads, device = device))
  }
  if (missing(newdata) || is.null(newdata)) {
    pf_abort("newdata", "is missing", "give the source cells to move (a cells x features matrix)")
  }
  x <- same_features(as_cell_matrix(newdata, "newdata"), "newdata", object$feature_names, object$n_features)
  meta_transport(object, x, population, label, c(0, 1), solver, threads, device, unseen_label)[[2]]
}

# Cells of populations moved through a population model: their states at `times` (in [0, 1]).
meta_transport <- function(object, x, population, label, times, solver, threads, device = NULL,
                           unseen_label = "error") {
  unseen_label <- check_choice(unseen_label[1], "unseen_label", c("error", "average"))
  solver <- expect_param(solver, "solver", "SolverParam")
  threads <- check_count(threads, "threads")
  if (!is.null(device)) device <- check_device(device)
  cols <- label_columns(label, nrow(x))
  if (length(object$labels) && !length(cols)) {
    pf_abort("label", "is missing", sprintf("this model was fitted with labels (%s): give them for every cell",
                                            paste(names(object$labels), collapse = ", ")))
  }
  if (!is.null(names(cols)) && identical(names(cols), "label") && length(object$labels) == 1) {
    names(cols) <- names(object$labels)
  }
  pops <- population_codes(population, cols, nrow(x), object$method)
  check_graph_sizes(object$method, tabulate(pops$code, length(pops$names)), pops$names, "cells")
  labels <- encode_labels(cols, pops$code, pops$names, object$labels, unseen = unseen_label)
  res <- pf_meta_transport(flow_handle(object, device), x, pops$code - 1L, length(pops$names), labels$codes,
                           labels$covariates, times, unclass(solver), threads)
  lapply(res$states, function(s) {
    dimnames(s) <- list(rownames(x), object$feature_names)
    s
  })
}

#' Population embeddings of an MFM model
#'
#' The learnt population encoder `phi` applied to each population's cells: one
#' unit-length vector per population, for plotting or clustering patients.
#'
#' @param object A model from [fitFlow()] with `method = "mfm"`.
#' @param x Source cells (cells x features, the fitted features), or a
#'   SingleCellExperiment or Seurat object for a model fitted on one (see
#'   [cell-objects]).
#' @param population The population of each row of `x` (not used for objects).
#' @param threads LibTorch threads.
#' @return A matrix, populations x embedding dimensions, with the population
#'   ids as row names (in order of first appearance); for an object, a
#'   `DataFrame` keyed by population (see [cell-objects]).
#' @examples
#' set.seed(1)
#' mu <- c(-2, -1, 1, 2)
#' src <- do.call(rbind, lapply(mu, function(m) matrix(rnorm(200, m), ncol = 2)))
#' pop <- rep(paste0("p", seq_along(mu)), each = 100)
#' fit <- fitFlow(src, src + 2 * rep(mu, each = 100), population = c(pop, pop),
#'                method = MFMParam(k = 5, width = 16, populations_per_step = 4, cells_per_population = 64),
#'                training = TrainingParam(steps = 50), verbose = FALSE)
#' emb <- embedPopulations(fit, src, pop)
#' dim(emb)
#' rowSums(emb^2)
#' @export
embedPopulations <- function(object, x, population, threads = object$threads) {
  if (is_cell_object(x)) return(embed_cell_populations(object, x, threads))
  if (!inherits(object, "popflow_meta") || attr(object$method, "kind") != "mfm") {
    pf_abort("object", "must be an MFM model from fitFlow(method = \"mfm\")",
             "CGFM and plain flows have no population encoder")
  }
  x <- same_features(as_cell_matrix(x, "x"), "x", object$feature_names, object$n_features)
  if (missing(population)) population <- NULL
  pop <- check_population(population, nrow(x))
  threads <- check_count(threads, "threads")
  f <- factor(pop, levels = unique(pop))
  check_graph_sizes(object$method, tabulate(as.integer(f), nlevels(f)), levels(f), "cells")
  emb <- pf_meta_embed(flow_handle(object), x, as.integer(f) - 1L, nlevels(f), threads)
  dimnames(emb) <- list(levels(f), paste0("PFE_", seq_len(ncol(emb))))
  emb
}

#' @export
print.popflow_meta <- function(x, ...) {
  m <- x$method
  what <- if (attr(m, "kind") == "mfm") {
    encoder <- switch(m$encoder,
      gcn = sprintf("GCN encoder (k = %d, %d layers, width %d)", m$k, m$layers, m$width),
      mean = sprintf("mean encoder (%d layers, width %d)", m$layers, m$width),
      kme = sprintf("kernel mean embedding (%d random features, bandwidth %g)", m$width, m$bandwidth))
    schedule <- if (identical(m$schedule, "alternating")) ", alternating encoder/field steps" else ""
    sprintf("%s, %s coupling, sigma %g%s", encoder, m$coupling, m$sigma, schedule)
  } else {
    sprintf("label conditioning, %s coupling, sigma %g", m$coupling, m$sigma)
  }
  cat(sprintf("<popflow flow> %s: %s\n", method_label(m), what))
  pops <- x$populations
  cat(sprintf("  populations: %d (%d source, %d target cells); %d features\n", nrow(pops), sum(pops$source_cells),
              sum(pops$target_cells), x$n_features))
  if (length(x$labels)) {
    cat(sprintf("  labels: %s\n", paste(vapply(names(x$labels), function(nm) {
      i <- x$labels[[nm]]
      if (i$type == "numeric") sprintf("%s (numeric)", nm) else sprintf("%s (%d values)", nm, length(i$levels))
    }, character(1)), collapse = ", ")))
  }
  cat(network_line(x$network))
  cat(cell_object_line(x$cell_object))
  if (length(x$loss)) {
    cat(sprintf("  training: %d steps%s on %s, %d populations x %d cells a step, final loss %.4g%s\n",
                x$steps_done, training_speed(x), x$device, m$populations_per_step,
                m$cells_per_population, recent_loss(x$loss),
                if (x$status != "completed") sprintf(" [%s]", x$status) else ""))
  }
  invisible(x)
}

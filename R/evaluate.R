# evaluateFlow(): predicted against observed cells, beside baselines ("no
# change", "mean shift", "label mean shift"), the "oracle shift" and the
# noise floor; for population models and for single-cell objects with
# populations, per population; on objects whose PCA has loadings, also R^2 of
# mean expression. compareToBaselines() reads the table.

# Every baseline row, in the order of the rows; the first three are fair
# (they do not use the observed target cells).
baseline_names <- c("no change", "mean shift", "label mean shift", "oracle shift", "noise floor")
fair_baseline_names <- c("no change", "mean shift", "label mean shift")

#' Evaluate predicted cells against observed cells, beside baselines and the noise floor
#'
#' Moves `source` cells from `from` to `to` with the fitted flow and compares
#' the prediction with the observed `target` cells by exact W1 and W2, RBF MMD,
#' energy distance, R^2 of the feature means and the Pearson r between the
#' feature-correlation structures. Baselines are scored the same way, so that
#' the table shows at once how far a model is from doing nothing and from
#' perfect:
#'
#' - `"no change"`: the source cells themselves.
#' - `"mean shift"`: the source cells plus the change of the mean in training.
#'   For a flow, the change between the training snapshots at `from` and `to`
#'   (linearly interpolated for times between snapshots); for a population
#'   model (MFM, CGFM), the average over the training populations of their
#'   target-minus-source mean.
#' - `"label mean shift"` (population models fitted with `label` only): the
#'   source cells plus the average target-minus-source mean of the training
#'   populations that share the population's label values (all label columns
#'   equal, e.g. the same cell type, or the same cell type and treatment).
#'   When no training population shares them, the row is the overall "mean
#'   shift" and a message names the populations concerned.
#' - `"oracle shift"`: the source cells moved onto the true target mean,
#'   `source + (mean(target) - mean(source))`, as the Meta Flow Matching
#'   reference code reports it. It uses the answer, so it is not a fair
#'   baseline but a marker of what a perfect mean (and no change of shape)
#'   would score.
#' - `"noise floor"`: the observed target cells split at random (with
#'   `seed`) into two halves, one scored against the other with the same
#'   metric functions. It is the score of a perfect model at this sample
#'   size. For W1, W2, MMD and energy the floor of a set of n cells is
#'   estimated from two halves of n/2 cells, which overstates it: these
#'   distances between two samples of one distribution shrink as the samples
#'   grow, slowly in many dimensions (on 20 PCs of the Kang data the floor's
#'   W1 can exceed the oracle shift's). Read it as the noise level of the
#'   metric at this sample size, not as a bound no prediction can pass.
#'   R^2 and corr_r compare the halves the same way.
#'
#' The three first are the fair baselines: [compareToBaselines()] reports how
#' a model compares with the strongest of them, and how much of the gap to the
#' noise floor it closes.
#'
#' For a population model (MFM, CGFM), every population is scored on its own,
#' whole: its source cells are moved from source to target (each population
#' embedded from its own source cells) and compared with its observed target
#' cells; the baselines are computed per population too.
#'
#' On a SingleCellExperiment or Seurat object fitted in a PCA space with
#' loadings (see [cell-objects]), each population (with populations
#' patient x cell type and one held-out patient: each cell type) also gets the
#' metrics that perturbation-prediction papers (scGen, CPA, CellFlow) report
#' on the Kang data, for the model and every baseline:
#'
#' - `R2_all_genes`: the coefficient of determination `1 - sum((o - p)^2) /
#'   sum((o - mean(o))^2)` between the mean expression `o` of the observed
#'   target cells and the mean expression `p` of the predicted cells, over all
#'   loading genes. Predicted expression is reconstructed from the predicted
#'   PCs (`center + scale * (PCs %*% t(rotation))`, see [cell-objects]);
#'   observed expression is the object's own assay (`logcounts`, or the `data`
#'   of a Seurat assay), or, where the object lacks those genes, the
#'   reconstruction of its observed PCs. Because reconstruction keeps only the
#'   PCA's span, even the oracle shift falls short of 1.
#' - `R2_top_genes`: the same over the `top_genes` genes that respond most
#'   in the observed data: genes ranked by `|mean observed target expression -
#'   mean observed source expression|` of the population.
#'
#' scGen reports the squared Pearson correlation of the means instead; the
#' coefficient of determination used here (as CPA and CellFlow do) also
#' penalises an offset or a wrong scale.
#'
#' @param object A model from [fitFlow()].
#' @param source Cells at time `from`, or a SingleCellExperiment or Seurat
#'   object for a model fitted on one (see [cell-objects]); for a population
#'   model also a population store ([PopulationStore()]): each population's
#'   source cells are moved and scored against its target cells, both read
#'   from the store (`population` then chooses store populations; `NULL`: all).
#' @param target Observed cells at time `to`; for an object `source`, missing
#'   (its own target cells) or a second object.
#' @inheritParams predict.popflow_flow
#' @param max_cells Largest number of cells per set for W1, W2, MMD and energy
#'   distance (a random subsample above it, reproducible through `seed`; the
#'   means behind `mean_R2` and the expression R^2 always use every cell).
#'   Their cost grows faster than the square of the set size. Measured on 2
#'   busy cores, 20 dimensions, two sets of n cells each: exact W2 (network
#'   simplex) took 0.27 s at n = 1000, 0.67 s at 1500, 1.4 s at 2000 and 5.4 s
#'   at 4000; W1, W2, MMD and energy together (one row) 1.0, 2.6, 4.9 and 21
#'   s. A population scores four such rows and the noise floor, so the default
#'   1000 keeps a population at the cap near 4-5 s, and scores every
#'   population of the built-in Kang data (patient x cell type) whole: the
#'   largest, patient 1015's CD4 T cells, has 939 control and 840 stimulated
#'   cells (evaluated in 4.5 s). Raise it to score larger sets whole, at that
#'   cost.
#' @param seed Seed of that subsample and of the noise floor's split (the
#'   session's random number stream is left as it was).
#' @param baselines Which baselines to score beside the model: `TRUE` (every
#'   one that applies: "label mean shift" only for population models fitted
#'   with labels), `FALSE` (none), or a character vector of their names,
#'   `"no change"`, `"mean shift"`, `"label mean shift"`, `"oracle shift"`,
#'   `"noise floor"`.
#' @param population,target_population Population models only: the
#'   population of each source and of each target cell (`target_population`
#'   may be left out when `source` and `target` are index-paired, as in
#'   [simulateLetters()]). Every population of `source` needs target cells.
#' @param label Population models only: labels of each source cell, as in
#'   [predict.popflow_population()].
#' @param unseen_label Population models only: see [predict.popflow_population()].
#' @param top_genes Objects with expression only: the number of most
#'   responsive genes for `R2_top_genes`.
#' @param verbose Show a progress bar when the prediction runs longer than a
#'   few seconds (Ctrl-C stops it either way).
#' @return A data.frame, one row per prediction: the model's (named by its
#'   method, e.g. "MFM"), then the chosen baselines in the order "no change",
#'   "mean shift", "label mean shift", "oracle shift", "noise floor"; lower is
#'   better except for `mean_R2`, `corr_r` and the expression R^2 (NA where
#'   undefined: `mean_R2` needs 2 features, `corr_r` 3, and both need
#'   features that vary). For a population model one such block of rows per
#'   population, with a
#'   `population` column first. `cells` is the number of source cells.
#' @seealso [compareToBaselines()] for the model against the strongest fair
#'   baseline and the noise floor, in numbers and in words.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' target <- source %*% matrix(c(0, 1, -1, 0), 2) + 3   # rotate and shift
#' fit <- fitFlow(source, target, training = TrainingParam(steps = 300), verbose = FALSE)
#' ev <- evaluateFlow(fit, source, target)
#' ev
#' compareToBaselines(ev)
#'
#' # A population model, scored per population of simulated letters.
#' train <- simulateLetters(c("L", "T", "V"), rotations = 2, points = 300, seed = 1)
#' pop <- rep(train$cells$population, 2)
#' mfm <- fitFlow(train$source, train$target, population = pop,
#'                method = MFMParam(k = 5, width = 16, populations_per_step = 3, cells_per_population = 64),
#'                training = TrainingParam(steps = 50), verbose = FALSE)
#' test <- simulateLetters("L", rotations = 1, points = 300, seed = 2)
#' evaluateFlow(mfm, test$source, test$target, population = test$cells$population,
#'              solver = SolverParam("rk4", steps = 8), baselines = c("mean shift", "noise floor"))
#' @export
evaluateFlow <- function(object, source, target, from = NULL, to = NULL, solver = SolverParam(),
                         max_cells = 1000, seed = 1, baselines = TRUE, population = NULL, target_population = NULL,
                         label = NULL, unseen_label = c("error", "average"), top_genes = 20, verbose = TRUE) {
  object <- as_model(object)
  max_cells <- check_count(max_cells, "max_cells", min = 2)
  baselines <- check_baselines(baselines, object)
  top_genes <- check_count(top_genes, "top_genes", min = 2)
  if (object$n_features == 1) {
    message("the model has 1 feature: mean_R2 (R^2 over the features' means) needs at least 2 and corr_r ",
            "(correlation of the features' correlations) at least 3, so both are NA")
  }
  if (is_population_store(source)) {
    return(evaluate_store(object, source, if (!missing(target)) target, solver, max_cells, seed, baselines,
                          population, label, unseen_label, verbose))
  }
  if (is_cell_object(source)) {
    return(evaluate_cell_object(object, source, if (!missing(target)) target, from, to, solver, max_cells, seed,
                                baselines, top_genes, unseen_label, verbose))
  }
  source <- same_features(as_cell_matrix(source, "source"), "source", object$feature_names, object$n_features)
  target <- same_features(as_cell_matrix(target, "target"), "target", object$feature_names, object$n_features)
  evaluate_model(object, source, target, from = from, to = to, solver = solver, max_cells = max_cells, seed = seed,
                 baselines = baselines, population = population, target_population = target_population,
                 label = label, unseen_label = unseen_label, verbose = verbose)
}

# evaluateFlow() on a store: each chosen population's source cells moved
# and scored against its target cells, both read from the store.
evaluate_store <- function(object, store, target, solver, max_cells, seed, baselines, population, label,
                           unseen_label, verbose) {
  if (!inherits(object, "popflow_population")) {
    pf_abort("source", "is a population store, which only population models (MFM, CGFM) read",
             "give a flow model source and target cells as matrices")
  }
  if (!is.null(target)) pf_abort("target", "is read from the store", "leave `target` out when `source` is a store")
  if (!is.null(label)) pf_abort("label", "is read from the store", "leave `label` out when `source` is a store")
  idx <- store_populations(store, population)
  src <- store_source_cells(store, idx, object)
  tgt <- store_target_cells(store, idx)
  evaluate_model(object, same_features(src$x, "source", object$feature_names, object$n_features),
                 same_features(tgt$x, "source", object$feature_names, object$n_features), from = NULL, to = NULL,
                 solver = solver, max_cells = max_cells, seed = seed, baselines = baselines,
                 population = src$population, target_population = tgt$population, label = src$label,
                 unseen_label = unseen_label, verbose = verbose)
}

# The baselines to score (their names, in row order) from `baselines`.
check_baselines <- function(baselines, object) {
  with_labels <- inherits(object, "popflow_population") && length(object$labels) > 0
  valid <- paste0("\"", baseline_names, "\"", collapse = ", ")
  if (isTRUE(baselines)) return(if (with_labels) baseline_names else setdiff(baseline_names, "label mean shift"))
  if (isFALSE(baselines)) return(character(0))
  if (!is.character(baselines) || !length(baselines) || anyNA(baselines)) {
    pf_abort("baselines", sprintf("must be TRUE, FALSE or names of baselines, not %s", deparse1(baselines)),
             sprintf("use TRUE (all), FALSE (none) or some of %s", valid))
  }
  unknown <- setdiff(baselines, baseline_names)
  if (length(unknown)) {
    pf_abort("baselines", sprintf("names %s, not a baseline; valid names: %s",
                                  paste0("\"", unknown, "\"", collapse = ", "), valid),
             "use TRUE (all), FALSE (none) or some of the valid names")
  }
  if ("label mean shift" %in% baselines && !with_labels) {
    pf_abort("baselines", "names \"label mean shift\", but the model was not fitted with labels",
             "that baseline averages the training populations sharing a population's labels: it needs a population model (MFM, CGFM) fitted with `label`")
  }
  baseline_names[baseline_names %in% baselines]
}

# Metric rows of a model: a flow's prediction from `from` to `to`; a
# population model's, per population. `expression` (objects with an
# expression model): see object_expression().
evaluate_model <- function(object, source, target, from, to, solver, max_cells, seed, baselines, population,
                           target_population, label, unseen_label, expression = NULL, verbose = FALSE) {
  UseMethod("evaluate_model")
}

#' @export
evaluate_model.popflow_flow <- function(object, source, target, from, to, solver, max_cells, seed, baselines,
                                        population, target_population, label, unseen_label, expression = NULL,
                                        verbose = FALSE) {
  if (!is.null(population) || !is.null(target_population) || !is.null(label)) {
    pf_abort(if (!is.null(label)) "label" else "population", "is used only by population models (MFM, CGFM)")
  }
  t0 <- if (is.null(from)) object$times[1] else resolve_time(object, from, "from")
  t1 <- if (is.null(to)) object$times[length(object$times)] else resolve_time(object, to, "to")
  states <- move_cells(object, source, c(t0, t1), solver, object$threads, verbose = verbose)
  predicted <- states[[2]]
  shifts <- list(mean = mean_at(object, t1) - mean_at(object, t0))
  # An unbalanced flow's predicted cells are scored with their weights.
  out <- prediction_rows(object, predicted, source, target, shifts, max_cells, seed, baselines, expression,
                         weights = attr(states, "weight")[[2]])
  out$cells <- nrow(source)
  out
}

#' @export
evaluate_model.popflow_population <- function(object, source, target, from, to, solver, max_cells, seed, baselines,
                                              population, target_population, label, unseen_label,
                                              expression = NULL, verbose = FALSE) {
  if (!is.null(from) || !is.null(to)) {
    pf_abort(if (is.null(from)) "to" else "from", "is not used by population models",
             "they move source cells (time 0) to target cells (time 1)")
  }
  src_pop <- check_population(population, nrow(source))
  if (is.null(target_population)) {
    if (nrow(target) != nrow(source)) {
      pf_abort("target_population", "is missing",
               "give the population of every target cell (source and target differ in their numbers of cells)")
    }
    target_population <- src_pop
  }
  tgt_pop <- check_population(target_population, nrow(target), "target_population")
  pops <- unique(src_pop)
  lacking <- setdiff(pops, tgt_pop)
  if (length(lacking)) {
    pf_abort("target_population", sprintf("has no cells of population '%s'", lacking[1]),
             "every population of the source cells needs observed target cells to be scored")
  }
  predicted <- move_cells(object, source, c(0, 1), solver, object$threads, population = src_pop, label = label,
                          unseen_label = unseen_label, verbose = verbose)[[2]]
  shift <- population_mean_shift(object)
  label_shift <- if ("label mean shift" %in% baselines) label_mean_shifts(object, label, src_pop, pops, shift)
  rows <- lapply(scoring_steps(pops, verbose), function(k) {
    in_src <- src_pop == pops[k]
    in_tgt <- tgt_pop == pops[k]
    s <- source[in_src, , drop = FALSE]
    r <- prediction_rows(object, predicted[in_src, , drop = FALSE], s, target[in_tgt, , drop = FALSE],
                         list(mean = shift, label = label_shift[k, ]), max_cells, seed, baselines,
                         expression_cells(expression, in_src, in_tgt))
    cbind(population = pops[k], r, cells = nrow(s))
  })
  out <- do.call(rbind, rows)
  rownames(out) <- NULL
  out
}

# The model's prediction and the chosen baselines, each scored against the
# observed cells: one row each, in the order of `baseline_names`. `shifts`:
# `mean` (the "mean shift"), `label` (the "label mean shift").
prediction_rows <- function(object, predicted, source, observed, shifts, max_cells, seed, baselines,
                            expression = NULL, weights = NULL) {
  sets <- list(predicted)
  for (b in setdiff(baselines, "noise floor")) {
    sets[[length(sets) + 1]] <- switch(b,
      "no change" = source,
      "mean shift" = shift_cells(source, shifts$mean),
      "label mean shift" = shift_cells(source, shifts$label),
      "oracle shift" = shift_cells(source, colMeans(observed) - colMeans(source))
    )
  }
  labels <- c(method_label(object$method), setdiff(baselines, "noise floor"))
  response <- expression_response(expression)
  rows <- lapply(seq_along(sets), function(i) {
    bind_columns(data.frame(prediction = labels[i]),
                 metric_row(sets[[i]], observed, max_cells, seed, if (i == 1) weights),
                 expression_row(response, pcs = sets[[i]]))
  })
  if ("noise floor" %in% baselines) {
    halves <- noise_floor_halves(nrow(observed), seed)
    floor <- if (is.null(halves)) {
      na_row(rows[[1]])
    } else {
      bind_columns(metric_row(observed[halves$a, , drop = FALSE], observed[halves$b, , drop = FALSE], max_cells, seed),
                   expression_row(response, halves = halves))
    }
    rows[[length(rows) + 1]] <- bind_columns(data.frame(prediction = "noise floor"), floor)
  }
  do.call(rbind, rows)
}

shift_cells <- function(x, shift) sweep(x, 2, shift, "+")

# One-row data.frames side by side (NULLs left out).
bind_columns <- function(...) do.call(cbind, Filter(Negate(is.null), list(...)))

# The noise floor's random halves of n observed cells (indices `a`, `b`;
# NULL below 4 cells): `a` is sample.int(n, n %/% 2) drawn with `seed`,
# sorted; `b` the other cells.
noise_floor_halves <- function(n, seed) {
  if (n < 4) return(NULL)
  a <- sort(with_seed(seed, sample.int(n, n %/% 2)))
  list(a = a, b = setdiff(seq_len(n), a))
}

# A row of NA metrics shaped like `row` (without its prediction column).
na_row <- function(row) {
  row <- row[setdiff(names(row), "prediction")]
  row[] <- NA_real_
  row
}

# Every metric of a prediction against observed cells; `weights` (an
# unbalanced flow's predicted cells) weight W1, W2, MMD and energy.
metric_row <- function(predicted, observed, max_cells, seed, weights = NULL) {
  keep <- subsample_index(nrow(predicted), max_cells, seed)
  p <- predicted[keep, , drop = FALSE]
  w <- if (is.null(weights)) numeric(0) else as.numeric(weights[keep])
  o <- subsample_rows(observed, max_cells, seed + 1)
  # Undefined R^2 or r (too few features, constant means or features) is NA, not NaN.
  defined <- function(v) if (is.finite(v)) v else NA_real_
  data.frame(W1 = pf_wasserstein(p, o, 1L, w, numeric(0)), W2 = pf_wasserstein(p, o, 2L, w, numeric(0)),
             MMD = pf_mmd(p, o, c(2, 1, 0.5, 0.1, 0.01, 0.005), w, numeric(0)), energy = pf_energy(p, o, w, numeric(0)),
             mean_R2 = defined(pf_mean_r2(predicted, observed)), corr_r = defined(pf_correlation_r(predicted, observed)))
}

# Training-data mean at a model time, linearly interpolated between snapshots.
mean_at <- function(object, t) {
  ok <- stats::complete.cases(object$time_means)
  tt <- object$times[ok]
  vapply(seq_len(object$n_features), function(j) {
    stats::approx(tt, object$time_means[ok, j], xout = t, rule = 2)$y
  }, numeric(1))
}

# The average over training populations of the target-minus-source mean
# ("mean shift" baseline of a population model).
population_mean_shift <- function(object) {
  pm <- object$population_means
  if (is.null(pm)) return(object$time_means[2, ] - object$time_means[1, ])  # models fitted before it was kept
  d <- pm$target - pm$source
  colMeans(d[stats::complete.cases(d), , drop = FALSE])
}

# "Label mean shift" of each population `pops` (rows): the average
# target-minus-source mean of the training populations whose label values all
# equal the population's; the overall mean shift `overall` (with a message)
# where none does, or where the model does not record its populations' labels.
label_mean_shifts <- function(object, label, src_pop, pops, overall) {
  out <- matrix(overall, length(pops), length(overall), byrow = TRUE)
  train <- object$population_labels
  pm <- object$population_means
  if (is.null(train) || is.null(pm)) {
    message("label mean shift: this model does not record its training populations' labels (it was fitted by an ",
            "older popflow); the \"label mean shift\" rows are the overall mean shift")
    return(out)
  }
  cols <- label_columns(label, length(src_pop))
  if (identical(names(cols), "label") && length(object$labels) == 1) names(cols) <- names(object$labels)
  d <- pm$target - pm$source
  has_both <- stats::complete.cases(d)
  first <- match(pops, src_pop)
  alone <- character(0)
  for (k in seq_along(pops)) {
    same <- has_both
    for (nm in names(object$labels)) {
      v <- cols[[nm]][first[k]]
      same <- same & if (is.numeric(train[[nm]])) train[[nm]] == as.numeric(v) else train[[nm]] == as.character(v)
    }
    if (any(same)) out[k, ] <- colMeans(d[same, , drop = FALSE]) else alone <- c(alone, pops[k])
  }
  if (length(alone)) {
    message(sprintf("label mean shift: no training population shares the labels of population%s %s; %s the overall mean shift",
                    if (length(alone) > 1) "s" else "", paste0("'", alone, "'", collapse = ", "),
                    if (length(alone) > 1) "their rows are" else "its row is"))
  }
  out
}

# Expression of the observed cells of an evaluation on an object (NULL
# without an expression model): `model` (see expression_model()), `source`
# and `observed` (genes x cells, in the order of the source and observed rows)
# and `top` (the number of most responsive genes).
object_expression <- function(model, source_object, src_cells, src_pcs, observed_object, obs_cells, obs_pcs, top) {
  if (is.null(model)) return(NULL)
  list(model = model, source = observed_genes(model, source_object, src_cells, src_pcs),
       observed = observed_genes(model, observed_object, obs_cells, obs_pcs), top = top)
}

# Genes x cells expression of the loading genes in cells `cells` of `x`: its
# assay, or, when it lacks them, the reconstruction of the cells' PCs.
observed_genes <- function(model, x, cells, pcs) {
  genes <- rownames(model$rotation)
  data <- tryCatch(assay_source(x, model$assay, "x"), error = function(e) NULL)
  if (is.null(data) || !all(genes %in% data$features)) return(reconstruct_expression(model, pcs))
  data$read(genes, cells)
}

expression_cells <- function(expression, in_src, in_obs) {
  if (is.null(expression)) return(NULL)
  expression$source <- expression$source[, in_src, drop = FALSE]
  expression$observed <- expression$observed[, in_obs, drop = FALSE]
  expression
}

# The observed response of a population: mean observed target expression, and
# the `top` genes with the largest |mean target - mean source|.
expression_response <- function(expression) {
  if (is.null(expression)) return(NULL)
  observed <- rowMeans(expression$observed)
  change <- abs(observed - rowMeans(expression$source))
  top <- order(change, decreasing = TRUE)[seq_len(min(expression$top, length(change)))]
  c(expression, list(observed_mean = observed, top_genes = top))
}

# R^2 of mean expression, over all genes and the top genes, of predicted
# cells given by their PCs (`pcs`) or of one half of the observed cells
# against the other (`halves`).
expression_row <- function(response, pcs = NULL, halves = NULL) {
  if (is.null(response)) return(NULL)
  if (!is.null(pcs)) {
    m <- response$model
    predicted <- drop(m$rotation %*% colMeans(pcs)) * m$scale + m$center
    observed <- response$observed_mean
  } else {
    predicted <- rowMeans(response$observed[, halves$a, drop = FALSE])
    observed <- rowMeans(response$observed[, halves$b, drop = FALSE])
  }
  top <- response$top_genes
  data.frame(R2_all_genes = r_squared(predicted, observed), R2_top_genes = r_squared(predicted[top], observed[top]))
}

# Coefficient of determination of `predicted` for `observed`.
r_squared <- function(predicted, observed) {
  total <- sum((observed - mean(observed))^2)
  if (!(total > 0)) return(NA_real_)
  1 - sum((observed - predicted)^2) / total
}

# evaluateFlow() on objects: observed cells are the target-condition (or
# time `to`) cells of `target`, or of `source` itself.
evaluate_cell_object <- function(object, source, target, from, to, solver, max_cells, seed, baselines, top_genes,
                                 unseen_label = "error", verbose = FALSE) {
  src <- object_source_cells(object, source, from, "source")
  src$x <- same_features(src$x, "source", object$feature_names, object$n_features)
  spec <- src$spec
  observed_object <- if (is.null(target)) source else target
  if (!is_cell_object(observed_object)) {
    pf_abort("target", "must be a single-cell object like `source`, or missing",
             "leave it out to compare with the target cells of `source`")
  }
  obs_meta <- cell_columns(observed_object)
  layout_source(observed_object, spec, "target")  # the space or assay checked before the columns
  if (!is.null(target)) check_same_loadings(spec, target, "target")
  obs_column <- spec$condition %||% spec$time
  obs_value <- if (!is.null(spec$condition)) spec$target else to %||% object$time_labels[length(object$time_labels)]
  if (is.null(target)) fitted_columns(obs_column, source, obs_meta, "source")
  obs <- cells_where(obs_meta, obs_column, obs_value, if (is.null(target)) "source" else "target")
  # The observed cells only, one row per cell of `obs`.
  obs_coords <- same_features(layout_coordinates(observed_object, spec, "target", obs), "target", object$feature_names,
                              object$n_features)
  expression <- object_expression(spec$expression, source, src$cells, src$x, observed_object, obs, obs_coords,
                                  top_genes)
  if (!length(spec$population)) {
    return(evaluate_model(object, src$x, obs_coords, from = from, to = to, solver = solver,
                          max_cells = max_cells, seed = seed, baselines = baselines, population = NULL,
                          target_population = NULL, label = NULL, unseen_label = "error", expression = expression,
                          verbose = verbose))
  }
  fitted_columns(spec$population, observed_object, obs_meta, if (is.null(target)) "source" else "target")
  obs_population <- population_ids(obs_meta, spec$population, obs, if (is.null(target)) "source" else "target")
  shared <- intersect(unique(src$population), obs_population)
  if (!length(shared)) {
    pf_abort("source", "has no population with both source and observed target cells",
             "evaluate on cells of populations that have both conditions")
  }
  keep <- src$population %in% shared
  in_obs <- obs_population %in% shared
  by_population <- evaluate_by_population(object, src$x[keep, , drop = FALSE], obs_coords[in_obs, , drop = FALSE],
                                          src$population[keep], obs_population[in_obs], rows_of(src$label, keep),
                                          from, to, solver, max_cells, seed, baselines,
                                          expression_cells(expression, keep, in_obs), unseen_label, verbose)
  rows <- lapply(shared, function(p) {
    scores <- by_population[by_population$population == p, names(by_population) != "population", drop = FALSE]
    first <- which(src$population == p)[1]
    ids <- data.frame(population = rep(p, nrow(scores)), stringsAsFactors = FALSE)
    for (nm in spec$population) ids[[nm]] <- rep(as.character(src$meta[[nm]][src$cells][first]), nrow(scores))
    cbind(ids, scores)
  })
  out <- do.call(rbind, rows)
  rownames(out) <- NULL
  out
}

# The indices of `pops`, with a bar over them once scoring has run a few
# seconds (verbose); R checks Ctrl-C between the populations.
scoring_steps <- function(pops, verbose, envir = parent.frame()) {
  if (!isTRUE(verbose)) return(seq_along(pops))
  cli::cli_progress_along(pops, "Scoring populations", .envir = envir)
}

# Metric rows of each population (column `population` first) of source cells
# against observed cells: a population model embeds each population, a flow
# moves each population's cells on their own.
evaluate_by_population <- function(object, source, observed, src_pop, obs_pop, label, from, to, solver, max_cells,
                                   seed, baselines, expression = NULL, unseen_label = "error", verbose = FALSE) {
  UseMethod("evaluate_by_population")
}

#' @export
evaluate_by_population.popflow_flow <- function(object, source, observed, src_pop, obs_pop, label, from, to, solver,
                                                max_cells, seed, baselines, expression = NULL,
                                                unseen_label = "error", verbose = FALSE) {
  pops <- unique(src_pop)
  do.call(rbind, lapply(scoring_steps(pops, verbose), function(k) {
    p <- pops[k]
    cbind(population = p, evaluate_model(object, source[src_pop == p, , drop = FALSE],
                                         observed[obs_pop == p, , drop = FALSE], from, to, solver, max_cells, seed,
                                         baselines, NULL, NULL, NULL, "error",
                                         expression_cells(expression, src_pop == p, obs_pop == p), FALSE))
  }))
}

#' @export
evaluate_by_population.popflow_population <- function(object, source, observed, src_pop, obs_pop, label, from, to,
                                                      solver, max_cells, seed, baselines, expression = NULL,
                                                      unseen_label = "error", verbose = FALSE) {
  evaluate_model(object, source, observed, NULL, NULL, solver, max_cells, seed, baselines, src_pop, obs_pop, label,
                 unseen_label, expression, verbose)
}

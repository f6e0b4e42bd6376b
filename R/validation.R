# Validation during training: fitFlow(held_out = , validation = ) turns the
# held-out cells into the engine's held-out sets (src/r_glue.h), the engine's
# loop scores them every `every` steps (src/core/validation.h), and the
# record comes back as `fit$validation`. Flows score held-out cells moved
# between consecutive held-out time points; population models score each
# held-out population.

# The validation of a fit: NULL without `held_out`, else the settings and the
# held-out data, checked against each other.
fit_validation <- function(validation, held_out) {
  if (is.null(held_out)) {
    if (!is.null(validation)) {
      pf_abort("validation", "is given but `held_out` is missing",
               "give held-out cells to score, e.g. held_out = list(x = , target = ), or drop `validation`")
    }
    return(NULL)
  }
  param <- expect_param(validation %||% ValidationParam(), "validation", "ValidationParam")
  if (is_cell_object(held_out)) {
    pf_abort("held_out", sprintf("is a %s, but `x` is a matrix", class(held_out)[1]),
             "give held-out cells as a list like fitFlow()'s arguments, e.g. list(x = , target = , population = )")
  }
  if (!is.list(held_out) || is.data.frame(held_out) || is.null(names(held_out)) || any(names(held_out) == "")) {
    pf_abort("held_out", sprintf("must be a named list of held-out cells, not %s", class(held_out)[1]),
             "use e.g. held_out = list(x = source_cells, target = target_cells, population = ids)")
  }
  known <- c("x", "target", "time", "group", "population", "label")
  unknown <- setdiff(names(held_out), known)
  if (length(unknown)) {
    pf_abort("held_out", sprintf("has the element%s %s, which fitFlow() does not take; known: %s",
                                 if (length(unknown) > 1) "s" else "", paste0("'", unknown, "'", collapse = ", "),
                                 paste(known, collapse = ", ")),
             "name the elements as fitFlow()'s arguments: x, target, time, group, population, label")
  }
  if (is.null(held_out$x)) pf_abort("held_out", "has no `x`", "give the held-out source cells as held_out$x")
  list(param = param, data = held_out)
}

# The glue's validation list: the settings' sections, the seed and the sets.
validation_config <- function(validation, sets, seed) {
  config <- engine_config(validation$param)
  config$validation$seed <- seed
  c(config, list(sets = sets))
}

# The record a fit starts with (the engine fills in the scores).
validation_fields <- function(validation, sets, what) {
  if (is.null(validation)) return(NULL)
  list(param = validation$param, sets = length(sets), description = what, steps = numeric(0),
       scores = numeric(0), best_step = 0, best_score = NA_real_)
}

# The record of a finished fit. The engine keeps no validation state in model
# files: a resumed fit's record covers the steps of that run only.
validation_record <- function(record, res) {
  if (is.null(record)) return(NULL)
  record$steps <- res$validation_steps
  record$scores <- res$validation_scores
  record$best_step <- res$best_step
  record$best_score <- res$best_score
  record
}

# Errors about an element of `held_out` found by the fit's own checks (which
# name `label`, `population`, ...) say that they are about the held-out data.
in_held_out <- function(expr) {
  tryCatch(expr, error = function(e) {
    msg <- conditionMessage(e)
    if (grepl("not seen in training", msg, fixed = TRUE)) {
      msg <- paste0(msg, "; to score such populations with the mean label embedding, use ",
                    "validation = ValidationParam(unseen_label = \"average\")")
    }
    stop(paste0("in `held_out`: ", msg), call. = FALSE)
  })
}

# Held-out cells with the training features.
held_out_cells <- function(x, arg, features) {
  x <- as_cell_matrix(x, arg)
  if (ncol(x) != ncol(features) || (!is.null(colnames(x)) && !is.null(colnames(features)) &&
                                      !identical(colnames(x), colnames(features)))) {
    what <- if (ncol(x) != ncol(features)) sprintf("%d features", ncol(x)) else "other feature names"
    pf_abort(arg, sprintf("has %s but the training cells have %d%s", what, ncol(features),
                          if (ncol(x) == ncol(features)) " (names differ)" else ""),
             "give held-out cells with the training features (the same columns, in the same order)")
  }
  x
}

# Held-out sets of a flow: for each group (or all cells), the held-out cells
# at each pair of consecutive held-out time points (source at the earlier,
# target at the later); `held_out$target` means the first and last times.
# Target FM without times: the method's source (seeded; `source`: a
# function of n and d drawing it) to the held-out cells.
flow_validation_sets <- function(held_out, data, generative, seed, source = NULL) {
  if (!is.null(held_out$population) || !is.null(held_out$label)) {
    pf_abort("held_out", "has `population` or `label`, which only population models (MFM, CGFM) use",
             "use held_out$group to score each group on its own")
  }
  features <- data$x
  x <- held_out_cells(held_out$x, "held_out$x", features)
  times <- data$times
  first <- times[1]
  last <- times[length(times)]
  if (!is.null(held_out$target)) {
    if (!is.null(held_out$time)) pf_abort("held_out", "has both `target` and `time`", "give one of them")
    target <- held_out_cells(held_out$target, "held_out$target", features)
    cells <- rbind(x, target)
    at <- rep(c(first, last), c(nrow(x), nrow(target)))
  } else if (!is.null(held_out$time)) {
    cells <- x
    time <- held_out$time
    if (length(time) != nrow(x) || anyNA(time)) {
      pf_abort("held_out$time", sprintf("must have one time label per held-out cell (%d), without NA", nrow(x)),
               "give the time of every row of held_out$x")
    }
    model <- list(time_labels = data$time_labels, times = times)
    values <- unique(if (is.factor(time)) as.character(time) else time)
    mapped <- vapply(values, function(v) resolve_time(model, v, "held_out$time"), numeric(1))
    at <- unname(mapped[match(if (is.factor(time)) as.character(time) else time, values)])
  } else if (generative) {
    source <- source %||% function(n, d) with_seed(seed, matrix(stats::rnorm(n * d), n, d))
    cells <- rbind(source(nrow(x), ncol(x)), x)
    at <- rep(c(first, last), each = nrow(x))
  } else {
    pf_abort("held_out", "has `x` but neither `target` nor `time`",
             "give the held-out target cells (held_out$target) or the time of each cell (held_out$time)")
  }
  group <- held_out$group
  if (!is.null(group)) {
    group <- check_population(group, nrow(cells), "held_out$group")
  } else {
    group <- rep("all cells", nrow(cells))
  }
  held_times <- sort(unique(at))
  if (length(held_times) < 2) {
    pf_abort("held_out$time", "has a single time point; a flow is scored between two",
             "give held-out cells at two or more time points")
  }
  sets <- list()
  for (g in unique(group)) {
    for (k in seq_len(length(held_times) - 1)) {
      src <- cells[group == g & at == held_times[k], , drop = FALSE]
      tgt <- cells[group == g & at == held_times[k + 1], , drop = FALSE]
      if (nrow(src) && nrow(tgt)) {
        sets[[length(sets) + 1]] <- list(source = src, target = tgt, t0 = held_times[k], t1 = held_times[k + 1])
      }
    }
  }
  if (!length(sets)) {
    pf_abort("held_out$group", "has no group with held-out cells at two consecutive time points",
             "give every group cells at two or more time points")
  }
  sets
}

# Held-out populations of a population model, in the form of its training
# data (x, target, population for both, label), each with source and target
# cells; labels coded against the fit's (`labels_info`).
population_validation_sets <- function(held_out, method, features, labels_info, unseen_label) {
  if (!is.null(held_out$time) || !is.null(held_out$group)) {
    pf_abort("held_out", "has `time` or `group`, which population models do not use",
             "give held_out = list(x = , target = , population = , label = )")
  }
  if (is.null(held_out$target)) {
    pf_abort("held_out", "has no `target`", "give the held-out populations' target cells as held_out$target")
  }
  x <- held_out_cells(held_out$x, "held_out$x", features)
  target <- held_out_cells(held_out$target, "held_out$target", features)
  n <- nrow(x) + nrow(target)
  side <- rep(0:1, c(nrow(x), nrow(target)))
  in_held_out({
    cols <- label_columns(held_out$label, n)
    if (length(labels_info) && !length(cols)) {
      pf_abort("label", "is missing", sprintf("the model is fitted with labels (%s): give them for every held-out cell",
                                              paste(names(labels_info), collapse = ", ")))
    }
    if (length(labels_info) == 1 && identical(names(cols), "label")) names(cols) <- names(labels_info)
    pops <- population_codes(held_out$population, cols, n, method)
  })
  n_source <- tabulate(pops$code[side == 0], length(pops$names))
  n_target <- tabulate(pops$code[side == 1], length(pops$names))
  lacking <- which(n_source == 0 | n_target == 0)
  if (length(lacking)) {
    pf_abort("held_out$population", sprintf("'%s' has no %s cells", pops$names[lacking[1]],
                                            if (n_source[lacking[1]] == 0) "source" else "target"),
             "every held-out population needs source (held_out$x) and target (held_out$target) cells")
  }
  labels <- in_held_out({
    check_graph_sizes(method, n_source, pops$names)
    encode_labels(cols, pops$code, pops$names, labels_info, unseen = unseen_label)
  })
  cells <- rbind(x, target)
  lapply(seq_along(pops$names), function(p) {
    list(source = cells[side == 0 & pops$code == p, , drop = FALSE],
         target = cells[side == 1 & pops$code == p, , drop = FALSE],
         labels = if (!is.null(labels$codes)) as.numeric(labels$codes[p, ]),
         covariates = if (!is.null(labels$covariates)) as.numeric(labels$covariates[p, ]))
  })
}

# `held_out` for a fit on a single-cell object: the held-out object's cells
# read as the training object's are (the same space, condition or time,
# population and label columns), in the form fitFlow() takes. A list is
# taken as it is.
object_held_out <- function(held_out, method, layout, condition, source, target, time, population, label) {
  if (is.null(held_out) || !is_cell_object(held_out)) return(held_out)
  need_object_packages(held_out, "held_out")
  layout_source(held_out, layout, "held_out")  # the space or assay checked before the columns
  meta <- cell_columns(held_out)
  fitted_columns(c(condition, time, population, label), held_out, meta, "held_out")
  pops <- population_ids(meta, population)
  labels <- label_frame(meta, label)
  if (!is.null(condition)) {
    src <- cells_where(meta, condition, source, "held_out")
    tgt <- cells_where(meta, condition, target, "held_out")
    cells <- c(src, tgt)
    coords <- layout_coordinates(held_out, layout, "held_out", cells)  # those cells only
    out <- list(x = coords[seq_along(src), , drop = FALSE], target = coords[-seq_along(src), , drop = FALSE])
  } else {
    cells <- seq_len(ncol(held_out))
    out <- list(x = layout_coordinates(held_out, layout, "held_out"))
  }
  extra <- object_cells(method, pops[cells], rows_of(labels, cells), if (!is.null(time)) meta[[time]][cells])
  c(out, Filter(Negate(is.null), extra))
}

# print(): one line on the validation record.
validation_line <- function(record) {
  if (is.null(record) || !length(record$scores)) return("")
  p <- record$param
  best <- if (is.finite(record$best_score)) {
    sprintf("best %.4g at step %d%s", record$best_score, record$best_step,
            if (p$keep_best) " (the model's weights)" else "")
  } else {
    "no finite score"
  }
  sprintf("  validation: %s on %s, %d scores (steps %d-%d), %s, last %.4g\n", p$metric, record$description,
          length(record$scores), min(record$steps), max(record$steps), best,
          record$scores[length(record$scores)])
}

# report_training_status(): why training stopped before its last step.
early_stop_message <- function(fit, steps) {
  record <- fit$validation
  sprintf(paste0("training stopped early at step %d of %d: the validation %s did not improve for %d validations ",
                 "in a row; the model holds %s"), fit$steps_done, steps, record$param$metric, record$param$patience,
          if (record$param$keep_best && is.finite(record$best_score)) {
            sprintf("step %d, the best (%s %.4g)", record$best_step, record$param$metric, record$best_score)
          } else {
            sprintf("step %d", fit$steps_done)
          })
}

# summary(): the settings, the best step and the whole curve.
validation_summary <- function(record) {
  if (is.null(record)) return(NULL)
  list(metric = record$param$metric, every = record$param$every, keep_best = record$param$keep_best,
       description = record$description, best_step = record$best_step, best_score = record$best_score,
       curve = data.frame(step = record$steps, score = record$scores))
}

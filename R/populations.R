# Populations and labels of population models (MFM, CGFM) in the engine's
# form: 0-based population codes, categorical label codes and numeric
# covariates, one row per population. Shared by fitting, prediction,
# embedding and evaluation.

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

# Population codes of the cells (in order of first appearance).
population_codes <- function(population, cols, n, method) {
  pop <- check_population(population %||% label_populations(method, cols), n)
  f <- factor(pop, levels = unique(pop))
  list(code = as.integer(f), names = levels(f))
}

# Populations of cells given without `population`: none (an error), except
# for CGFM, whose populations are then its label combinations.
label_populations <- function(method, cols) UseMethod("label_populations")

#' @export
label_populations.default <- function(method, cols) NULL

#' @export
label_populations.CGFMParam <- function(method, cols) {
  if (length(cols)) do.call(paste, c(lapply(cols, as.character), sep = "/"))
}

# Labels a fit needs: CGFM conditions on labels only, so it needs some.
check_fit_labels <- function(method, cols) UseMethod("check_fit_labels")

#' @export
check_fit_labels.default <- function(method, cols) invisible()

#' @export
check_fit_labels.CGFMParam <- function(method, cols) {
  if (!length(cols)) {
    pf_abort("label", "is missing", "CGFM conditions on known labels: give one label per cell (e.g. the treatment)")
  }
  invisible()
}

# A GCN embeds a population through its kNN graph. A population of no more
# than k cells (after the `max_cells` cap) uses the neighbourhood it has,
# k = n - 1 (all its other cells): one message names every such population.
# Returns the k of each population's graph (NULL without a graph).
check_graph_sizes <- function(method, sizes, names, what = "source cells") UseMethod("check_graph_sizes")

#' @export
check_graph_sizes.default <- function(method, sizes, names, what = "source cells") invisible(NULL)

#' @export
check_graph_sizes.MFMParam <- function(method, sizes, names, what = "source cells") {
  if (method$encoder != "gcn") return(invisible(NULL))
  used <- if (method$max_cells > 0) pmin(sizes, method$max_cells) else sizes
  k <- as.integer(pmax(0, pmin(method$k, used - 1)))
  small <- which(sizes > 0 & k < method$k)
  if (length(small)) {
    shown <- utils::head(small, 10)
    message(sprintf(paste0("%s smaller than the kNN graph's k = %d: %s use%s k = n - 1 (all other cells of ",
                           "the population): %s%s. Set `k` in MFMParam() to choose one neighbourhood for all."),
                    if (length(small) == 1) "1 population is" else sprintf("%d populations are", length(small)),
                    method$k, if (length(small) == 1) "it" else "they", if (length(small) == 1) "s" else "",
                    paste(sprintf("'%s' (%d %s, k = %d)", names[shown], sizes[shown], what, k[shown]), collapse = ", "),
                    if (length(small) > length(shown)) sprintf(" and %d more", length(small) - length(shown)) else ""))
  }
  invisible(k)
}

# Does the method embed populations with an encoder (MFM), or condition on labels only?
has_encoder <- function(method) !identical(engine_config(method)$population$encoder %||% "none", "none")

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
  extra <- setdiff(names(cols), names(info))
  if (length(extra)) {
    pf_abort("label", if (!length(info)) "is given, but the model was fitted without labels" else
               sprintf("has the column%s %s, which the model was not fitted with", if (length(extra) > 1) "s" else "",
                       paste0("'", extra, "'", collapse = ", ")),
             if (!length(info)) "drop `label`: the model conditions on the populations' cells only" else
               sprintf("give only the fitted label columns: %s", paste(names(info), collapse = ", ")))
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


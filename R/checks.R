# Argument checks. Every failure names the argument and says how to fix it,
# before anything reaches the C++ engine.

pf_abort <- function(arg, problem, fix = NULL) {
  msg <- sprintf("`%s` %s", arg, problem)
  if (!is.null(fix)) msg <- paste0(msg, "\n  Fix: ", fix)
  stop(msg, call. = FALSE)
}

# A cells x features double matrix, finite, with at least `min_rows` rows.
as_cell_matrix <- function(x, arg, min_rows = 1L) {
  if (is_cell_object(x)) object_not_matrix(x, arg)
  if (inherits(x, "Matrix") || inherits(x, "dgCMatrix")) {
    # Densified: popflow works on a few dense features (e.g. principal components).
    if (prod(as.numeric(dim(x))) > .Machine$integer.max) {
      pf_abort(arg, sprintf("is a sparse %d x %d matrix, too large to use densely", nrow(x), ncol(x)),
               "reduce it first, e.g. to 50 principal components (popflow works on dense low-dimensional features)")
    }
    x <- as.matrix(x)
  }
  if (is.data.frame(x)) {
    bad <- !vapply(x, is.numeric, logical(1))
    if (any(bad)) {
      pf_abort(arg, sprintf("has non-numeric columns (%s)",
                            paste(utils::head(names(x)[bad], 3), collapse = ", ")),
               "pass only the numeric feature columns, e.g. x[, feature_columns]")
    }
    x <- as.matrix(x)
  }
  if (is.null(x) || !is.matrix(x)) {
    pf_abort(arg, "must be a numeric matrix with cells in rows and features in columns",
             "convert it with as.matrix()")
  }
  if (!is.numeric(x)) {
    pf_abort(arg, sprintf("must be numeric, not %s", typeof(x)),
             "pass the numeric features only (storage.mode(x) <- \"double\" if they are numbers stored as text)")
  }
  if (nrow(x) < min_rows) {
    pf_abort(arg, sprintf("has %d cell%s; at least %d %s needed", nrow(x), if (nrow(x) == 1) "" else "s", min_rows,
                          if (min_rows == 1) "is" else "are"),
             "check the cell selection that produced it (an empty subset or a dropped population?)")
  }
  if (ncol(x) < 1) pf_abort(arg, "has no feature columns", "pass the features (e.g. principal components) as columns")
  storage.mode(x) <- "double"
  n_bad <- sum(!is.finite(x))
  if (n_bad > 0) {
    pf_abort(arg, sprintf("contains %d NA, NaN or infinite value%s", n_bad, if (n_bad > 1) "s" else ""),
             "remove or impute those cells before fitting")
  }
  if (max(abs(x)) > 1e6) {
    pf_abort(arg, sprintf("has values as large as %.3g", max(abs(x))),
             "scale the features (e.g. use a PCA or log-normalised expression)")
  }
  x
}

# Features with one value across all cells carry no information; the flow
# leaves them unchanged, which is harmless but usually an upstream mistake.
warn_constant_features <- function(x, arg) {
  constant <- which(apply(x, 2, function(v) all(v == v[1])))
  if (length(constant)) {
    names <- colnames(x)[constant] %||% as.character(constant)
    warning(sprintf(paste0("`%s` has %d feature%s with the same value in every cell (%s): zero variance, ",
                           "no information; the flow leaves %s unchanged.\n  Fix: drop constant features, ",
                           "e.g. x[, apply(x, 2, stats::sd) > 0]"),
                    arg, length(constant), if (length(constant) > 1) "s" else "",
                    paste(utils::head(names, 5), collapse = ", "), if (length(constant) > 1) "them" else "it"),
            call. = FALSE)
  }
  invisible(x)
}

check_count <- function(x, arg, min = 1) {
  if (!is.numeric(x) || length(x) != 1 || !is.finite(x) || x != round(x) || x < min || x > .Machine$integer.max) {
    pf_abort(arg, sprintf("must be a whole number >= %s, not %s", format(min), deparse1(x)),
             sprintf("use a single whole number of at least %s (and below 2^31)", format(min)))
  }
  as.integer(x)
}

check_number <- function(x, arg, min = -Inf, max = Inf, min_inclusive = TRUE) {
  ok <- is.numeric(x) && length(x) == 1 && is.finite(x) && x <= max &&
    (if (min_inclusive) x >= min else x > min)
  if (!ok) {
    range_txt <- sprintf("%s %s%s", if (min_inclusive) ">=" else ">", format(min),
                         if (is.finite(max)) sprintf(" and <= %s", format(max)) else "")
    pf_abort(arg, sprintf("must be a single number %s, not %s", range_txt, deparse1(x)),
             sprintf("use one finite number %s", range_txt))
  }
  as.numeric(x)
}

check_choice <- function(x, arg, choices) {
  if (!is.character(x) || length(x) != 1 || !(x %in% choices)) {
    pf_abort(arg, sprintf("must be one of %s, not %s",
                          paste0("\"", choices, "\"", collapse = ", "), deparse1(x)),
             sprintf("use e.g. %s = \"%s\"", arg, choices[1]))
  }
  x
}

check_flag <- function(x, arg) {
  if (!is.logical(x) || length(x) != 1 || is.na(x)) pf_abort(arg, "must be TRUE or FALSE", "use a single TRUE or FALSE")
  x
}

check_device <- function(device) {
  if (!is.character(device) || length(device) != 1 || !grepl("^(cpu|cuda(:[0-9]+)?)$", device)) {
    pf_abort("device", sprintf("must be \"cpu\" or \"cuda\", not %s", deparse1(device)),
             "use device = \"cpu\", or \"cuda\" / \"cuda:N\" with a CUDA build")
  }
  if (startsWith(device, "cuda") && !pf_cuda_available()) {
    pf_abort("device", "is \"cuda\" but the LibTorch popflow was built against has no usable CUDA device",
             "use device = \"cpu\", or reinstall popflow with POPFLOW_LIBTORCH pointing at a CUDA LibTorch")
  }
  device
}

same_features <- function(x, arg, feature_names, n_features) {
  if (ncol(x) != n_features) {
    pf_abort(arg, sprintf("has %d features but the model was fitted on %d", ncol(x), n_features),
             "use the same features (columns, in the same order) as in fitFlow()")
  }
  if (!is.null(feature_names) && !is.null(colnames(x)) && !identical(colnames(x), feature_names)) {
    pf_abort(arg, "has different feature names from the data the model was fitted on",
             sprintf("reorder or select the columns to match: %s", paste(utils::head(feature_names, 5), collapse = ", ")))
  }
  x
}

# Argument checks. Every failure names the argument and says how to fix it,
# before anything reaches the C++ engine.

pf_abort <- function(arg, problem, fix = NULL) {
  msg <- sprintf("`%s` %s", arg, problem)
  if (!is.null(fix)) msg <- paste0(msg, "\n  Fix: ", fix)
  stop(msg, call. = FALSE)
}

# A cells x features double matrix, finite, with at least `min_rows` rows.
as_cell_matrix <- function(x, arg, min_rows = 1L) {
  if (inherits(x, "Matrix") || inherits(x, "dgCMatrix")) {
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
    pf_abort(arg, sprintf("has %d cells; at least %d %s needed", nrow(x), min_rows,
                          if (min_rows == 1) "is" else "are"))
  }
  if (ncol(x) < 1) pf_abort(arg, "has no feature columns")
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

check_count <- function(x, arg, min = 1) {
  if (!is.numeric(x) || length(x) != 1 || is.na(x) || x != round(x) || x < min) {
    pf_abort(arg, sprintf("must be a whole number >= %s, not %s", format(min), deparse1(x)))
  }
  as.integer(x)
}

check_number <- function(x, arg, min = -Inf, max = Inf, min_inclusive = TRUE) {
  ok <- is.numeric(x) && length(x) == 1 && is.finite(x) && x <= max &&
    (if (min_inclusive) x >= min else x > min)
  if (!ok) {
    range_txt <- sprintf("%s %s%s", if (min_inclusive) ">=" else ">", format(min),
                         if (is.finite(max)) sprintf(" and <= %s", format(max)) else "")
    pf_abort(arg, sprintf("must be a single number %s, not %s", range_txt, deparse1(x)))
  }
  as.numeric(x)
}

check_choice <- function(x, arg, choices) {
  if (!is.character(x) || length(x) != 1 || !(x %in% choices)) {
    pf_abort(arg, sprintf("must be one of %s, not %s",
                          paste0("\"", choices, "\"", collapse = ", "), deparse1(x)))
  }
  x
}

check_flag <- function(x, arg) {
  if (!is.logical(x) || length(x) != 1 || is.na(x)) pf_abort(arg, "must be TRUE or FALSE")
  x
}

check_device <- function(device) {
  if (!is.character(device) || length(device) != 1 || !grepl("^(cpu|cuda(:[0-9]+)?)$", device)) {
    pf_abort("device", sprintf("must be \"cpu\" or \"cuda\", not %s", deparse1(device)))
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

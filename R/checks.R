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
  # The engine computes in float32: a feature whose values all lie below
  # sqrt(FLT_MIN) ~ 1.08e-19 has squares (distances, losses) that flush to
  # zero, and below FLT_MIN ~ 1.18e-38 the values themselves do.
  top <- apply(abs(x), 2, max)
  tiny <- which(top > 0 & top < float32_tiny)
  if (length(tiny)) {
    names <- colnames(x)[tiny] %||% as.character(tiny)
    pf_abort(arg, sprintf("has %s whose values are all below %.3g in absolute value (%s, at most %.3g): float32, in which popflow computes, cannot hold their squares",
                          if (length(tiny) == 1) "a feature" else sprintf("%d features", length(tiny)), float32_tiny,
                          paste(utils::head(names, 5), collapse = ", "), max(top[tiny])),
             "scale the features, e.g. x / max(abs(x)) or scale(x)")
  }
  x
}

# Smallest magnitude whose square float32 still holds as a normal number: sqrt(2^-126).
float32_tiny <- sqrt(2^-126)

# Cells moved by the engine's solver must be finite: fixed-step solvers return
# NaN or Inf from a field that blows up, and dopri5 stops on them. Either way
# the user gets one R error that names the model and the likely fix.
checked_states <- function(expr, solver) {
  fail <- function() {
    pf_abort("object", sprintf("moved cells to NaN or infinite values (solver \"%s\"): its velocity field is not finite along their paths",
                               solver$method),
             paste0("the model is unusable for these cells: refit with a lower `lr` or clip_norm = 1 in TrainingParam() ",
                    "(see its loss with plotLoss()), and give cells on the scale of the training cells"))
  }
  res <- tryCatch(expr, error = function(e) {
    if (grepl("non-finite", conditionMessage(e), fixed = TRUE)) fail()
    stop(e)
  })
  for (s in res$states) if (!all(is.finite(s))) fail()
  res
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
    if (pf_cuda_built()) {
      pf_abort("device", paste("is \"cuda\" but no usable CUDA device is visible: popflow's LibTorch has CUDA,",
                               "but no GPU and driver were found"),
               paste("use device = \"cpu\", or run on a machine whose NVIDIA GPU `nvidia-smi` lists",
                     "(CUDA_VISIBLE_DEVICES must not hide it)"))
    }
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

# Arguments that reached a method's `...` without a use: an error that names
# each and says where it belongs, instead of silently ignoring it (e.g.
# fitFlow(x, y, steps = 10) training the default 2000 steps). Call it first
# thing in a method as check_dots(..., .verb = , .params = ): `.params` maps
# the verb's parameter-object arguments to their constructors
# (c(training = "TrainingParam")); a constructor's formals tell which
# settings it owns. Names that are arguments of the verb's other methods, or
# close to one of its arguments, get that hint.
check_dots <- function(..., .verb, .params = character()) {
  n <- ...length()
  if (n == 0) return(invisible())
  caller <- sys.parent()
  exprs <- tryCatch(match.call(sys.function(caller), sys.call(caller), expand.dots = FALSE,
                               envir = parent.frame(2L))$...,
                    error = function(e) NULL)
  if (length(exprs) != n) exprs <- rep(list(quote(...)), n)
  names <- ...names() %||% rep("", n)
  names[is.na(names)] <- ""
  values <- vapply(exprs, function(e) {
    txt <- paste(deparse(e, width.cutoff = 60L, nlines = 1L), collapse = "")
    if (nchar(txt) > 40) "..." else txt
  }, character(1))
  verb_args <- verb_formals(.verb)
  hints <- character(0)
  owned <- list()
  for (i in seq_len(n)) {
    nm <- names[i]
    if (!nzchar(nm)) {
      hints <- c(hints, sprintf("name the argument given as `%s`, or drop it", values[i]))
      next
    }
    owner <- setting_owner(nm, .params)
    if (!is.null(owner)) {
      owned[[owner]] <- c(owned[[owner]], sprintf("%s = %s", nm, values[i]))
      next
    }
    elsewhere <- other_method_use(.verb, nm)
    if (!is.null(elsewhere)) {
      hints <- c(hints, sprintf("`%s` is used only %s", nm, elsewhere))
      next
    }
    close <- verb_args[utils::adist(nm, verb_args, ignore.case = TRUE) <= if (nchar(nm) <= 3) 1 else 2]
    hints <- c(hints, if (length(close)) {
      sprintf("did you mean %s?", paste0("`", close, "`", collapse = " or "))
    } else {
      sprintf("drop `%s` (see ?%s for the arguments)", nm, .verb)
    })
  }
  uses <- vapply(names(owned), function(owner) {
    arg <- names(.params)[.params == owner][1]
    sprintf("%s = %s(%s)", if (is.na(arg)) "method" else arg, owner, paste(owned[[owner]], collapse = ", "))
  }, character(1))
  if (length(uses)) hints <- c(sprintf("use %s", paste(uses, collapse = " and ")), hints)
  shown <- ifelse(nzchar(names), sprintf("`%s`", names), sprintf("`%s` (unnamed)", values))
  stop(sprintf("%s %s not %s of %s() and would be ignored\n  Fix: %s", paste(shown, collapse = ", "),
               if (n > 1) "are" else "is", if (n > 1) "arguments" else "an argument", .verb,
               paste(hints, collapse = "; ")), call. = FALSE)
}

# The parameter-object constructors whose settings a user may misplace, and
# the constructor (among the verb's `params`, else any method) that owns `name`.
param_constructors <- c("TrainingParam", "NetworkParam", "SolverParam", "ValidationParam", "ICFMParam", "OTCFMParam",
                        "SBCFMParam", "TargetFMParam", "MFMParam", "CGFMParam")
setting_owner <- function(name, params) {
  owns <- function(ctor) name %in% names(formals(get(ctor, envir = asNamespace("popflow"))))
  for (ctor in unique(params)) if (owns(ctor)) return(ctor)
  # A method's setting while another method (or none) is chosen: its own constructor.
  if ("method" %in% names(params)) {
    for (ctor in setdiff(param_constructors, c("TrainingParam", "NetworkParam", "SolverParam", "ValidationParam"))) {
      if (owns(ctor)) return(ctor)
    }
  }
  NULL
}

# The methods of each verb that take `...`, and what each is for.
verb_methods <- list(
  fitFlow = c(fitFlow.default = "when `x` is a matrix of cells",
              fitFlow.SummarizedExperiment = "when `x` is a SingleCellExperiment or Seurat object"),
  predict = c(predict.popflow_flow = "by flow models (I-CFM, OT-CFM, SB-CFM, target FM)",
              predict.popflow_population = "by population models (MFM, CGFM)")
)

verb_formals <- function(verb) {
  fns <- names(verb_methods[[verb]])
  setdiff(unique(unlist(lapply(fns, function(f) names(formals(get(f, envir = asNamespace("popflow"))))))), "...")
}

# Where an argument of another method of the verb is used, or NULL.
other_method_use <- function(verb, name) {
  methods <- verb_methods[[verb]]
  for (f in names(methods)) {
    if (name %in% names(formals(get(f, envir = asNamespace("popflow"))))) return(methods[[f]])
  }
  NULL
}

# Cell weights (NULL: equal weights, returned as numeric(0)): one per row of
# the cells `of`, finite, >= 0, with a positive sum.
check_weights <- function(w, n, arg, of) {
  if (is.null(w)) return(numeric(0))
  if (!is.numeric(w) || length(w) != n) {
    pf_abort(arg, sprintf("must be %d numbers, one per row of `%s`, not %s", n, of,
                          if (is.numeric(w)) sprintf("%d", length(w)) else class(w)[1]),
             sprintf("give one weight per cell of `%s` (e.g. attr(pred, \"weight\") of the same cells), or NULL", of))
  }
  if (any(!is.finite(w)) || any(w < 0)) {
    pf_abort(arg, "must be finite and >= 0", "weights are cell masses: give finite non-negative numbers")
  }
  if (!(sum(w) > 0)) pf_abort(arg, "is zero for every cell", "give at least one cell a positive weight")
  as.numeric(w)
}

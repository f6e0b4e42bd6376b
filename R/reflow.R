# Reflow (rectified flow, Liu et al. 2023): a fitted flow's own pairs
# (x0, ODE(x0)) are a coupling; a flow trained on them along straight paths
# carries the same cells to the same places with straighter paths, which
# fewer solver steps integrate well. Each round is an ordinary paired I-CFM
# fit (sigma 0) in the one training loop.

#' Reflow: straighten a fitted flow
#'
#' `ReflowParam()` selects reflow (rectified flow; Liu, Gong and Liu, ICLR
#' 2023) as the method of [fitFlow()]: the fitted `model` moves each start
#' cell `x0` to `x1 = ODE(x0)` (with `solver`), and a new flow is trained on
#' these pairs along straight paths (paired I-CFM with `sigma = 0`, the
#' `network` and `training` of the call). Each further round trains a new
#' flow on the pairs of the previous round's flow, from the same `x0`. The result carries the same start cells to nearly the same
#' places, along straighter paths, so a few Euler steps come much closer to
#' the exact solution (see `bench/reflow_steps.R`).
#'
#' The start cells are `x` for a flow between populations (its source cells),
#' and `n` draws from the Gaussian source for a generative model (target FM,
#' diffusion), which then stays generative: `predict(fit, n = )`. A reflowed
#' flow has one interval (the model's first to last time). Log-densities
#' ([logDensity()]) are not offered for reflowed models, and
#' `fitFlow(resume = )` does not apply (each round trains on pairs of its
#' own): fit again with more `steps`.
#'
#' @param model A flow from [fitFlow()] (not a population model).
#' @param rounds Rounds of reflow.
#' @param n Generative models: noise draws per round (`NULL`: as many as the
#'   rows of `x`).
#' @param solver The [SolverParam()] that integrates the pairs.
#' @return An object of classes `ReflowParam`, `popflow_flow_param` and `popflow_param`.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' target <- cbind(source[, 1] + 3 * sign(source[, 2]), source[, 2])
#' fit <- fitFlow(source, target, method = "icfm", training = TrainingParam(steps = 200), verbose = FALSE)
#' straight <- fitFlow(source, method = ReflowParam(fit), training = TrainingParam(steps = 200),
#'                     verbose = FALSE)
#' straight
#' @export
ReflowParam <- function(model = NULL, rounds = 1, n = NULL, solver = SolverParam()) {
  if (!is.null(model)) {
    model <- as_model(model, "model")
    if (inherits(model, "popflow_population")) {
      pf_abort("model", "is a population model (MFM, CGFM); reflow straightens a flow",
               "use a model fitted with method = \"icfm\", \"otcfm\", \"sbcfm\", \"targetfm\" or \"diffusion\"")
    }
    if (is_unbalanced(model$method)) {
      pf_abort("model", "is an unbalanced flow (UnbalancedParam); reflow pairs each cell with one prediction and would drop the cells' weights",
               "reflow a balanced flow (\"icfm\", \"otcfm\", \"sbcfm\"), or use the unbalanced flow as it is")
    }
    if (length(model$times) != 2) {
      pf_abort("model", sprintf("was fitted on %d time points; reflow straightens one interval", length(model$times)),
               "reflow a flow fitted on a source and a target population")
    }
    if (!is_gaussian_source(model$method$source)) {
      pf_abort("model", sprintf("starts from its %s source; reflow of a generative model draws Gaussian noise",
                                source_label(model$method$source)),
               "reflow a model fitted with the default GaussianSource(), or use more solver steps")
    }
  }
  new_param("reflow", c("ReflowParam", "popflow_flow_param"), path = "icfm", coupling = "paired", sigma = 0,
            model = model, rounds = check_count(rounds, "rounds"),
            n = if (is.null(n)) NULL else check_count(n, "n", min = 2),
            solver = expect_param(solver, "solver", "SolverParam"),
            base = if (is.null(model)) NULL else method_label(model$method),
            generative = !is.null(model) && is_generative(model$method))
}

#' @export
engine_config.ReflowParam <- function(x) flow_section(path = x$path, sigma = x$sigma, coupling = x$coupling)

#' @export
method_description.ReflowParam <- function(x) {
  sprintf("%d round%s of reflow of a%s %s flow, straight paired paths", x$rounds, if (x$rounds == 1) "" else "s",
          if (grepl("^[AEIOU]", x$base %||% "")) "n" else "", x$base %||% "fitted")
}

#' @export
is_generative.ReflowParam <- function(method) isTRUE(method$generative)

#' @export
print.ReflowParam <- function(x, ...) {
  cat(sprintf("<ReflowParam> %s; solver %s\n", method_description(x), x$solver$method))
  invisible(x)
}

#' @export
fit_method.ReflowParam <- function(method, x, target, time, group, population, label, network, training, device,
                                   threads, verbose, resume, validation = NULL, ...) {
  if (!is.null(validation)) {
    pf_abort("held_out", "is not used by reflow, whose targets are its model's own predictions",
             "validate the model being reflowed, or compare the reflowed model with evaluateFlow() afterwards")
  }
  if (!is.null(resume)) {
    pf_abort("resume", "is not supported by reflow: each round trains on pairs of its own",
             "fit again with more steps in `training`")
  }
  if (is.null(method$model)) {
    pf_abort("method", "is reflow without a model to straighten", "use method = ReflowParam(fit) with a fitted flow")
  }
  for (arg in c("time", "group", "population", "label")) {
    if (!is.null(get(arg))) pf_abort(arg, "is not used by reflow", "give the start cells as `x` only")
  }
  base <- method$model
  x <- same_features(as_cell_matrix(x, "x", min_rows = 2), "x", base$feature_names, base$n_features)
  if (!is.null(target)) {
    same_features(as_cell_matrix(target, "target"), "target", base$feature_names, base$n_features)
    message("reflow: `target` is not used; the fitted model's predictions of `x` are the targets")
  }
  x0 <- if (method$generative) {
    n <- method$n %||% nrow(x)
    with_seed(training$seed, matrix(stats::rnorm(n * base$n_features), n, base$n_features,
                                    dimnames = list(NULL, base$feature_names)))
  } else {
    x
  }
  current <- base
  for (round in seq_len(method$rounds)) {
    x1 <- predict(current, x0, solver = method$solver, threads = threads)
    if (verbose) cli::cli_inform("Reflow round {round} of {method$rounds}")
    current <- fit_method.popflow_flow_param(method, x0, x1, NULL, NULL, NULL, NULL, network, training, device,
                                             threads, verbose, NULL)
  }
  # The fitted model records how it was made, not the model it was made from.
  current$method$model <- NULL
  current$time_labels <- base$time_labels
  names(current$n_cells) <- as.character(base$time_labels)
  current
}

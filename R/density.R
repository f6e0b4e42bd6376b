# logDensity() and logLik(): the exact log-likelihood of a generative flow
# (target FM, diffusion) by the instantaneous change of variables, integrated
# in the engine (src/core/ode.cpp integrate_divergence).

#' Log-density of cells under a generative flow
#'
#' A target-FM or diffusion model ([TargetFMParam()], [DiffusionParam()]) is a
#' continuous normalising flow from a standard Gaussian, so it has an exact
#' density: each cell `x` is carried back along the flow to the source, where
#' its density is known, and the change of volume along the way is the
#' integral of the velocity's divergence,
#' `log p(x) = log N(x0; 0, I) + integral from 1 to 0 of div v(x_t, t) dt`
#' (Chen et al. 2018; Grathwohl et al. 2019). The cell and the integral are
#' solved together by the ODE solver of `solver`; see [DensityParam()] for the
#' exact divergence and Hutchinson's estimator.
#'
#' `logLik()` sums the log-densities of `newdata`, for choosing between models
#' by held-out log-likelihood (higher is better): fit on some cells, score
#' cells held out of the fit. Log-densities are in nats, in the units of the
#' features: compare models fitted on the same features only. The `df` of the
#' result is the number of network weights, so [AIC()] works but is no guide
#' for networks (held-out log-likelihood is).
#'
#' @param object A model from [fitFlow()] with `method = "targetfm"` or `"diffusion"`.
#' @param newdata Cells (cells x features, the fitted features). Required:
#'   models do not keep their training cells.
#' @param solver A [SolverParam()] object; the default `dopri5` with tolerance
#'   `1e-5` is accurate to about `1e-3` nats.
#' @param density A [DensityParam()] object.
#' @param threads LibTorch threads.
#' @param ... Unused.
#' @return `logDensity()`: one log-density per row of `newdata` (named by its
#'   row names). `logLik()`: a `"logLik"` object, their sum, with `nobs` the
#'   number of cells and `df` the number of network weights.
#' @examples
#' set.seed(1)
#' cells <- matrix(rnorm(1000, sd = 0.5), ncol = 2)
#' fit <- fitFlow(cells[1:400, ], method = "targetfm", training = TrainingParam(steps = 300),
#'                verbose = FALSE)
#' head(logDensity(fit, cells[401:500, ]))
#' # Held-out log-likelihood per cell, and that of the density the cells came from.
#' as.numeric(logLik(fit, cells[401:500, ])) / 100
#' mean(rowSums(dnorm(cells[401:500, ], sd = 0.5, log = TRUE)))
#' @export
logDensity <- function(object, newdata, solver = SolverParam(), density = DensityParam(), threads = object$threads) {
  object <- as_model(object)
  if (!is_generative(object$method) || inherits(object, "popflow_population")) {
    pf_abort("object", sprintf("is a %s model, which moves given cells and has no density of its own",
                               method_label(object$method)),
             "log-densities need a generative model: fit with method = \"targetfm\" or \"diffusion\"")
  }
  if (!is_gaussian_source(object$method$source)) {
    pf_abort("object", sprintf("starts from its %s source, which has no density of continuous cells%s",
                               source_label(object$method$source),
                               if (identical(attr(object$method$source, "kind"), "zinb")) " (its counts are discrete)"
                               else " (it is a finite set of cells)"),
             "log-densities need a flow from a Gaussian source: fit with source = GaussianSource() (the default)")
  }
  if (length(object$times) != 2) {
    pf_abort("object", sprintf("was fitted on %d time points; a log-density needs a flow from noise to one population",
                               length(object$times)),
             "fit the population alone: fitFlow(cells, method = \"targetfm\")")
  }
  if (missing(newdata) || is.null(newdata)) {
    pf_abort("newdata", "is missing", "give the cells to score (a cells x features matrix), e.g. held-out cells")
  }
  x <- same_features(as_cell_matrix(newdata, "newdata"), "newdata", object$feature_names, object$n_features)
  solver <- expect_param(solver, "solver", "SolverParam")
  density <- expect_param(density, "density", "DensityParam")
  threads <- check_count(threads, "threads")
  res <- pf_log_density(flow_handle(object), x, engine_config(solver), engine_config(density), threads)
  structure(stats::setNames(res$log_density, rownames(x)), exact = res$exact, evaluations = res$evaluations,
            parameters = res$parameters)
}

#' @rdname logDensity
#' @importFrom stats logLik
#' @export
logLik.popflow_flow <- function(object, newdata, solver = SolverParam(), density = DensityParam(),
                                threads = object$threads, ...) {
  ld <- logDensity(object, newdata, solver = solver, density = density, threads = threads)
  structure(sum(ld), nobs = length(ld), df = attr(ld, "parameters"), class = "logLik")
}

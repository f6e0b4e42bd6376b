# Method, network, training and solver choices as small parameter objects
# (in the spirit of BiocNeighbors' KmknnParam()).

# Dotted formals: settings such as `k` must not partially match them.
new_param <- function(.kind, .class, ...) {
  structure(list(...), kind = .kind, class = c(.class, "popflow_param"))
}

#' Flow-matching method parameters
#'
#' Each constructor returns a small object that selects a flow-matching method
#' for [fitFlow()] and holds its settings. Passing the method name as a string
#' (`method = "otcfm"`) uses the defaults shown here.
#'
#' - `ICFMParam()`: independent conditional flow matching; straight paths
#'   between randomly paired cells, `x_t = (1-t) x0 + t x1 + sigma eps`.
#' - `OTCFMParam()`: the same path, but cells are paired by the exact optimal
#'   transport plan of each minibatch (network simplex). `ot_mode = "resample"`
#'   draws pairs from the plan (as TorchCFM does); `"permutation"` uses the
#'   plan as a one-to-one matching.
#' - `SBCFMParam()`: Schrodinger-bridge flow matching: Brownian-bridge noise
#'   `sigma sqrt(t(1-t))` and an entropic OT coupling (log-domain Sinkhorn with
#'   regularisation `reg`, by default `2 sigma^2`).
#' - `TargetFMParam()`: flow matching from a standard Gaussian to the target
#'   cells (Lipman et al. 2023); a generative model of one population.
#'
#' @param sigma Noise level of the probability path (in the units of the data).
#' @param ot_mode How the exact OT plan pairs cells: `"resample"` or `"permutation"`.
#' @param reg Sinkhorn entropic regularisation; `NULL` means `2 * sigma^2`.
#' @param sinkhorn_iters Maximum Sinkhorn iterations (it stops early once converged).
#' @param sigma_min Width of the target-FM path at `t = 1`.
#' @return An object of class `popflow_param`.
#' @examples
#' OTCFMParam(sigma = 0.05)
#' SBCFMParam(sigma = 0.5)
#' @name FlowParams
NULL

#' @rdname FlowParams
#' @export
ICFMParam <- function(sigma = 0.1) {
  new_param("icfm", "ICFMParam", path = "icfm", coupling = "independent",
            sigma = check_number(sigma, "sigma", min = 0))
}

#' @rdname FlowParams
#' @export
OTCFMParam <- function(sigma = 0.1, ot_mode = c("resample", "permutation")) {
  new_param("otcfm", "OTCFMParam", path = "icfm", coupling = "exact",
            sigma = check_number(sigma, "sigma", min = 0),
            ot_mode = check_choice(ot_mode[1], "ot_mode", c("resample", "permutation")))
}

#' @rdname FlowParams
#' @export
SBCFMParam <- function(sigma = 0.5, reg = NULL, sinkhorn_iters = 500) {
  sigma <- check_number(sigma, "sigma", min = 0, min_inclusive = FALSE)
  new_param("sbcfm", "SBCFMParam", path = "sbcfm", coupling = "sinkhorn", sigma = sigma,
            sinkhorn_reg = if (is.null(reg)) 2 * sigma^2 else check_number(reg, "reg", min = 0, min_inclusive = FALSE),
            sinkhorn_iters = check_count(sinkhorn_iters, "sinkhorn_iters"))
}

#' @rdname FlowParams
#' @export
TargetFMParam <- function(sigma_min = 1e-4) {
  new_param("targetfm", "TargetFMParam", path = "targetfm", coupling = "independent", sigma = 0,
            sigma_min = check_number(sigma_min, "sigma_min", min = 0, max = 1))
}

#' Network, training and ODE-solver parameters
#'
#' `NetworkParam()` describes the velocity network: an MLP (or residual MLP)
#' whose input is the cell, a sinusoidal embedding of time and, optionally,
#' random Fourier features of the cell. `TrainingParam()` sets the Adam
#' optimisation. `SolverParam()` chooses the ODE solver used by [predict()]
#' and [sampleTrajectories()].
#'
#' @param width Hidden layer width.
#' @param depth Hidden layers (MLP) or residual blocks (residual MLP).
#' @param residual Use residual blocks.
#' @param activation `"selu"` or `"silu"`.
#' @param time_dim Size of the sinusoidal time embedding (even; 0 uses raw `t`).
#' @param fourier_features Number of random Fourier features of `x` (even; 0 = none).
#' @param fourier_scale Standard deviation of the Fourier frequencies.
#' @param steps Optimisation steps (training) or integration steps over the
#'   whole time span (fixed-step solvers).
#' @param batch_size Cells drawn from each snapshot (and group) per step.
#' @param lr Adam learning rate.
#' @param weight_decay Adam weight decay.
#' @param clip_norm Gradient-norm clipping threshold; 0 = off.
#' @param ema_decay Exponential moving average of weights (e.g. 0.999); 0 = off.
#'   The fitted model holds the averaged weights.
#' @param seed Random seed: on CPU with one thread, the same seed gives identical models.
#' @param groups_per_step Groups drawn per interval and step when `group` is given.
#' @param time_limit Stop training after this many seconds (0 = no limit);
#'   the model keeps the last completed step (continue it with
#'   `fitFlow(..., resume = fit)`).
#' @param checkpoint_every,checkpoint_file Write the model to
#'   `checkpoint_file` every `checkpoint_every` steps (0 = never). Each write
#'   replaces the file atomically (a temporary file renamed over it), so the
#'   file is always a complete model: [loadFlow()] reads it and
#'   `fitFlow(..., resume = checkpoint_file)` continues training from it.
#' @param method ODE solver: `"euler"`, `"heun"`, `"midpoint"`, `"rk4"` or
#'   `"dopri5"` (adaptive Dormand-Prince 5(4)).
#' @param atol,rtol Absolute and relative tolerances of `"dopri5"`.
#' @param max_steps Safeguard on the number of adaptive steps.
#' @param chunk_size Cells integrated at once (bounds memory).
#' @return An object of class `popflow_param`.
#' @examples
#' NetworkParam(width = 128, depth = 4, residual = TRUE)
#' TrainingParam(steps = 500, lr = 5e-4)
#' SolverParam("rk4", steps = 10)
#' @name ModelParams
NULL

#' @rdname ModelParams
#' @export
NetworkParam <- function(width = 64, depth = 3, residual = FALSE, activation = c("selu", "silu"),
                         time_dim = 16, fourier_features = 0, fourier_scale = 1) {
  time_dim <- check_count(time_dim, "time_dim", min = 0)
  fourier_features <- check_count(fourier_features, "fourier_features", min = 0)
  if (time_dim %% 2 != 0) pf_abort("time_dim", "must be even", "use e.g. time_dim = 16")
  if (fourier_features %% 2 != 0) pf_abort("fourier_features", "must be even", "use e.g. fourier_features = 64")
  new_param("network", "NetworkParam",
            width = check_count(width, "width"), depth = check_count(depth, "depth"),
            residual = check_flag(residual, "residual"),
            activation = check_choice(activation[1], "activation", c("selu", "silu")),
            time_dim = time_dim, fourier_features = fourier_features,
            fourier_scale = check_number(fourier_scale, "fourier_scale", min = 0, min_inclusive = FALSE))
}

#' @rdname ModelParams
#' @export
TrainingParam <- function(steps = 2000, batch_size = 256, lr = 1e-3, weight_decay = 0, clip_norm = 0,
                          ema_decay = 0, seed = 1, groups_per_step = 1, time_limit = 0,
                          checkpoint_every = 0, checkpoint_file = NULL) {
  checkpoint_every <- check_count(checkpoint_every, "checkpoint_every", min = 0)
  checkpoint_file <- check_checkpoint_file(checkpoint_file, checkpoint_every)
  new_param("training", "TrainingParam",
            steps = check_count(steps, "steps"), batch_size = check_count(batch_size, "batch_size"),
            lr = check_number(lr, "lr", min = 0, min_inclusive = FALSE),
            weight_decay = check_number(weight_decay, "weight_decay", min = 0),
            clip_norm = check_number(clip_norm, "clip_norm", min = 0),
            ema_decay = check_number(ema_decay, "ema_decay", min = 0, max = 0.999999),
            seed = check_count(seed, "seed", min = 0),
            groups_per_step = check_count(groups_per_step, "groups_per_step"),
            time_limit = check_number(time_limit, "time_limit", min = 0),
            checkpoint_every = checkpoint_every, checkpoint_file = checkpoint_file)
}

check_checkpoint_file <- function(file, every) {
  if (is.null(file)) {
    if (every > 0) {
      pf_abort("checkpoint_file", "is missing while `checkpoint_every` is set",
               "give a path, e.g. checkpoint_file = \"fit.popflow\"")
    }
    return(NULL)
  }
  if (!is.character(file) || length(file) != 1 || is.na(file) || !nzchar(file)) {
    pf_abort("checkpoint_file", "must be a single file path", "e.g. checkpoint_file = \"fit.popflow\"")
  }
  if (every == 0) pf_abort("checkpoint_every", "is 0 while `checkpoint_file` is set", "set e.g. checkpoint_every = 100")
  file <- path.expand(file)
  if (!dir.exists(dirname(file))) {
    pf_abort("checkpoint_file", sprintf("is in a folder that does not exist (%s)", dirname(file)),
             "create the folder first or choose another path")
  }
  file
}

#' @rdname ModelParams
#' @export
SolverParam <- function(method = c("dopri5", "rk4", "euler", "heun", "midpoint"), steps = 20,
                        atol = 1e-5, rtol = 1e-5, max_steps = 1e5, chunk_size = 65536) {
  new_param("solver", "SolverParam",
            method = check_choice(method[1], "method", c("dopri5", "rk4", "euler", "heun", "midpoint")),
            steps = check_count(steps, "steps"),
            atol = check_number(atol, "atol", min = 0, min_inclusive = FALSE),
            rtol = check_number(rtol, "rtol", min = 0, min_inclusive = FALSE),
            max_steps = check_count(max_steps, "max_steps"),
            chunk_size = check_count(chunk_size, "chunk_size"))
}

#' @export
print.popflow_param <- function(x, ...) {
  vals <- vapply(unclass(x), function(v) paste(format(v), collapse = ","), character(1))
  cat(sprintf("<%s> %s\n", class(x)[1], paste(names(vals), vals, sep = "=", collapse = ", ")))
  invisible(x)
}

# A method given as a name or a parameter object -> parameter object.
as_flow_param <- function(method) {
  methods <- c("icfm", "otcfm", "sbcfm", "targetfm", "mfm", "cgfm")
  if (inherits(method, "popflow_param") && attr(method, "kind") %in% methods) {
    return(method)
  }
  if (!is.character(method) || length(method) != 1 || !(tolower(method) %in% methods)) {
    pf_abort("method", sprintf("must be one of %s, or a parameter object such as OTCFMParam()",
                               paste0("\"", methods, "\"", collapse = ", ")),
             "use e.g. method = \"otcfm\" or method = OTCFMParam(sigma = 0.1)")
  }
  switch(tolower(method), icfm = ICFMParam(), otcfm = OTCFMParam(), sbcfm = SBCFMParam(),
         targetfm = TargetFMParam(), mfm = MFMParam(), cgfm = CGFMParam())
}

expect_param <- function(x, arg, class) {
  if (!inherits(x, class)) pf_abort(arg, sprintf("must be made by %s()", class), sprintf("use %s = %s(...)", arg, class))
  x
}

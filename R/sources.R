# Sources of generative flows (target FM, diffusion): where x0 is drawn.
# GaussianSource() is the default; ZINBSource() fits a zero-inflated negative
# binomial per gene to counts (fitZINB()), EmpiricalSource() holds cells. The
# engine draws from them at every training step and at prediction (from the
# model file), so a saved model draws as the fitted one did.

#' Sources of generative flows
#'
#' Target FM and diffusion ([TargetFMParam()], [DiffusionParam()]) learn a
#' flow from a source distribution at `t = 0` to the cells at `t = 1`. The
#' source is drawn inside the engine at every training step and when
#' [predict()] generates cells (`predict(fit, n = )`), from what the model
#' file stores, so saved models draw the same source.
#'
#' - `GaussianSource()`: a standard Gaussian (the default), the only source
#'   with a density, hence the only one for [logDensity()] and [logLik()].
#' - `ZINBSource()`: independent zero-inflated negative binomial counts per
#'   gene (STFlow's source for spatial counts), fitted by [fitZINB()] to
#'   counts of the same genes (for example the control cells, or the cells
#'   being modelled). The flow runs in the space of the data: each drawn count
#'   `c` is normalised like the data, `log(c / size_factor + 1, base =
#'   log_base)` (`log_base = NULL`: `c / size_factor` as it is). For data
#'   normalised as `log2(count / s_i + 1)` with size factors `s_i` (as
#'   [kangPBMC()] is), use `log_base = 2` and a typical size factor, e.g.
#'   `median(s_i)`: the source then has the data's zeros and its scale, and the
#'   flow learns the rest (cell-to-cell size variation included).
#' - `EmpiricalSource()`: the given cells, drawn with replacement (for
#'   example control cells as the source of a generative model of stimulated
#'   cells).
#'
#' @param counts Raw counts, cells in rows and genes in columns (the genes the
#'   flow models, in the same order), a matrix, sparse matrix or data frame of
#'   whole numbers `>= 0`; or the result of [fitZINB()].
#' @param size_factor Counts are divided by it before the log.
#' @param log_base Base of the `log(c / size_factor + 1)` transform (2 for
#'   log2-normalised data, `exp(1)` for `log1p` data), or `NULL` for none.
#' @param cells Cells (cells x features, the features of the data to fit).
#' @return A source object (class `popflow_source`) for the `source` argument
#'   of [TargetFMParam()] and [DiffusionParam()].
#' @seealso [fitZINB()]
#' @examples
#' set.seed(1)
#' counts <- matrix(rnbinom(600, mu = 3, size = 2), ncol = 3) * rbinom(600, 1, 0.7)
#' src <- ZINBSource(counts, log_base = 2)
#' src
#' fit <- fitFlow(log2(counts + 1), method = TargetFMParam(source = src),
#'                training = TrainingParam(steps = 100), verbose = FALSE)
#' head(predict(fit, n = 5, solver = SolverParam("euler", steps = 10)))
#' EmpiricalSource(matrix(rnorm(20), ncol = 2))
#' @name sources
NULL

new_source <- function(.kind, .class, ...) new_param(.kind, c(.class, "popflow_source"), ...)

#' @rdname sources
#' @export
GaussianSource <- function() new_source("gaussian", "GaussianSource")

#' @rdname sources
#' @export
ZINBSource <- function(counts, size_factor = 1, log_base = 2) {
  if (missing(counts)) pf_abort("counts", "is missing", "give raw counts (cells x genes) or a fitZINB() result")
  zinb <- if (inherits(counts, "popflow_zinb")) counts else fitZINB(counts)
  size_factor <- check_number(size_factor, "size_factor", min = 0, min_inclusive = FALSE)
  if (!is.null(log_base)) log_base <- check_number(log_base, "log_base", min = 1, min_inclusive = FALSE)
  new_source("zinb", "ZINBSource", zinb = zinb, size_factor = size_factor, log_base = log_base)
}

#' @rdname sources
#' @export
EmpiricalSource <- function(cells) {
  if (missing(cells)) pf_abort("cells", "is missing", "give the source cells, a cells x features matrix")
  new_source("empirical", "EmpiricalSource", cells = as_cell_matrix(cells, "cells"))
}

#' @export
print.popflow_source <- function(x, ...) {
  cat(sprintf("<%s> %s\n", class(x)[1], source_description(x)))
  invisible(x)
}

source_description <- function(x) {
  switch(attr(x, "kind"),
    gaussian = "standard Gaussian",
    zinb = sprintf("ZINB per gene (%d genes, fitted to %d cells; mean pi %.2f), counts c as %s",
                   nrow(x$zinb), attr(x$zinb, "n_cells"), mean(x$zinb$pi),
                   if (is.null(x$log_base)) sprintf("c / %g", x$size_factor)
                   else sprintf("log(c / %g + 1, base %g)", x$size_factor, x$log_base)),
    empirical = sprintf("%d given cells of %d features", nrow(x$cells), ncol(x$cells)))
}

source_label <- function(x) c(gaussian = "Gaussian", zinb = "ZINB", empirical = "empirical")[[attr(x, "kind")]]

check_source <- function(source) {
  if (!inherits(source, "popflow_source")) {
    pf_abort("source", "must be made by GaussianSource(), ZINBSource() or EmpiricalSource()",
             "use e.g. source = ZINBSource(counts) or source = EmpiricalSource(control_cells)")
  }
  source
}

is_gaussian_source <- function(source) is.null(source) || identical(attr(source, "kind"), "gaussian")

# The engine's keys of a source: flow keys, and its values (row-major) beside
# the sections. A Gaussian source adds nothing (its model files are as before).
source_config <- function(source, sections) {
  if (is_gaussian_source(source)) return(sections)
  values <- switch(attr(source, "kind"),
    zinb = rbind(source$zinb$mu, source$zinb$theta, source$zinb$pi),
    empirical = source$cells)
  sections$flow <- c(sections$flow, list(source = attr(source, "kind"), source_rows = nrow(values),
                                         source_size_factor = source$size_factor %||% 1,
                                         source_log_base = source$log_base %||% 0))
  sections$source_values <- as.vector(t(values))
  sections
}

# The source's features against the data's: a fit needs them to match.
check_source_features <- function(source, x) {
  if (is_gaussian_source(source)) return(invisible())
  names <- switch(attr(source, "kind"), zinb = source$zinb$feature, empirical = colnames(source$cells))
  n <- switch(attr(source, "kind"), zinb = nrow(source$zinb), empirical = ncol(source$cells))
  if (n != ncol(x)) {
    pf_abort("source", sprintf("has %d features (genes) but the cells have %d", n, ncol(x)),
             "build the source from the same genes as the cells, in the same order")
  }
  if (!is.null(names) && !is.null(colnames(x)) && !identical(as.character(names), colnames(x))) {
    pf_abort("source", "has other feature names than the cells (or another order)",
             sprintf("build the source from the cells' genes: %s", paste(utils::head(colnames(x), 5), collapse = ", ")))
  }
  invisible()
}

# n cells of a generative method's source, seeded: the engine draws them from
# `config` (a fit's configuration, before the fit) or from a fitted model's
# `handle`. Gaussian draws stay in R, as they always were.
draw_source <- function(source, n, d, seed, config = NULL, handle = NULL) {
  if (is_gaussian_source(source)) return(with_seed(seed, matrix(stats::rnorm(n * d), n, d)))
  pf_draw_source(handle, config, as.integer(n), as.numeric(seed))
}

#' Fit a zero-inflated negative binomial to each gene
#'
#' Maximum likelihood of `(mu, theta, pi)` for each gene (column) of a count
#' matrix, where a count is 0 with probability `pi` and otherwise negative
#' binomial with mean `mu` and size (inverse dispersion) `theta`:
#' `P(0) = pi + (1 - pi) (theta / (theta + mu))^theta`. Each gene is fitted
#' by L-BFGS-B on `log mu`, `log theta` and `logit pi` with the analytic
#' gradient, over the gene's distinct counts and their frequencies (so the
#' cost grows with the distinct counts, not the cells). Bounds keep the fit
#' finite: `theta` in `[1e-3, 1e5]` (large `theta` is Poisson), `pi` within
#' `6e-6` of 0 and 1, `mu` at least `1e-8` (a gene without counts).
#'
#' @param counts Raw counts, cells in rows and genes in columns: a matrix,
#'   sparse matrix or data frame of whole numbers `>= 0`.
#' @param max_iter Maximum L-BFGS-B iterations per gene.
#' @return A data frame of class `popflow_zinb`, one row per gene: `feature`,
#'   `mu`, `theta`, `pi` and `loglik` (the gene's maximised log-likelihood);
#'   attributes `n_cells` and `convergence` (0: every gene converged, 1: not
#'   all; raise `max_iter`).
#' @seealso [ZINBSource()]
#' @examples
#' set.seed(1)
#' n <- 2000
#' counts <- cbind(a = rnbinom(n, mu = 5, size = 2) * rbinom(n, 1, 0.7),
#'                 b = rnbinom(n, mu = 1, size = 10))
#' fitZINB(counts)
#' @export
fitZINB <- function(counts, max_iter = 500) {
  max_iter <- check_count(max_iter, "max_iter")
  y <- count_matrix(counts)
  n <- nrow(y)
  fits <- lapply(seq_len(ncol(y)), function(j) {
    # A gene's non-zero counts as values and frequencies: counts repeat, so this is small.
    tab <- table(y[y[, j] > 0, j])
    zinb_gene(as.numeric(names(tab)), as.numeric(tab), n, max_iter)
  })
  out <- data.frame(feature = colnames(y) %||% as.character(seq_len(ncol(y))),
                    mu = vapply(fits, `[[`, 0, "mu"), theta = vapply(fits, `[[`, 0, "theta"),
                    pi = vapply(fits, `[[`, 0, "pi"), loglik = vapply(fits, `[[`, 0, "loglik"),
                    stringsAsFactors = FALSE)
  structure(out, n_cells = n, convergence = max(vapply(fits, `[[`, 0L, "convergence")),
            class = c("popflow_zinb", "data.frame"))
}

# One gene's ZINB maximum likelihood: L-BFGS-B on (log mu, log theta, logit pi)
# with the analytic gradient; `yv`, `w`: the non-zero counts and their
# frequencies among `n` cells (the rest are zeros).
zinb_gene <- function(yv, w, n, max_iter) {
  n0 <- n - sum(w)
  m <- sum(w * yv) / n
  v <- sum(w * yv^2) / n - m^2
  lower <- c(log(1e-8), log(1e-3), -12)
  upper <- c(log(max(yv, 1)) + 2, log(1e5), 12)
  init <- c(log(max(m / 0.9, 1e-6)), log(if (v > m) m^2 / (v - m) else 100), stats::qlogis(0.1))
  init <- pmin(pmax(init, lower), upper)
  parts <- function(p) {
    mu <- exp(p[1]); th <- exp(p[2])
    list(mu = mu, th = th, pi = stats::plogis(p[3]), l0 = th * (log(th) - log(th + mu)))
  }
  loglik <- function(q) {
    nb <- lgamma(yv + q$th) - lgamma(q$th) - lgamma(yv + 1) + q$th * log(q$th) - (q$th + yv) * log(q$th + q$mu) +
      yv * log(q$mu)
    n0 * log(q$pi + (1 - q$pi) * exp(q$l0)) + (n - n0) * log1p(-q$pi) + sum(w * nb)
  }
  fn <- function(p) -loglik(parts(p)) / n
  gr <- function(p) {
    q <- parts(p)
    mu <- q$mu; th <- q$th
    p0 <- exp(q$l0)
    d <- q$pi + (1 - q$pi) * p0
    w0 <- n0 * (1 - q$pi) * p0 / d  # zeros, weighted by how much the NB explains them
    ga <- sum(w * th * (yv - mu) / (th + mu)) - w0 * th * mu / (th + mu)
    gb <- th * sum(w * (digamma(yv + th) - digamma(th) + log(th) + 1 - log(th + mu) - (th + yv) / (th + mu))) +
      w0 * th * (log(th / (th + mu)) + mu / (th + mu))
    gc <- -(n - n0) * q$pi + n0 * q$pi * (1 - q$pi) * (1 - p0) / d
    -c(ga, gb, gc) / n
  }
  opt <- stats::optim(init, fn, gr, method = "L-BFGS-B", lower = lower, upper = upper,
                      control = list(maxit = max_iter, factr = 1e5))
  q <- parts(opt$par)
  # A line search that stops at a bound (theta at 1e5: Poisson counts) still
  # ends at the optimum when the gradient projected on the bounds vanishes.
  g <- gr(opt$par)
  g[(opt$par <= lower & g > 0) | (opt$par >= upper & g < 0)] <- 0
  converged <- opt$convergence == 0 || max(abs(g)) < 1e-5
  list(mu = q$mu, theta = q$th, pi = q$pi, loglik = loglik(q), convergence = if (converged) 0L else 1L)
}

#' @export
print.popflow_zinb <- function(x, ...) {
  cat(sprintf("ZINB fit of %d genes to %d cells (log-likelihood %.6g%s)\n", nrow(x), attr(x, "n_cells"),
              sum(x$loglik), if (identical(attr(x, "convergence"), 0L)) "" else "; not converged: raise max_iter"))
  print(utils::head(as.data.frame(unclass(x), stringsAsFactors = FALSE), 10), digits = 4)
  if (nrow(x) > 10) cat(sprintf("... %d more genes\n", nrow(x) - 10))
  invisible(x)
}

# Raw counts as a dense cells x genes matrix of whole numbers >= 0.
count_matrix <- function(counts) {
  if (inherits(counts, "Matrix")) counts <- as.matrix(counts)
  if (is.data.frame(counts) && all(vapply(counts, is.numeric, logical(1)))) counts <- as.matrix(counts)
  if (!is.matrix(counts) || !is.numeric(counts)) {
    pf_abort("counts", "must be a numeric matrix of raw counts, cells in rows and genes in columns",
             "convert it with as.matrix(); for a SingleCellExperiment use t(counts(sce))[, genes]")
  }
  if (nrow(counts) < 2) pf_abort("counts", "has fewer than two cells", "give the counts of many cells")
  if (anyNA(counts) || any(!is.finite(counts))) pf_abort("counts", "contains NA, NaN or infinite values", "drop or fix those cells")
  if (any(counts < 0) || any(counts != round(counts))) {
    pf_abort("counts", "must hold whole numbers >= 0 (raw counts), not normalised values",
             "give raw counts; for log2(count / s + 1) data the counts are (2^x - 1) * s")
  }
  storage.mode(counts) <- "double"
  counts
}

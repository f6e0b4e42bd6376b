# Small helpers used across the package.

`%||%` <- function(a, b) if (is.null(a)) b else a

# Evaluates `expr` with R's random numbers seeded, leaving the caller's stream as it was.
with_seed <- function(seed, expr) {
  old <- if (exists(".Random.seed", globalenv())) get(".Random.seed", globalenv()) else NULL
  on.exit(if (is.null(old)) rm(".Random.seed", envir = globalenv()) else assign(".Random.seed", old, globalenv()))
  set.seed(seed)
  expr
}

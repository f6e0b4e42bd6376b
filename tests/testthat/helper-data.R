# Small, fast problems shared by the tests.
shifted_pair <- function(n = 300, shift = c(3, 0), seed = 1) {
  set.seed(seed)
  source <- matrix(rnorm(2 * n), ncol = 2)
  list(source = source, target = sweep(matrix(rnorm(2 * n), ncol = 2), 2, shift, "+"))
}

quick_training <- function(steps = 300, ...) TrainingParam(steps = steps, batch_size = 128, ...)

# Brute-force optimal assignment cost over all permutations (small n only).
brute_assignment <- function(cost) {
  perms <- function(v) {
    if (length(v) <= 1) return(list(v))
    out <- list()
    for (i in seq_along(v)) for (p in perms(v[-i])) out[[length(out) + 1]] <- c(v[i], p)
    out
  }
  n <- nrow(cost)
  min(vapply(perms(seq_len(n)), function(p) sum(cost[cbind(seq_len(n), p)]), numeric(1)))
}

sq_dists <- function(x, y) outer(rowSums(x^2), rowSums(y^2), "+") - 2 * x %*% t(y)

# evaluateFlow()'s metric columns, and pieces of its baselines written out
# for direct checks: the noise floor's split (half a = sample.int(n, n %/% 2)
# drawn with the seed, sorted; half b the rest) and a shift of every cell.
metric_names <- c("W1", "W2", "MMD", "energy", "mean_R2", "corr_r")
halves <- function(n, seed = 1) {
  set.seed(seed)
  a <- sort(sample.int(n, n %/% 2))
  list(a = a, b = setdiff(seq_len(n), a))
}
shift_by <- function(x, s) x + matrix(s, nrow(x), ncol(x), byrow = TRUE)

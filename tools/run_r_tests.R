# Runs the testthat suite against the installed package and prints the closing
# count line, adding the C++ counts passed as arguments.
args <- as.integer(commandArgs(trailingOnly = TRUE))
cpp <- if (length(args) == 2) args else c(0L, 0L)
suppressPackageStartupMessages({
  library(testthat)
  library(popflow)
})
res <- as.data.frame(test_dir("tests/testthat", reporter = ProgressReporter$new(show_praise = FALSE),
                              stop_on_failure = FALSE, package = "popflow", load_package = "installed"))
failed <- sum(res$failed > 0 | res$error)
skipped <- sum(res$skipped & !(res$failed > 0 | res$error))
passed <- nrow(res) - failed - skipped
cat(sprintf("\nR tests: %d passed, %d failed, %d skipped; C++ tests: %d passed, %d failed\n",
            passed, failed, skipped, cpp[1], cpp[2]))
cat(sprintf("%d passed, %d failed, %d skipped\n", passed + cpp[1], failed + cpp[2], skipped))
quit(status = if (failed + cpp[2] > 0) 1 else 0)

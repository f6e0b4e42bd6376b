# R CMD check runs this file. When POPFLOW_TEST_RESULTS names a file (tools/test.sh
# sets it), the counts of test_that() blocks are also written there as one line
# "N passed, N failed, N skipped" (a block with any failure or error counts as
# failed), and a failure still makes this script, and so the check, fail.
library(testthat)
library(popflow)

results_file <- Sys.getenv("POPFLOW_TEST_RESULTS")
if (!nzchar(results_file)) {
  test_check("popflow")
} else {
  res <- as.data.frame(test_check("popflow", stop_on_failure = FALSE))
  failed <- res$failed > 0 | res$error
  skipped <- res$skipped & !failed
  writeLines(sprintf("%d passed, %d failed, %d skipped", sum(!failed & !skipped), sum(failed), sum(skipped)),
             results_file)
  if (any(failed)) stop("test failures: ", paste(unique(res$test[failed]), collapse = "; "), call. = FALSE)
}

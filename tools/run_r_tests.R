# A shortcut for development, not used by tools/test.sh (there R CMD check runs
# the testthat suite): runs tests/testthat against the popflow installed in the
# library path (e.g. R_LIBS=build/check/lib Rscript tools/run_r_tests.R) and prints
# the closing count line, one entry per test_that() block, adding the counts of
# other suites passed as arguments, each "name:passed:failed:skipped"
# (e.g. "C++ tests:12:0:0").
suites <- lapply(strsplit(commandArgs(trailingOnly = TRUE), ":", fixed = TRUE), function(s) {
  n <- suppressWarnings(as.integer(s[-1]))
  if (length(s) != 4 || anyNA(n)) stop("expected name:passed:failed:skipped, not ", paste(s, collapse = ":"))
  list(name = s[1], n = n)
})
suppressPackageStartupMessages({
  library(testthat)
  library(popflow)
})
res <- as.data.frame(test_dir("tests/testthat", reporter = ProgressReporter$new(show_praise = FALSE),
                              stop_on_failure = FALSE, package = "popflow", load_package = "installed"))
failed <- sum(res$failed > 0 | res$error)
skipped <- sum(res$skipped & !(res$failed > 0 | res$error))
suites <- c(list(list(name = "R tests", n = c(nrow(res) - failed - skipped, failed, skipped))), suites)
cat("\n", paste(vapply(suites, function(s) sprintf("%s: %d passed, %d failed, %d skipped", s$name, s$n[1], s$n[2],
                                                   s$n[3]), character(1)), collapse = "; "), "\n", sep = "")
total <- Reduce(`+`, lapply(suites, `[[`, "n"))
cat(sprintf("%d passed, %d failed, %d skipped\n", total[1], total[2], total[3]))
quit(status = if (total[2] > 0) 1 else 0)

# blasInfo() and the startup advice (R/popflow-package.R, src/core/blas_kernels.cpp).

test_that("blasInfo() reports this session's BLAS kernels and what to set", {
  info <- blasInfo()
  expect_named(info, c("library", "config", "kernels", "cpu", "suggested_coretype"))
  expect_true(all(vapply(info, function(x) is.character(x) && length(x) == 1, logical(1))))
  expect_true(info$cpu %in% c("avx512", "avx2", NA))
  if (is.na(info$library)) {
    expect_true(is.na(info$kernels) && is.na(info$suggested_coretype))
  } else {
    expect_identical(info$library, "OpenBLAS")
    expect_false(is.na(info$kernels))
  }
  # Set at start, OPENBLAS_CORETYPE is what runs, and nothing is left to advise.
  forced <- Sys.getenv("OPENBLAS_CORETYPE")
  if (nzchar(forced) && !is.na(info$kernels) && grepl("DYNAMIC_ARCH", info$config) && !is.na(info$cpu)) {
    expect_identical(tolower(info$kernels), tolower(forced))
    expect_true(is.na(info$suggested_coretype))
  }
})

test_that("the startup advice names the kernels, the variable to set and where", {
  info <- list(library = "OpenBLAS", config = "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Prescott MAX_THREADS=64",
               kernels = "Prescott", cpu = "avx512", suggested_coretype = "SkylakeX")
  advice <- popflow:::blas_advice(info)
  expect_match(advice, "OpenBLAS 0.3.21 does not recognise this CPU", fixed = TRUE)
  expect_match(advice, "'Prescott' kernels", fixed = TRUE)
  expect_match(advice, "AVX-512", fixed = TRUE)
  expect_match(advice, "export OPENBLAS_CORETYPE=SkylakeX", fixed = TRUE)
  expect_null(popflow:::blas_advice(modifyList(info, list(suggested_coretype = NA_character_))))
  expect_match(popflow:::blas_advice(modifyList(info, list(cpu = "avx2", suggested_coretype = "Haswell"))),
               "AVX2 kernels. Set OPENBLAS_CORETYPE=Haswell", fixed = TRUE)
})

test_that("OPENBLAS_CORETYPE in the environment that starts R picks the kernels popflow runs", {
  skip_if_not_installed("callr")
  info <- blasInfo()
  if (is.na(info$library) || !grepl("DYNAMIC_ARCH", info$config) || is.na(info$cpu)) {
    skip("this BLAS's kernels cannot be chosen at start (not a DYNAMIC_ARCH OpenBLAS, or no AVX2)")
  }
  libs <- unique(c(dirname(find.package("popflow")), .libPaths()))
  # The child inherits this process's environment: OPENBLAS_CORETYPE is removed there first
  # (even empty, the variable counts as set) and given only where `coretype` is not NA.
  saved <- Sys.getenv("OPENBLAS_CORETYPE", unset = NA)
  Sys.unsetenv("OPENBLAS_CORETYPE")
  on.exit(if (!is.na(saved)) Sys.setenv(OPENBLAS_CORETYPE = saved))
  run <- function(coretype) {
    env <- c(callr::rcmd_safe_env(), OMP_WAIT_POLICY = "passive")
    if (!is.na(coretype)) env[["OPENBLAS_CORETYPE"]] <- coretype
    callr::r(function() {
      msg <- character()
      withCallingHandlers(suppressWarnings(library(popflow)),
                          packageStartupMessage = function(m) {
                            msg <<- c(msg, conditionMessage(m))
                            invokeRestart("muffleMessage")
                          })
      list(info = popflow::blasInfo(), startup = msg)
    }, libpath = libs, env = env)
  }
  haswell <- run("Haswell")
  expect_identical(haswell$info$kernels, "Haswell")
  expect_true(is.na(haswell$info$suggested_coretype))
  expect_false(any(grepl("OPENBLAS_CORETYPE", haswell$startup)))
  # Left to choose, OpenBLAS picks its own; where those are generic, attaching popflow says what to set.
  own <- run(NA)
  expect_identical(own$info$library, info$library)
  if (!is.na(own$info$suggested_coretype)) {
    expect_true(any(grepl(paste0("export OPENBLAS_CORETYPE=", own$info$suggested_coretype), own$startup, fixed = TRUE)))
  } else {
    expect_false(any(grepl("OPENBLAS_CORETYPE", own$startup)))
  }
})

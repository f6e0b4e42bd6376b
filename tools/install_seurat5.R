# SeuratObject 5 (CRAN) in a library of its own, so that popflow's tests run
# the Seurat v5 paths (Assay5, split layers) in a separate R process while the
# main suite keeps Debian's SeuratObject 4 (tools/install.sh calls this).
#   usage: Rscript tools/install_seurat5.R [LIB]
#   LIB: default $POPFLOW_SEURAT5_LIB, else /opt/popflow-seurat5 (where
#        tests/testthat/test-seurat5.R looks).
# Idempotent: a library whose SeuratObject >= 5 loads is left as it is (about 2 s).
# R 4.2: SeuratObject 5 needs Matrix >= 1.6-4 and CRAN's current Matrix needs
# R >= 4.4, so Matrix 1.6-5 (the last 1.6 release) comes from CRAN's archive.
# Everything else it needs and Debian lacks (spam, dotCall64) comes from CRAN.
args <- commandArgs(trailingOnly = TRUE)
lib <- if (length(args)) args[1] else Sys.getenv("POPFLOW_SEURAT5_LIB", "/opt/popflow-seurat5")
dir.create(lib, recursive = TRUE, showWarnings = FALSE)
.libPaths(c(lib, .libPaths()))

usable <- function() {
  ok <- tryCatch(packageVersion("SeuratObject", lib.loc = lib) >= "5.0.0", error = function(e) FALSE)
  ok && isTRUE(tryCatch(callr::r(function() {
    suppressPackageStartupMessages(requireNamespace("SeuratObject", quietly = TRUE)) &&
      packageVersion("SeuratObject") >= "5.0.0"
  }, libpath = .libPaths()), error = function(e) FALSE))
}
if (usable()) {
  cat(sprintf("popflow: SeuratObject %s present in %s\n", packageVersion("SeuratObject", lib.loc = lib), lib))
  quit(status = 0)
}

start <- Sys.time()
repos <- getOption("repos")
if (is.null(repos) || !("CRAN" %in% names(repos)) || !nzchar(repos[["CRAN"]]) || repos[["CRAN"]] == "@CRAN@") {
  stop("no CRAN mirror set in options(repos); set one (Debian's Rprofile.site does) and re-run", call. = FALSE)
}
cran <- repos[["CRAN"]]
options(Ncpus = as.integer(Sys.getenv("POPFLOW_NCPUS", "2")))
have <- function(pkg, version) {
  tryCatch(packageVersion(pkg, lib.loc = .libPaths()) >= version, error = function(e) FALSE)
}
if (!have("Matrix", "1.6.4")) {
  install.packages(sprintf("%s/src/contrib/Archive/Matrix/Matrix_1.6-5.tar.gz", cran), lib = lib, repos = NULL,
                   type = "source", quiet = TRUE)
}
# Missing dependencies only (Debian's future, sp, Rcpp, RcppEigen... are used as they are).
install.packages("SeuratObject", lib = lib, repos = cran, dependencies = c("Depends", "Imports", "LinkingTo"),
                 quiet = TRUE)
if (!usable()) stop(sprintf("SeuratObject 5 did not install into %s: see the messages above", lib), call. = FALSE)
cat(sprintf("popflow: SeuratObject %s installed into %s in %.0f s\n", packageVersion("SeuratObject", lib.loc = lib),
            lib, as.numeric(difftime(Sys.time(), start, units = "secs"))))

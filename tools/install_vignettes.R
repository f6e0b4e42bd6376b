# Knits the vignettes against an installed popflow and installs them into it,
# as installing a built tarball would (doc/ with the HTML, sources and R code,
# Meta/vignette.rds, doc/index.html), so that vignette("getting-started",
# package = "popflow") works after tools/install.sh. Installing from the
# source folder builds no vignettes, and R CMD build would compile the package
# a second time to knit them; this knits once against the installation.
#   usage: Rscript tools/install_vignettes.R <library folder>
# (run from the repository root; the package is read from that library)
args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1 || !dir.exists(file.path(args[1], "popflow"))) {
  stop("usage: Rscript tools/install_vignettes.R <library folder holding popflow>", call. = FALSE)
}
lib <- normalizePath(args[1])
.libPaths(c(lib, .libPaths()))
pkgdir <- file.path(lib, "popflow")
src <- tempfile("popflow-vignettes-")
dir.create(src)
on.exit(unlink(src, recursive = TRUE), add = TRUE)
stopifnot(all(file.copy(c("DESCRIPTION", "vignettes"), src, recursive = TRUE)))
Sys.setenv(R_LIBS = paste(.libPaths(), collapse = .Platform$path.sep))  # the knitting processes find the same popflow
tools::buildVignettes(dir = src, tangle = TRUE, quiet = TRUE)
vigns <- tools::pkgVignettes(dir = src, output = TRUE, source = TRUE)
dir.create(file.path(pkgdir, "doc"), showWarnings = FALSE)
files <- unique(c(vigns$docs, vigns$outputs, unlist(vigns$sources)))
stopifnot(all(file.copy(files, file.path(pkgdir, "doc"), overwrite = TRUE)))
dir.create(file.path(src, "build"), showWarnings = FALSE)
saveRDS(tools:::.build_vignette_index(vigns), file.path(src, "build", "vignette.rds"), version = 2L)
unlink(file.path(pkgdir, "doc", "index.html"))
tools:::.install_package_vignettes3(src, pkgdir)  # Meta/vignette.rds and doc/index.html, as R CMD INSTALL writes them
cat(sprintf("popflow: installed %d vignette(s): %s\n", length(vigns$docs),
            paste(tools::file_path_sans_ext(basename(vigns$docs)), collapse = ", ")))

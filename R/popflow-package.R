#' popflow: flow matching for cell population dynamics
#'
#' popflow learns how cell populations move (control to treated, one time
#' point to the next) with the flow-matching family of generative models, in a
#' C++ engine on LibTorch. Start with [fitFlow()], then [predict()],
#' [sampleTrajectories()] and [evaluateFlow()]; see the vignettes
#' `vignette("getting-started", package = "popflow")` (every method on small
#' data) and `vignette("trajectories", package = "popflow")` (EMT time course).
#'
#' @keywords internal
#' @useDynLib popflow, .registration = TRUE
#' @importFrom Rcpp sourceCpp
#' @importFrom stats predict
#' @importFrom methods as
"_PACKAGE"

#' Is CUDA available to popflow?
#'
#' @return `TRUE` when the LibTorch popflow was built against can use a CUDA
#'   device, so `device = "cuda"` works. `FALSE` both where that LibTorch has
#'   no CUDA and where it has but no GPU and driver are visible; the error of
#'   `device = "cuda"` then says which.
#' @examples
#' cudaAvailable()
#' @export
cudaAvailable <- function() pf_cuda_available()

#' Which matrix-product kernels popflow's BLAS runs
#'
#' popflow's training and prediction spend most of their time in matrix
#' products, which LibTorch hands to its BLAS. An OpenBLAS built for many CPUs
#' (Debian's and Ubuntu's) picks its kernels from the CPU's model number when it
#' loads; a release older than the CPU does not know the model and falls back to
#' generic SSE kernels ("Prescott"). On a 5th-generation Xeon with Debian 12's
#' OpenBLAS 0.3.21, popflow's training steps ran 2.3-4x slower that way, and
#' prediction 2.4x, than with the CPU's AVX-512 kernels (`OPENBLAS_CORETYPE=SkylakeX`);
#' R's own products too. popflow says so when it is attached.
#'
#' OpenBLAS reads `OPENBLAS_CORETYPE` once, when it loads: when R starts (where
#' R's BLAS is OpenBLAS), before `~/.Renviron` is read. Set it in the
#' environment that starts R (`export OPENBLAS_CORETYPE=SkylakeX` in
#' `~/.profile` or in the job script), then restart R. `tools/setup.sh` and
#' `tools/test.sh` set it for their own runs where it is needed.
#'
#' @return A list: `library` ("OpenBLAS", or `NA` for another BLAS such as MKL),
#'   `config` (OpenBLAS's description of itself), `kernels` (the kernels in use),
#'   `cpu` (this CPU's widest vector set with OpenBLAS kernels: "avx512", "avx2"
#'   or `NA`) and `suggested_coretype` (the `OPENBLAS_CORETYPE` to set, or `NA`
#'   when the kernels fit the CPU or cannot be changed).
#' @examples
#' blasInfo()
#' @export
blasInfo <- function() {
  k <- pf_blas_kernels()
  na_if_empty <- function(x) if (nzchar(x)) x else NA_character_
  list(library = na_if_empty(k$library), config = na_if_empty(k$config), kernels = na_if_empty(k$core),
       cpu = na_if_empty(k$cpu_isa), suggested_coretype = na_if_empty(k$suggested_coretype))
}

# The startup message for `info` (blasInfo()), or NULL when there is nothing to do.
blas_advice <- function(info) {
  if (is.na(info$suggested_coretype)) return(NULL)
  version <- if (is.na(info$config)) info$library else sub("^(\\S+ \\S+).*", "\\1", info$config)
  cpu <- c(avx512 = "AVX-512", avx2 = "AVX2")[[info$cpu]]
  sprintf(paste0("popflow: %s does not recognise this CPU and runs its generic '%s' kernels, so matrix ",
                 "products (popflow's training and prediction, R's own) run several times slower than with ",
                 "the CPU's %s kernels. Set OPENBLAS_CORETYPE=%s in the environment that starts R ",
                 "(`export OPENBLAS_CORETYPE=%s` in ~/.profile or the job script; ~/.Renviron is read too ",
                 "late) and restart R. See ?blasInfo."),
          version, info$kernels, cpu, info$suggested_coretype, info$suggested_coretype)
}

.onAttach <- function(libname, pkgname) {
  advice <- tryCatch(blas_advice(blasInfo()), error = function(e) NULL)
  if (!is.null(advice)) packageStartupMessage(advice)
}

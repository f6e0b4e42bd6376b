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
#'   device, so `device = "cuda"` works.
#' @examples
#' cudaAvailable()
#' @export
cudaAvailable <- function() pf_cuda_available()

#' EMT time course (built-in data)
#'
#' A549 cells undergoing TGF-beta induced epithelial-mesenchymal transition
#' (Cook & Vanderhyden 2020), as the 10-dimensional embedding distributed with
#' the DeepRUOT repository (MIT licence): 3,133 cells at four time points
#' (0, 1, 2, 3 with 577, 885, 788 and 883 cells).
#'
#' @return A list with `x` (a 3133 x 10 matrix) and `time` (integer time point per cell).
#' @examples
#' emt <- emtTimecourse()
#' table(emt$time)
#' @export
emtTimecourse <- function() {
  path <- system.file("extdata", "emt_timecourse.csv.gz", package = "popflow", mustWork = TRUE)
  df <- utils::read.csv(path)
  x <- as.matrix(df[, grep("^x[0-9]+$", names(df))])
  list(x = x, time = as.integer(df$samples))
}

library(testthat)
library(popflow)
test_check("popflow")

# Models saved before population models were renamed (class "popflow_meta",
# R fields with model_kind "meta", methods without a family class; see
# fixtures/make-old-models.R) load, predict as they did, and resume.

old <- readRDS(test_path("fixtures", "old-expected.rds"))
solver <- SolverParam("rk4", steps = 2)
old_predict <- function(fit, nm) {
  if (nm == "otcfm") predict(fit, old$x, solver = solver) else
    predict(fit, old$x, population = old$pop, label = old$lab, solver = solver)
}

test_that("saveRDS objects and saveFlow files of the previous version load and predict as before", {
  for (nm in c("otcfm", "mfm", "cgfm")) {
    for (fit in list(readRDS(test_path("fixtures", sprintf("old-%s.rds", nm))),
                     loadFlow(test_path("fixtures", sprintf("old-%s.popflow", nm))))) {
      expect_s3_class(fit, "popflow_flow")
      expect_equal(old_predict(fit, nm), old$predictions[[nm]], tolerance = 1e-6)
      # Population models now also report their sampling sizes (0: not recorded in older files).
      expect_equal(setdiff(summary(fit)$configuration, c("cells_per_population=0", "populations_per_step=0")),
                   old$config[[nm]])
      expect_output(print(fit), "<popflow flow>")
    }
  }
  mfm <- readRDS(test_path("fixtures", "old-mfm.rds"))
  expect_equal(class(mfm), c("popflow_meta", "popflow_flow"))
  expect_equal(dim(embedPopulations(mfm, old$x, old$pop)), c(2, 4))
  expect_equal(dim(sampleTrajectories(mfm, old$x, times = c(0, 1), population = old$pop, label = old$lab,
                                      solver = solver)), c(120, 2, 2))
  # Its training populations' labels were not recorded: the label mean shift falls back to the mean shift.
  expect_message(ev <- evaluateFlow(mfm, old$x, old$y, population = old$pop, label = old$lab, solver = solver,
                                    max_cells = 50), "does not record its training populations' labels")
  expect_equal(unique(ev$prediction), c("MFM", "no change", "mean shift", "label mean shift", "oracle shift",
                                         "noise floor"))
  back <- loadFlow(test_path("fixtures", "old-mfm.popflow"))
  expect_s3_class(back, c("popflow_population", "popflow_meta", "popflow_flow"), exact = TRUE)
  path <- tempfile(fileext = ".popflow")
  saveFlow(mfm, path)
  expect_equal(old_predict(loadFlow(path), "mfm"), old$predictions$mfm, tolerance = 1e-6)
})

test_that("models of the previous version resume to the uninterrupted result", {
  tr8 <- TrainingParam(steps = 8, batch_size = 32, seed = 2)
  for (nm in c("otcfm", "mfm", "cgfm")) {
    for (resume in list(readRDS(test_path("fixtures", sprintf("old-%s.rds", nm))),
                        test_path("fixtures", sprintf("old-%s.popflow", nm)))) {
      fit <- switch(nm,
        otcfm = fitFlow(old$x, old$y, training = tr8, resume = resume, verbose = FALSE),
        mfm = fitFlow(old$x, old$y, population = c(old$pop, old$pop), label = c(old$lab, old$lab), training = tr8,
                      resume = resume, verbose = FALSE),
        cgfm = fitFlow(old$x, old$y, label = c(old$lab, old$lab), training = tr8, resume = resume, verbose = FALSE))
      # The 4 saved steps' losses come back exactly; the resumed steps to float
      # rounding (the engine's arithmetic changed since: its own SELU kernel).
      # Adam's moments or the step count restored wrongly would move them far more.
      expect_identical(fit$loss[1:4], old$continued[[nm]][1:4])
      expect_equal(fit$loss, old$continued[[nm]], tolerance = 1e-6)
    }
  }
})

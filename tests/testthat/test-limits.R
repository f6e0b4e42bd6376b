# Work that grows with the settings: batches capped at the data, allocations
# the machine cannot give refused in popflow's words, predictions that stop
# on Ctrl-C and report progress; and file errors in popflow's words.

test_that("a batch larger than the data is capped at what the data hold, and the fit says so", {
  d <- shifted_pair(30)
  expect_message(fit <- fitFlow(d$source, d$target, training = TrainingParam(steps = 3, batch_size = 3000)),
                 "batch_size = 3000 is more than the data hold \\(at most 30 cells per snapshot\\): drawing 30")
  expect_equal(fit$training$batch_size, 30L)
  # Groups: the largest block sets the cap; quiet without verbose.
  grp <- rep(c("a", "a", "b"), length.out = 60)
  expect_silent(fit <- fitFlow(d$source, d$target, group = grp, training = TrainingParam(steps = 3, batch_size = 500),
                               verbose = FALSE))
  expect_equal(fit$training$batch_size, max(table(grp[1:30]), table(grp[31:60])))
  # A batch the data can fill is left alone.
  fit <- fitFlow(d$source, d$target, training = TrainingParam(steps = 3, batch_size = 16), verbose = FALSE)
  expect_equal(fit$training$batch_size, 16L)
})

test_that("a step the machine has no memory for is refused before the engine tries it", {
  net <- NetworkParam()
  # 1e5 x 1e5 exact OT: about 300 GB; 1e5-wide network: about 200 GB.
  expect_error(popflow:::check_step_memory(net, TrainingParam(), 2, 0, 1e5, 1e5, "cpu", available = 8e9),
               "`training` asks for about .* GB of memory in one training step \\(an OT coupling of 100000 x 100000 cells.*\\n  Fix: lower batch_size")
  expect_error(popflow:::check_step_memory(NetworkParam(width = 1e5), TrainingParam(), 2, 0, 256, 256, "cpu",
                                           available = 8e9),
               "`network` asks for .* \\(a network of width 100000 and depth 3\\).*\\n  Fix: use a narrower network")
  expect_error(popflow:::check_step_memory(net, TrainingParam(), 2, 0, 256, 256, "cpu", available = 8e9), NA)
  expect_error(popflow:::check_step_memory(net, TrainingParam(), 2, 0, 1e5, 1e5, "cuda", available = 8e9), NA)
  expect_error(popflow:::population_step_limits(MFMParam(cells_per_population = 1e5, coupling = "exact"), net,
                                                TrainingParam(), 2, "cpu"),
               "Fix: lower cells_per_population in MFMParam\\(\\)")
  # End to end, before any engine work: a wide network on small data.
  skip_if(isTRUE(popflow:::available_memory() > 1e12), "this machine has more than 1 TB available")
  d <- shifted_pair(30)
  expect_error(fitFlow(d$source, d$target, network = NetworkParam(width = 1e5), verbose = FALSE),
               "`network` asks for about")
})

test_that("an allocation LibTorch cannot make becomes popflow's error, not the allocator's text", {
  # Bypasses the R-side check: a 1e6 x 1e6 cost matrix (4 TB) fails at once
  # under Linux's default overcommit heuristic.
  skip_if_not(identical(tryCatch(readLines("/proc/sys/vm/overcommit_memory"), error = function(e) ""), "0"),
              "needs Linux's default overcommit heuristic")
  d <- shifted_pair(30)
  cfg <- popflow:::fit_config(OTCFMParam(), NetworkParam(width = 8), TrainingParam(steps = 1, batch_size = 1e6),
                              "cpu", 1L, dim = 2L, times = c(0, 1))
  err <- tryCatch(popflow:::pf_fit(rbind(d$source, d$target), rep(0:1, each = 30), integer(0), NULL, cfg, NULL, 1L,
                                   NULL, raw(0)), error = conditionMessage)
  expect_match(err, "^popflow ran out of memory \\(")
  expect_match(err, "Fix: lower what sizes the work: batch_size in TrainingParam\\(\\)")
})

test_that("prediction stops when asked (Ctrl-C) and reports progress", {
  d <- shifted_pair(40)
  fit <- fitFlow(d$source, d$target, method = "icfm", training = quick_training(5), verbose = FALSE)
  handle <- popflow:::flow_handle(fit, NULL)
  cfg <- popflow:::engine_config(SolverParam("rk4", steps = 10))
  seen <- numeric(0)
  res <- popflow:::pf_transport(handle, d$source, c(0, 1), NULL, cfg, 1L, function(f) {
    seen <<- c(seen, f)
    TRUE
  })
  expect_equal(tail(seen, 1), 1)
  expect_equal(res$states[[2]], unname(predict(fit, d$source, solver = SolverParam("rk4", steps = 10))),
               ignore_attr = TRUE)
  # The progress hook saying stop (what a Ctrl-C in R does) ends the solver with R's interrupt.
  stopped <- tryCatch(popflow:::pf_transport(handle, d$source, c(0, 1), NULL, cfg, 1L, function(f) FALSE),
                      interrupt = function(e) "interrupted")
  expect_identical(stopped, "interrupted")
  # Population models too.
  src <- rbind(d$source, d$source + 1)
  pop <- rep(c("p1", "p2"), each = 40)
  mfm <- fitFlow(src, src + 2, population = c(pop, pop), verbose = FALSE,
                 method = MFMParam(k = 5, layers = 1, width = 8, populations_per_step = 2, cells_per_population = 16),
                 training = quick_training(3))
  stopped <- tryCatch(popflow:::pf_population_transport(popflow:::flow_handle(mfm, NULL), src,
                                                        rep(0:1, each = 40), 2L, NULL, NULL, c(0, 1), cfg, 1L,
                                                        function(f) FALSE),
                      interrupt = function(e) "interrupted")
  expect_identical(stopped, "interrupted")
  # The bar itself: drawn once the work has run cli.progress_show_after seconds.
  old <- options(cli.progress_show_after = 0, cli.progress_handlers_only = "logger")
  on.exit(options(old))
  # (cli's logger handler prints a line when a bar is created and when it ends, at 100%.)
  expect_output(predict(fit, d$source, solver = SolverParam("rk4", steps = 10)), "created.*100/100 terminated")
  expect_silent(predict(fit, d$source, solver = SolverParam("rk4", steps = 10), verbose = FALSE))
  expect_output(sampleTrajectories(fit, d$source, times = c(0, 1)), "100/100 terminated")
})

test_that("saving and loading files fails in popflow's words, naming the file and the fix", {
  d <- shifted_pair(30)
  fit <- fitFlow(d$source, d$target, training = quick_training(3), verbose = FALSE)
  folder <- tempfile("popflow-files-")
  expect_error(saveFlow(fit, file.path(folder, "fit.popflow")),
               "`file` is in the folder '.*', which does not exist\\n  Fix: create it first \\(dir.create")
  expect_error(saveFlow(fit, ""), "`file` must be the path of the file to write, not \"\"")
  expect_error(saveFlow(fit, NA_character_), "`file` must be the path of the file to write")
  dir.create(folder)
  expect_error(saveFlow(fit, folder), "`file` is '.*', a folder, not a file\\n  Fix: give a file name inside it")
  if (Sys.info()[["user"]] != "root") {
    Sys.chmod(folder, "0555")
    expect_error(saveFlow(fit, file.path(folder, "fit.popflow")), "`file` cannot be written: no permission")
    Sys.chmod(folder, "0755")
  }
  # A path R cannot open although the folder looks fine: R's reason, in popflow's message.
  expect_error(popflow:::write_bytes(as.raw(1:3), file.path(folder, "no", "fit.popflow")),
               "`file` could not be written to '.*' \\(cannot open file")
  expect_error(TrainingParam(checkpoint_every = 5, checkpoint_file = folder), "`checkpoint_file` is '.*', a folder")

  path <- file.path(folder, "fit.popflow")
  saveFlow(fit, path)
  expect_error(loadFlow(folder), "`file` is '.*', a folder, not a model file\\n  Fix: give a file inside it, e.g. file.path\\(.*fit.popflow")
  expect_error(loadFlow(""), "`file` must be the path of a model file")
  expect_error(loadFlow(file.path(folder, "nope.popflow")), "`file` is '.*nope.popflow', which does not exist")
  rds <- file.path(folder, "fit.rds")
  saveRDS(fit, rds)
  expect_error(loadFlow(rds), "an R data file written by saveRDS\\(\\) that holds a popflow model.*\\n  Fix: read it with readRDS")
  saveRDS(data.frame(a = 1), rds)
  expect_error(loadFlow(rds), "an R data file \\(saveRDS\\(\\)\\) that holds a data.frame, not a popflow model")
  empty <- file.path(folder, "empty.popflow")
  file.create(empty)
  expect_error(loadFlow(empty), "`file` is '.*', an empty file")
  writeLines("hello", file.path(folder, "text.popflow"))
  expect_error(loadFlow(file.path(folder, "text.popflow")), "is not a loadable popflow model")
  expect_equal(predict(loadFlow(path), d$source), predict(fit, d$source))
})

# Population stores (writePopulationStore(), PopulationStore()): tiny stores in tempdir.

store_populations_data <- function(n_pop = 6, n = 40, seed = 1) {
  set.seed(seed)
  means <- matrix(rnorm(2 * n_pop, sd = 2), ncol = 2)
  src <- do.call(rbind, lapply(seq_len(n_pop), function(p) sweep(matrix(rnorm(2 * n), ncol = 2), 2, means[p, ], "+")))
  pop <- rep(sprintf("p%d", seq_len(n_pop)), each = n)
  colnames(src) <- c("PC1", "PC2")
  list(source = src, target = src + 1, population = pop,
       label = data.frame(drug = rep(rep(c("a", "b"), length.out = n_pop), each = n), dose = rep(seq_len(n_pop), each = n)))
}

tiny_mfm <- function(...) {
  do.call(MFMParam, utils::modifyList(list(k = 5, layers = 2, width = 8, populations_per_step = 3,
                                           cells_per_population = 16), list(...)))
}

# The engine's fit on a store, with its graph statistics (what fitFlow() does, without the model object).
engine_store_fit <- function(store, steps, graph_cache_mb, method = tiny_mfm()) {
  cfg <- fit_config(method, NetworkParam(), TrainingParam(steps = steps, seed = 1), "cpu", 1L, dim = store$dim,
                    times = c(0, 1), population = list(graph_seed = 1, label_levels = integer(0), covariates = 0L))
  res <- pf_population_fit(matrix(numeric(0), 0, store$dim), integer(0), integer(0), NULL, NULL, cfg, NULL, 1L, NULL,
                           raw(0), NULL, store = store$path, graph_cache_mb = graph_cache_mb)
  list(loss = res$loss, stats = attr(res, "graph_stats"))
}

test_that("a store keeps the cells, offsets, populations and labels written, in any row order", {
  d <- store_populations_data()
  file <- tempfile(fileext = ".pfstore")
  # Rows shuffled and written 7 at a time: each lands in its population's block, in input order within it.
  perm <- sample(nrow(d$source))
  lab <- rbind(d$label, d$label)
  store <- writePopulationStore(d$source[perm, ], file, target = d$target, population = c(d$population[perm], d$population),
                                label = lab[c(perm, nrow(d$source) + seq_len(nrow(d$target))), ], chunk_rows = 7)
  expect_s3_class(store, "popflow_store")
  expect_equal(store$dim, 2L)
  expect_equal(store$cells, 2 * nrow(d$source))
  expect_equal(store$features, c("PC1", "PC2"))
  pops <- store$populations
  expect_equal(pops$population, unique(d$population[perm]))
  expect_equal(pops$source_cells, rep(40, 6))
  expect_equal(store$blocks$first, c(0, cumsum(store$blocks$cells))[seq_len(12)])
  expect_equal(store$labels$drug, c(a = "a", b = "b")[d$label$drug[match(pops$population, d$population)]], ignore_attr = TRUE)
  expect_true(is.numeric(store$labels$dose))
  for (p in c(1, 4)) {
    name <- pops$population[p]
    src <- pf_store_read(store$path, pops$source_block[p])
    expect_equal(src, unname(d$source[perm, ][d$population[perm] == name, ]), tolerance = 1e-6)
    tgt <- pf_store_read(store$path, pops$target_block[p])
    expect_equal(tgt, unname(d$target[d$population == name, ]), tolerance = 1e-6)
    expect_equal(store$block_means[pops$source_block[p] + 1, ], colMeans(src), tolerance = 1e-6)
  }
  expect_silent(PopulationStore(file, verify = TRUE))
  expect_output(print(store), "480 cells x 2 features")
  expect_equal(nrow(summary(store)), 6)
})

test_that("shared controls are stored once and give one source block", {
  set.seed(2)
  ctrl <- matrix(rnorm(120), ncol = 2)
  treated <- rbind(ctrl[1:30, ] + 2, ctrl[31:60, ] - 2, ctrl[1:30, ] * 2)
  file <- tempfile()
  store <- writePopulationStore(ctrl, file, target = treated,
                                population = c(rep(c("dmso1", "dmso2"), each = 30), rep(c("d1", "d2", "d3"), each = 30)),
                                controls = c(d1 = "dmso1", d2 = "dmso1", d3 = "dmso2"))
  expect_equal(store$cells, 60 + 90)  # the 60 control cells once
  expect_equal(nrow(store$blocks), 2 + 3)
  expect_equal(store$populations$source_block, c(0L, 0L, 1L))
  expect_equal(file.size(file), store$file_bytes)
  expect_output(print(store), "shared controls")
  fit <- fitFlow(store, method = tiny_mfm(k = 4), training = TrainingParam(steps = 20, seed = 3), verbose = FALSE)
  expect_equal(fit$populations$source_cells, c(30, 30, 30))
  expect_equal(unname(fit$n_cells), c(60, 90))
  # One graph per control set, not per population.
  expect_equal(engine_store_fit(store, 20, 0, tiny_mfm(k = 4))$stats[["graphs_built"]], 2)
  expect_error(writePopulationStore(ctrl, tempfile(), target = treated, population = c(rep("c", 60), rep("d", 90)),
                                    controls = c(e = "c")), "`controls` does not name the control set of population 'd'")
  expect_error(writePopulationStore(ctrl, tempfile(), target = treated, population = c(rep("c", 60), rep("d", 90)),
                                    controls = c(d = "zz")), "`controls` names the control set 'zz'")
})

test_that("a fit from a store equals the fit from the same cells in memory; the graph cap changes nothing", {
  d <- store_populations_data()
  pop <- c(d$population, d$population)
  tr <- TrainingParam(steps = 30, seed = 5)
  mem <- fitFlow(d$source, d$target, population = pop, label = rbind(d$label, d$label), method = tiny_mfm(),
                 training = tr, verbose = FALSE)
  file <- tempfile()
  store <- writePopulationStore(d$source, file, target = d$target, population = pop, label = rbind(d$label, d$label))
  disk <- fitFlow(store, label = c("drug", "dose"), method = tiny_mfm(), training = tr, verbose = FALSE)
  expect_equal(disk$loss, mem$loss, tolerance = 1e-6)
  expect_equal(disk$population_means, mem$population_means, tolerance = 1e-6)
  expect_equal(disk$time_means, mem$time_means, tolerance = 1e-6, ignore_attr = TRUE)
  # A cap far below one graph: every step rebuilds its graphs, and the loss is the same.
  capped <- fitFlow(store, label = c("drug", "dose"), method = tiny_mfm(graph_cache_mb = 1e-4), training = tr,
                    verbose = FALSE)
  expect_equal(capped$loss, mem$loss, tolerance = 1e-6)
  # Predictions from the store equal those from the cells.
  solver <- SolverParam("euler", steps = 4)
  p_store <- predict(disk, store, population = c("p2", "p5"), solver = solver, verbose = FALSE)
  rows <- d$population %in% c("p2", "p5")
  p_mem <- predict(mem, d$source[rows, ], population = d$population[rows], label = d$label[rows, ], solver = solver,
                   verbose = FALSE)
  expect_equal(attr(p_store, "population"), d$population[rows])
  expect_equal(unname(p_store), unname(p_mem), tolerance = 1e-5, ignore_attr = TRUE)
  ev <- evaluateFlow(disk, store, population = "p3", solver = solver, baselines = "mean shift", verbose = FALSE)
  ev_mem <- evaluateFlow(mem, d$source[d$population == "p3", ], d$target[d$population == "p3", ],
                         population = rep("p3", 40), label = d$label[d$population == "p3", ], solver = solver,
                         baselines = "mean shift", verbose = FALSE)
  expect_equal(ev$W2, ev_mem$W2, tolerance = 1e-5)
})

test_that("the engine's graph cache stays under its cap and evicts", {
  d <- store_populations_data(n_pop = 8)
  store <- writePopulationStore(d$source, tempfile(), target = d$target, population = c(d$population, d$population))
  run <- function(mb) engine_store_fit(store, 25, mb)
  free <- run(0)
  one_graph <- free$stats[["cache_peak_bytes"]] / 8  # all 8 graphs kept, equal sizes
  capped <- run(2.5 * one_graph / 2^20)
  expect_equal(free$stats[["graphs_built"]], 8)
  expect_equal(free$stats[["evictions"]], 0)
  expect_gt(capped$stats[["evictions"]], 0)
  expect_gt(capped$stats[["graphs_built"]], 8)
  expect_lte(capped$stats[["cache_peak_bytes"]], 2.5 * one_graph)
  expect_equal(capped$loss, free$loss)
})

test_that("missing, truncated, unsorted and foreign stores are clear errors", {
  d <- store_populations_data(n_pop = 2, n = 10)
  file <- tempfile()
  writePopulationStore(d$source, file, target = d$target, population = c(d$population, d$population))
  expect_error(PopulationStore(file.path(tempdir(), "no-such.pfstore")), "`file` '.*' does not exist")
  expect_error(writePopulationStore(d$source, file, target = d$target, population = c(d$population, d$population)),
               "`file` '.*' exists\n  Fix: give another path, or overwrite = TRUE")
  bytes <- readBin(file, "raw", file.size(file))
  cut <- tempfile()
  writeBin(bytes[seq_len(length(bytes) - 10)], cut)
  expect_error(PopulationStore(cut), "`file` cannot be read as a population store: is truncated.*\n  Fix: the file was cut short")
  foreign <- tempfile()
  saveRDS(d, foreign)
  expect_error(PopulationStore(foreign), "not a popflow population store.*\n  Fix: give a file written by writePopulationStore")
  # A damaged table (e.g. block offsets edited so that the cells are no longer sorted) fails its checksum.
  bad <- bytes
  table_at <- 4096 + 40 * 2 * 4  # 40 cells of 2 float32 features
  bad[table_at + 1] <- as.raw(7)
  damaged <- tempfile()
  writeBin(bad, damaged)
  expect_error(PopulationStore(damaged), "corrupted table.*\n  Fix: the file is damaged")
  # Cells changed: found by verify = TRUE.
  bad <- bytes
  bad[4100] <- as.raw(bitwXor(as.integer(bad[4100]), 1L))
  writeBin(bad, damaged)
  expect_silent(PopulationStore(damaged))
  expect_error(PopulationStore(damaged, verify = TRUE), "corrupted cells")
  store <- PopulationStore(file)
  expect_error(fitFlow(store, method = "otcfm", verbose = FALSE), "`x` is a population store, which only population models")
  expect_error(fitFlow(store, target = d$target, method = tiny_mfm(), verbose = FALSE), "`target` is not used with a population store")
  expect_error(fitFlow(store, label = "drug", method = tiny_mfm(), verbose = FALSE), "`label` names 'drug', which is not a label column")
  expect_error(writePopulationStore(d$source, tempfile(), target = d$target[, 1, drop = FALSE],
                                    population = c(d$population, d$population)), "`target` has 1 features but `x` has 2")
  nan <- d$source
  nan[3, 1] <- NaN
  expect_error(writePopulationStore(nan, tempfile(), target = d$target, population = c(d$population, d$population)),
               "`x` contains NA")
})

test_that("stores are written block by block from DelayedArray and SingleCellExperiment", {
  skip_if_not_installed("DelayedArray")
  d <- store_populations_data(n_pop = 3, n = 20)
  da <- DelayedArray::DelayedArray(d$source)
  file <- tempfile()
  # A delayed matrix is read chunk_rows rows at a time; the store equals the one from the dense matrix.
  from_da <- writePopulationStore(da, file, target = d$target, population = c(d$population, d$population), chunk_rows = 16)
  dense <- writePopulationStore(d$source, tempfile(), target = d$target, population = c(d$population, d$population))
  expect_equal(pf_store_read(from_da$path, 0:5), pf_store_read(dense$path, 0:5))
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(logcounts = matrix(0, 3, 120)),
    colData = S4Vectors::DataFrame(cond = rep(c("ctrl", "stim"), each = 60), sample = c(d$population, d$population),
                                   drug = rep(c("x", "y", "z"), each = 20, times = 2)),
    reducedDims = list(PCA = rbind(d$source, d$target)))
  from_sce <- writePopulationStore(sce, tempfile(), dimred = "PCA", condition = "cond", source_value = "ctrl",
                                   target_value = "stim", population_column = "sample", label_columns = "drug")
  expect_equal(pf_store_read(from_sce$path, 0:5), pf_store_read(dense$path, 0:5))
  expect_equal(from_sce$labels$drug, c("x", "y", "z"))
  expect_error(writePopulationStore(sce, tempfile(), dimred = "UMAP", condition = "cond", source_value = "ctrl",
                                    target_value = "stim", population_column = "sample"), "`dimred` 'UMAP' is not a reducedDim")
})

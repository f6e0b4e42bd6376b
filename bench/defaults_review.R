# The defaults of MFMParam(), NetworkParam() and TrainingParam() against measurements: one setting
# changed at a time from the defaults, on the population-dependent dynamics of simulatePopulations()
# (bench/population_dynamics.R's task: 100 training and 20 unseen test populations x 300 cells),
# MFM with the mean encoder (the cheapest encoder; the GCN scores within its seed spread there).
# Score: W2 between predicted and observed cells of each whole test population, averaged over the
# test populations (evaluateFlow()), with the training seconds. One seed per setting: compare with
# the seed spread of the defaults in bench/results/population_dynamics.csv (W2 sd about 0.04).
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/defaults_review.R
#
# Settings (environment): DR_SEED (1), DR_ONLY (variant names separated by ";"; default all),
# DR_TAG ("": suffix of the output file). Writes bench/results/defaults_review<TAG>.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()
`%||%` <- function(a, b) if (is.null(a)) b else a

seed <- env_int("DR_SEED", 1)
train <- simulatePopulations(populations = 100, cells = 300, seed = seed)
test <- simulatePopulations(populations = 20, cells = 300, seed = 1000 + seed)
pop2 <- rep(train$cells$population, 2)

# name = list(method, network, training): one change from the defaults each.
variants <- list(
  defaults = list(),
  `coupling = "exact"` = list(method = list(coupling = "exact")),
  `coupling = "paired"` = list(method = list(coupling = "paired")),
  `sigma = 0` = list(method = list(sigma = 0)),
  `sigma = 0.5` = list(method = list(sigma = 0.5)),
  `cells_per_population = 256` = list(method = list(cells_per_population = 256)),
  `populations_per_step = 4` = list(method = list(populations_per_step = 4)),
  `network width = 128` = list(network = list(width = 128)),
  `steps = 1000` = list(training = list(steps = 1000)),
  `steps = 4000` = list(training = list(steps = 4000)),
  `lr = 3e-4` = list(training = list(lr = 3e-4)),
  `lr = 3e-3` = list(training = list(lr = 3e-3))
)
only <- Sys.getenv("DR_ONLY", "")
if (nzchar(only)) variants <- variants[strsplit(only, ";")[[1]]]

cat(sprintf("Defaults review on population-dependent dynamics (MFM, mean encoder), seed %d\n%s\n", seed,
            versions_line()))
rows <- lapply(names(variants), function(name) {
  v <- variants[[name]]
  method <- do.call(MFMParam, c(list(encoder = "mean"), v$method))
  network <- do.call(NetworkParam, v$network %||% list())
  training <- do.call(TrainingParam, c(list(seed = seed), v$training))
  t0 <- Sys.time()
  fit <- fitFlow(train$source, train$target, population = pop2, method = method, network = network,
                 training = training, verbose = FALSE)
  seconds <- as.numeric(Sys.time() - t0, units = "secs")
  ev <- evaluateFlow(fit, test$source, test$target, population = test$cells$population, baselines = FALSE)
  row <- data.frame(setting = name, W1 = mean(ev$W1), W2 = mean(ev$W2), train_s = round(seconds))
  print(row)
  row
})
table <- do.call(rbind, rows)
utils::write.csv(table, file.path(RESULTS, sprintf("defaults_review%s.csv", Sys.getenv("DR_TAG"))), row.names = FALSE)
md_table(table)

# Population-dependent dynamics: does a population model predict how an UNSEEN population moves
# when the motion depends on the population as a whole?
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/population_dynamics.R
#   (or: BENCH_ONLY=population_dynamics sh bench/run_all.sh)
#
# Data: simulatePopulations(): every population is a Gaussian cloud around its own centre with its
# own spread; the whole cloud travels 2 units in a direction set by its spread (tight ones along
# +x, wide ones along -x) and contracts or expands about its centre. Centres overlap, so a model
# that sees one cell at a time cannot tell where a cell goes. PD_TRAIN training populations, PD_TEST
# unseen test populations (drawn from the same simulator with another seed), PD_CELLS cells each.
# Rows (each trained for the same number of steps, every setting at its default unless stated):
#   MFM (gcn / mean / kme)       MFMParam(encoder = ...), defaults otherwise
#   OT-CFM within populations    a population-blind flow: OT pairs within each training population
#                                (group = population), one field for all
#   no change, mean shift        source cells; source + the average training shift
#   oracle shift                 source moved onto the true target mean (uses the answer: the
#                                "how far from perfect" marker, not a fair baseline)
#   noise floor                  the observed target cells split in two halves, scored against
#                                each other (what W2 reads between two samples of one population
#                                of half the size)
# (the baselines are evaluateFlow()'s rows, scored once per seed beside the first model).
# Scores: exact W1 and W2 between the predicted and the observed target cells of each whole test
# population, averaged over test populations; then mean ± sd over seeds.
#
# Settings (environment): PD_SEEDS (1,2,3), PD_TRAIN (100), PD_TEST (20), PD_CELLS (300),
# PD_STEPS (TrainingParam()'s default), PD_MODELS (mfm_gcn,mfm_mean,mfm_kme,fm_within),
# PD_JOBS (2: seeds in parallel processes, one thread each), PD_TAG ("": suffix of the output files).
# Writes bench/results/population_dynamics<TAG>_runs.csv and population_dynamics<TAG>.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

seeds <- env_ints("PD_SEEDS", "1,2,3")
n_train <- env_int("PD_TRAIN", 100)
n_test <- env_int("PD_TEST", 20)
n_cells <- env_int("PD_CELLS", 300)
steps <- env_int("PD_STEPS", TrainingParam()$steps)
models <- strsplit(Sys.getenv("PD_MODELS", "mfm_gcn,mfm_mean,mfm_kme,fm_within"), ",")[[1]]
jobs <- env_int("PD_JOBS", 2)
tag <- Sys.getenv("PD_TAG", "")
training <- function(seed) TrainingParam(steps = steps, seed = seed)

fitters <- list(
  mfm_gcn = list(label = "MFM (GCN encoder)", fit = function(d, seed) {
    fitFlow(d$source, d$target, population = d$pop2, method = MFMParam(encoder = "gcn"), training = training(seed),
            verbose = FALSE)
  }),
  mfm_mean = list(label = "MFM (mean encoder)", fit = function(d, seed) {
    fitFlow(d$source, d$target, population = d$pop2, method = MFMParam(encoder = "mean"), training = training(seed),
            verbose = FALSE)
  }),
  mfm_kme = list(label = "MFM (kernel mean embedding)", fit = function(d, seed) {
    fitFlow(d$source, d$target, population = d$pop2, method = MFMParam(encoder = "kme"), training = training(seed),
            verbose = FALSE)
  }),
  fm_within = list(label = "OT-CFM within populations (population-blind)", fit = function(d, seed) {
    fitFlow(d$source, d$target, group = d$pop2, method = "otcfm", training = training(seed), verbose = FALSE)
  })
)

baseline_rows <- c("no change", "mean shift", "oracle shift", "noise floor")

# evaluateFlow()'s rows (model and baselines) of every test population, scored whole; a flow
# has no populations of its own, so it is scored population by population.
evaluate <- function(fit, test, baselines) {
  pop <- test$cells$population
  if (inherits(fit, "popflow_population")) {
    return(evaluateFlow(fit, test$source, test$target, population = pop, baselines = baselines))
  }
  do.call(rbind, lapply(unique(pop), function(p) {
    i <- pop == p
    cbind(population = p, evaluateFlow(fit, test$source[i, , drop = FALSE], test$target[i, , drop = FALSE],
                                       baselines = baselines))
  }))
}

run_seed <- function(seed) {
  train <- simulatePopulations(populations = n_train, cells = n_cells, seed = seed)
  test <- simulatePopulations(populations = n_test, cells = n_cells, seed = 1000 + seed)
  d <- list(source = train$source, target = train$target, pop2 = rep(train$cells$population, 2))
  rows <- lapply(seq_along(models), function(k) {
    m <- models[[k]]
    t0 <- Sys.time()
    fit <- fitters[[m]]$fit(d, seed)
    seconds <- as.numeric(Sys.time() - t0, units = "secs")
    # The baselines do not depend on the model: scored once, beside the first.
    ev <- evaluate(fit, test, if (k == 1) baseline_rows else FALSE)
    is_model <- !(ev$prediction %in% baseline_rows)
    ev$prediction[is_model] <- fitters[[m]]$label
    data.frame(seed = seed, population = ev$population, prediction = ev$prediction, W1 = ev$W1, W2 = ev$W2,
               train_s = ifelse(is_model, seconds, NA))
  })
  do.call(rbind, rows)
}

cat(sprintf("Population-dependent dynamics: %d training and %d unseen test populations x %d cells, %d steps, seeds %s\n%s\n",
            n_train, n_test, n_cells, steps, paste(seeds, collapse = ","), versions_line()))
runs <- if (jobs > 1) {
  parallel::mclapply(seeds, run_seed, mc.cores = min(jobs, length(seeds)))
} else {
  lapply(seeds, run_seed)
}
failed <- vapply(runs, inherits, logical(1), "try-error")
if (any(failed)) stop("a seed failed: ", paste(vapply(runs[failed], as.character, character(1)), collapse = "\n"))
runs <- do.call(rbind, runs)
utils::write.csv(runs, file.path(RESULTS, sprintf("population_dynamics%s_runs.csv", tag)), row.names = FALSE)

per_seed <- stats::aggregate(cbind(W1, W2, train_s) ~ seed + prediction, data = runs, FUN = mean, na.action = na.pass)
order <- c(setdiff(unique(runs$prediction), baseline_rows), intersect(baseline_rows, runs$prediction))
table <- do.call(rbind, lapply(order, function(p) {
  s <- per_seed[per_seed$prediction == p, ]
  data.frame(prediction = p, W1 = mean_sd(s$W1, 3), W2 = mean_sd(s$W2, 3),
             `train s / fit` = if (all(is.na(s$train_s))) "-" else sprintf("%.0f", mean(s$train_s)),
             check.names = FALSE)
}))
utils::write.csv(table, file.path(RESULTS, sprintf("population_dynamics%s.csv", tag)), row.names = FALSE)
md_table(table)
mean_w2 <- function(p) mean(per_seed$W2[per_seed$prediction == p])
blind <- "OT-CFM within populations (population-blind)"
if (blind %in% order) {
  for (p in grep("^MFM", order, value = TRUE)) {
    cat(sprintf("%s: W2 %.2fx the population-blind flow's, %.2fx no change's\n", p, mean_w2(p) / mean_w2(blind),
                mean_w2(p) / mean_w2("no change")))
  }
}

# Letters (the Meta Flow Matching paper's synthetic task): predict how an unseen population moves.
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/letters.R
#   (or: BENCH_ONLY=letters sh bench/run_all.sh)
#
# Populations are capital letters (DejaVu Sans pixels, simulateLetters()) at random rotations;
# target = glyph + N(0, 0.05^2), rotated; source = target + N(0, 0.5^2). Train on 24 letters
# (all but X and Y) x 10 rotations, validate on X, test on the unseen Y (10 rotations each; every
# split drawn with its own seed). Every model denoises each test population from its source cells;
# we report exact W1 and W2 and RBF MMD between the predicted and the observed target cells of
# each population, averaged over the 10 populations (and then mean ± sd over seeds).
# Rows:
#   MFM, k = 0        population encoder without edges (mean / DeepSets encoder)
#   MFM, k = 10 / 50  GCN encoder on the kNN graph of the population's source cells
#   MFM, k = 50, alternating   the reference's alternating encoder / field optimisation
#   CGFM              conditioned on a learnt embedding of the training population id (the
#                     paper's one-hot population condition). Y's populations have no id in
#                     training: as in the reference, they get the average of the training
#                     conditions (predict(unseen_label = "average"): the mean learnt embedding)
#   FM                no conditioning, cells paired within populations (I-CFM; OT-CFM when
#                     LETTERS_COUPLING=exact), all training populations pooled
#   ICNN (CellOT)     CellOT's ICNN baseline (ICNNParam(), lr LETTERS_ICNN_LR): the gradient of an
#                     input-convex potential, one pooled map from all training source to all target
#                     cells (CellOT's setting for unseen populations); as many cells a step as FM
#   no change, mean shift   baselines (source cells; source + average training mean change)
#   oracle shift      source moved onto the true target mean (uses the answer: how far from perfect)
#   noise floor       two random halves of the observed target cells, one against the other
# The paper trains a width-512 decoder for hundreds of thousands of GPU steps; on a 2-core CPU we
# train a smaller field for LETTERS_STEPS steps (see the configuration printed below).
#
# Settings (environment): LETTERS_STEPS (3000), LETTERS_SEEDS (1,2), LETTERS_WIDTH (128),
# LETTERS_DEPTH (3), LETTERS_POPS (populations per step, 4), LETTERS_CELLS (cells per population
# per step, 256), LETTERS_LR (1e-3), LETTERS_MAX_CELLS (graph / embedding cap, 500),
# LETTERS_COUPLING (independent), LETTERS_METHODS (mfm_k0,mfm_k10,mfm_k50,mfm_k50_alt,cgfm,fm; also icnn),
# LETTERS_ICNN_LR (1e-3, ICNNParam()'s default; CellOT's own is 1e-4, made for 100,000 f steps),
# LETTERS_EVAL_CELLS (500: cells per set for W1/W2/MMD, a random subset), LETTERS_JOBS (2: seeds
# trained in parallel processes, one thread each), LETTERS_TAG ("": suffix of the output files).
# Writes bench/results/letters<TAG>_runs.csv (one row per seed x split x population x prediction),
# letters<TAG>.csv (the table) and prints the table.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

steps <- env_int("LETTERS_STEPS", 3000)
seeds <- env_ints("LETTERS_SEEDS", "1,2")
width <- env_int("LETTERS_WIDTH", 128)
depth <- env_int("LETTERS_DEPTH", 3)
pops_per_step <- env_int("LETTERS_POPS", 4)
cells_per_pop <- env_int("LETTERS_CELLS", 256)
lr <- as.numeric(Sys.getenv("LETTERS_LR", "1e-3"))
max_cells <- env_int("LETTERS_MAX_CELLS", 500)
coupling <- Sys.getenv("LETTERS_COUPLING", "independent")
icnn_lr <- as.numeric(Sys.getenv("LETTERS_ICNN_LR", "1e-3"))
eval_cells <- env_int("LETTERS_EVAL_CELLS", 500)
jobs <- env_int("LETTERS_JOBS", 2)
tag <- Sys.getenv("LETTERS_TAG", "")  # suffix of the output files, to keep runs with other settings apart
methods <- strsplit(Sys.getenv("LETTERS_METHODS", "mfm_k0,mfm_k10,mfm_k50,mfm_k50_alt,cgfm,fm"), ",")[[1]]
solver <- SolverParam("dopri5", atol = 1e-4, rtol = 1e-4)
network <- NetworkParam(width = width, depth = depth)
sigma <- 0  # the reference's letters models use straight paths without noise

mfm <- function(k, schedule = "joint") {
  MFMParam(k = k, encoder = if (k == 0) "mean" else "gcn", layers = 3, width = 64,
           populations_per_step = pops_per_step, cells_per_population = cells_per_pop, max_cells = max_cells,
           coupling = coupling, sigma = sigma, schedule = schedule)
}
all_models <- list(
  mfm_k0 = list(label = "MFM, k = 0 (mean encoder)", method = function() mfm(0)),
  mfm_k10 = list(label = "MFM, k = 10 (GCN)", method = function() mfm(10)),
  mfm_k50 = list(label = "MFM, k = 50 (GCN)", method = function() mfm(50)),
  mfm_k50_alt = list(label = "MFM, k = 50 (GCN), alternating", method = function() mfm(50, "alternating")),
  cgfm = list(label = "CGFM (population id; unseen: mean condition)",
              method = function() CGFMParam(populations_per_step = pops_per_step, cells_per_population = cells_per_pop,
                                            coupling = coupling, sigma = sigma, label_dim = 8)),
  fm = list(label = if (coupling == "exact") "FM (OT-CFM, pooled)" else "FM (I-CFM, pooled)", method = NULL),
  icnn = list(label = sprintf("ICNN (CellOT, pooled, lr %g)", icnn_lr), method = function() ICNNParam(lr = icnn_lr))
)
pooled <- c("fm", "icnn")  # one map for all populations, scored population by population
models <- all_models[methods]
if (anyNA(names(models))) stop("LETTERS_METHODS: unknown model; use ", paste(names(all_models), collapse = ","))

train_letters <- setdiff(LETTERS, c("X", "Y"))
counts <- table(simulateLetters(LETTERS, rotations = 1, seed = 1)$cells$letter)
cat("points per letter (DejaVu Sans):", paste(names(counts), counts, sep = ":", collapse = " "), "\n")
cat(sprintf(paste0("config: field MLP %d x %d (SELU, 16-d sinusoidal time embedding), sigma %g, %s coupling ",
                   "within populations; %d steps, Adam lr %g, %d populations x %d cells a step; ",
                   "MFM encoder 3 layers x 64, embeddings on <= %d source cells; dopri5 atol = rtol = 1e-4; ",
                   "metrics on <= %d cells per set; seeds %s; %s\n"),
            width, depth, sigma, coupling, steps, lr, pops_per_step, cells_per_pop, max_cells, eval_cells,
            paste(seeds, collapse = ","), versions_line()))

baseline_model <- setdiff(names(models), pooled)[1]  # scores the baselines (once per seed and split)
baseline_rows <- c("no change", "mean shift", "label mean shift", "oracle shift", "noise floor")

run_seed <- function(s) {
  runs <- list()
  # Each split its own seed, as the reference draws each split separately.
  train <- simulateLetters(train_letters, rotations = 10, seed = 1000 * s + 1)
  splits <- list(val = simulateLetters("X", rotations = 10, seed = 1000 * s + 2),
                 test = simulateLetters("Y", rotations = 10, seed = 1000 * s + 3))
  pop <- rep(train$cells$population, 2)
  training <- TrainingParam(steps = steps, lr = lr, seed = s, batch_size = cells_per_pop,
                            groups_per_step = pops_per_step)
  for (m in names(models)) {
    spec <- models[[m]]
    t0 <- proc.time()[["elapsed"]]
    fit <- if (m == "icnn") {
      fitFlow(train$source, train$target, method = spec$method(), threads = 1L, verbose = FALSE,
              training = TrainingParam(steps = steps, seed = s, batch_size = cells_per_pop * pops_per_step))
    } else if (m == "fm") {
      # Pairs drawn as the population models draw them: independent, or exact OT within a population.
      fm_method <- if (coupling == "exact") OTCFMParam(sigma = sigma) else ICFMParam(sigma = sigma)
      fitFlow(train$source, train$target, group = pop, method = fm_method, network = network,
              training = training, threads = 1L, verbose = FALSE)
    } else if (m == "cgfm") {
      fitFlow(train$source, train$target, population = pop, label = pop, method = spec$method(), network = network,
              training = training, threads = 1L, verbose = FALSE)
    } else {
      fitFlow(train$source, train$target, population = pop, method = spec$method(), network = network,
              training = training, threads = 1L, verbose = FALSE)
    }
    train_s <- proc.time()[["elapsed"]] - t0
    for (split in names(splits)) {
      d <- splits[[split]]
      p <- d$cells$population
      t1 <- proc.time()[["elapsed"]]
      ev <- if (m %in% pooled) {
        # A plain flow moves every cell the same way; scored population by population.
        do.call(rbind, lapply(unique(p), function(q) {
          i <- p == q
          cbind(population = q, evaluateFlow(fit, d$source[i, ], d$target[i, ], solver = solver,
                                             max_cells = eval_cells, baselines = FALSE))
        }))
      } else {
        evaluateFlow(fit, d$source, d$target, population = p, label = if (m == "cgfm") p,
                     unseen_label = "average", solver = solver, max_cells = eval_cells,
                     baselines = m == baseline_model)
      }
      ev$prediction[!ev$prediction %in% baseline_rows] <- spec$label
      runs[[length(runs) + 1]] <- data.frame(seed = s, split = split, ev, train_seconds = train_s,
                                             eval_seconds = proc.time()[["elapsed"]] - t1,
                                             final_loss = mean(utils::tail(fit$loss, 100)))
      cat(sprintf("seed %d %-45s %-4s W1 %.4f W2 %.4f MMD %.5f (train %.0f s, %d steps)\n", s, spec$label, split,
                  mean(ev$W1[ev$prediction == spec$label]), mean(ev$W2[ev$prediction == spec$label]),
                  mean(ev$MMD[ev$prediction == spec$label]), train_s, fit$steps_done))
    }
  }
  do.call(rbind, runs)
}

# Seeds run in parallel processes (forked before any training; each trains on one thread).
runs <- if (jobs > 1 && length(seeds) > 1) parallel::mclapply(seeds, run_seed, mc.cores = jobs) else lapply(seeds, run_seed)
failed <- vapply(runs, function(r) inherits(r, "try-error") || !is.data.frame(r), logical(1))
if (any(failed)) stop("seed(s) ", paste(seeds[failed], collapse = ","), " failed: ", paste(runs[failed], collapse = "; "))
runs <- do.call(rbind, runs)
utils::write.csv(runs, file.path(RESULTS, paste0("letters", tag, "_runs.csv")), row.names = FALSE)

# Per seed: the mean over the split's populations; then mean ± sd over seeds.
per_seed <- stats::aggregate(cbind(W1, W2, MMD, train_seconds) ~ prediction + split + seed, data = runs, FUN = mean)
order <- c(vapply(models, `[[`, "", "label"), baseline_rows)
order <- order[order %in% per_seed$prediction]
tab <- data.frame(method = order, stringsAsFactors = FALSE)
for (split in c("test", "val")) {
  letter <- c(test = "Y", val = "X")[[split]]
  for (metric in c("W1", "W2", "MMD")) {
    tab[[sprintf("%s %s", letter, metric)]] <- vapply(order, function(r) {
      v <- per_seed[[metric]][per_seed$prediction == r & per_seed$split == split]
      mean_sd(v, digits = if (metric == "MMD") 3 else 3, format = if (metric == "MMD") "g" else "f")
    }, "")
  }
}
tab[["train s / fit"]] <- vapply(order, function(r) {
  v <- per_seed$train_seconds[per_seed$prediction == r & per_seed$split == "test"]
  if (r %in% baseline_rows) "-" else sprintf("%.0f", mean(v))
}, "")
utils::write.csv(tab, file.path(RESULTS, paste0("letters", tag, ".csv")), row.names = FALSE)
cat(sprintf(paste0("\n### Letters: unseen letter Y (test) and X (validation), 10 rotations each; mean over the ",
                   "populations, mean ± sd over seeds %s; %d steps\n\n"), paste(seeds, collapse = ","), steps))
md_table(tab)

# Kang IFN-beta PBMC, leave one patient out: predict each held-out patient's stimulated cells
# from their control cells, population by population (patient x cell type).
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/kang_lopo.R
#
# Data: ../shared/data/kang_ifnb_pbmc.csv.gz (9,517 cells x 100 log-normalised genes, patients
# 101, 1015, 107, control / IFN-beta stimulated, 8 cell types). For each held-out patient, a PCA
# (KANG_PCS components) is fitted on the training patients' cells only and the held-out cells
# are projected onto it, so nothing about the held-out patient leaks into the space. Populations
# are patient x cell type with at least KANG_MIN_CELLS control and stimulated cells; a held-out
# population is scored when its cell type is among the training populations.
#
# Rows (all trained on the two other patients, the same network, steps and seed):
#   MFM (GCN, k = KANG_K)   velocity field conditioned on a GCN embedding of the population's
#                           control cells (MFMParam)
#   MFM (mean encoder)      the same without graph edges (DeepSets mean, k = 0)
#   CGFM (cell type)        conditioned on the cell-type label (seen in training)
#   FM                      I-CFM with no conditioning, all training populations pooled
#   ICNN (CellOT; lr ...)   CellOT's ICNN baseline (ICNNParam(): gradient of an input-convex
#                           potential, Makkuva et al.'s min-max), one pooled map from all training
#                           control to all training stimulated cells, as CellOT fits unseen
#                           populations; CellOT's networks, at popflow's default lr 1e-3 and at
#                           CellOT's 1e-4 (made for CellOT's 100,000 f steps, not these 2000 steps)
#   no change               the control cells themselves
#   mean shift              control cells + the mean stimulated-minus-control shift of the same
#                           cell type in the training patients
#   oracle shift            control cells moved onto the held-out population's true stimulated
#                           mean (uses the answer: how far from perfect, not a baseline)
#   noise floor             two random halves of the observed stimulated cells, one against the
#                           other (the metrics' noise at this sample size, from half-size samples)
# Metrics: exact W1, W2 and RBF MMD between predicted and observed stimulated cells in the PCA
# space (all components), per held-out population; the table averages over populations, then
# reports mean ± sd over held-out patients.
#
# Settings (environment): KANG_STEPS (2000), KANG_PCS (20), KANG_K (10), KANG_MIN_CELLS (30),
# KANG_SEED (1), KANG_WIDTH (128), KANG_HOLDOUT (101,1015,107), KANG_METHODS (all: a comma-separated
# subset of the model rows, e.g. "ICNN (CellOT)"; the baselines are always scored), KANG_TAG ("":
# suffix of the output files, to keep runs of a subset apart).
# Writes bench/results/kang_lopo<TAG>_runs.csv (one row per population and method) and kang_lopo<TAG>.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

steps <- env_int("KANG_STEPS", 2000)
n_pcs <- env_int("KANG_PCS", 20)
k <- env_int("KANG_K", 10)
min_cells <- env_int("KANG_MIN_CELLS", 30)
seed <- env_int("KANG_SEED", 1)
width <- env_int("KANG_WIDTH", 128)
holdouts <- strsplit(Sys.getenv("KANG_HOLDOUT", "101,1015,107"), ",")[[1]]
tag <- Sys.getenv("KANG_TAG", "")

kang <- utils::read.csv(file.path(data_dir(), "kang_ifnb_pbmc.csv.gz"), check.names = FALSE)
genes <- as.matrix(kang[, -(1:3)])
kang$population <- paste(kang$patient, kang$cell_type, sep = "/")
counts <- table(kang$population, kang$condition)
keep_pops <- rownames(counts)[counts[, "ctrl"] >= min_cells & counts[, "stim"] >= min_cells]
cat(versions_line(), "\n")
cat(sprintf("Kang PBMC: %d cells x %d genes; %d of %d patient x cell type populations have >= %d control and stimulated cells\n",
            nrow(kang), ncol(genes), length(keep_pops), nrow(counts), min_cells))

network <- NetworkParam(width = width, depth = 3, residual = TRUE, time_dim = 16)
training <- TrainingParam(steps = steps, lr = 1e-3, seed = seed)
methods <- list(
  `MFM (GCN, k = K)` = MFMParam(k = k, layers = 3, width = 64, populations_per_step = 8,
                                cells_per_population = 128, max_cells = 1000),
  `MFM (mean encoder)` = MFMParam(encoder = "mean", layers = 3, width = 64, populations_per_step = 8,
                                  cells_per_population = 128, max_cells = 1000),
  `CGFM (cell type)` = CGFMParam(populations_per_step = 8, cells_per_population = 128),
  FM = ICFMParam(),
  `ICNN (CellOT; lr 1e-3)` = ICNNParam(lr = 1e-3),
  `ICNN (CellOT; lr 1e-4)` = ICNNParam(lr = 1e-4)
)
names(methods)[1] <- sprintf("MFM (GCN, k = %d)", k)
if (nzchar(Sys.getenv("KANG_METHODS"))) {
  chosen <- strsplit(Sys.getenv("KANG_METHODS"), ",")[[1]]
  if (!all(chosen %in% names(methods))) stop("KANG_METHODS: unknown row; use ", paste(names(methods), collapse = ", "))
  methods <- methods[chosen]
}
solver <- SolverParam("dopri5", atol = 1e-4, rtol = 1e-4)

score <- function(pred, obs) {
  c(W1 = wassersteinDistance(pred, obs, p = 1, max_cells = 2000),
    W2 = wassersteinDistance(pred, obs, p = 2, max_cells = 2000),
    MMD = mmdDistance(pred, obs, max_cells = 2000))
}

# `expr` evaluated with R's random numbers seeded, leaving the caller's stream as it was.
seeded <- function(s, expr) {
  old <- if (exists(".Random.seed", globalenv())) get(".Random.seed", globalenv())
  on.exit(if (is.null(old)) rm(".Random.seed", envir = globalenv()) else assign(".Random.seed", old, globalenv()))
  set.seed(s)
  expr
}

runs <- list()
for (held in holdouts) {
  is_train <- kang$patient != held & kang$population %in% keep_pops
  # Test populations of cell types that the training patients also have (CGFM needs the label,
  # the mean-shift baseline the cell type's training shift).
  is_test <- kang$patient == held & kang$population %in% keep_pops & kang$cell_type %in% kang$cell_type[is_train]
  pca <- stats::prcomp(genes[is_train, ], center = TRUE, rank. = n_pcs)
  pcs <- predict(pca, genes)
  tr <- kang[is_train, ]
  src <- is_train & kang$condition == "ctrl"
  tgt <- is_train & kang$condition == "stim"
  cat(sprintf("\n# held-out patient %s: %d training populations (%d control, %d stimulated cells), %d test populations\n",
              held, length(unique(tr$population)), sum(src), sum(tgt), length(unique(kang$population[is_test]))))
  fits <- lapply(names(methods), function(m) {
    started <- Sys.time()
    fit <- if (grepl("^ICNN", m)) {
      # Pooled, as FM: the same cells a step (1024 control and 1024 stimulated cells).
      fitFlow(pcs[src, ], pcs[tgt, ], method = methods[[m]],
              training = TrainingParam(steps = steps, batch_size = 1024, seed = seed), verbose = FALSE)
    } else if (m == "FM") {
      # The same number of cells a step as the population models (8 populations x 128 cells).
      fitFlow(pcs[src, ], pcs[tgt, ], method = methods[[m]], network = network,
              training = TrainingParam(steps = steps, batch_size = 1024, lr = 1e-3, seed = seed), verbose = FALSE)
    } else if (grepl("^CGFM", m)) {
      fitFlow(pcs[src, ], pcs[tgt, ], population = kang$population[c(which(src), which(tgt))],
              label = kang$cell_type[c(which(src), which(tgt))], method = methods[[m]], network = network,
              training = training, verbose = FALSE)
    } else {
      fitFlow(pcs[src, ], pcs[tgt, ], population = kang$population[c(which(src), which(tgt))],
              method = methods[[m]], network = network, training = training, verbose = FALSE)
    }
    cat(sprintf("  %-20s %d steps in %.0f s\n", m, fit$steps_done, as.numeric(Sys.time() - started, units = "secs")))
    fit
  })
  names(fits) <- names(methods)
  for (p in unique(kang$population[is_test])) {
    x0 <- pcs[is_test & kang$population == p & kang$condition == "ctrl", , drop = FALSE]
    x1 <- pcs[is_test & kang$population == p & kang$condition == "stim", , drop = FALSE]
    ct <- kang$cell_type[kang$population == p][1]
    same_type <- tr$cell_type == ct
    shift <- colMeans(pcs[tgt & kang$cell_type == ct, , drop = FALSE]) -
      colMeans(pcs[src & kang$cell_type == ct, , drop = FALSE])
    preds <- lapply(names(fits), function(m) {
      fit <- fits[[m]]
      if (m == "FM" || grepl("^ICNN", m)) return(predict(fit, x0, solver = solver))
      if (grepl("^CGFM", m)) return(predict(fit, x0, population = rep(p, nrow(x0)), label = rep(ct, nrow(x0)), solver = solver))
      predict(fit, x0, population = rep(p, nrow(x0)), solver = solver)
    })
    names(preds) <- names(fits)
    preds[["no change"]] <- x0
    preds[["mean shift (cell type)"]] <- sweep(x0, 2, shift, "+")
    preds[["oracle shift"]] <- sweep(x0, 2, colMeans(x1) - colMeans(x0), "+")
    scores <- lapply(preds, score, obs = x1)
    half <- sort(seeded(seed, sample.int(nrow(x1), nrow(x1) %/% 2)))
    scores[["noise floor"]] <- score(x1[half, , drop = FALSE], x1[-half, , drop = FALSE])
    for (m in names(scores)) {
      runs[[length(runs) + 1]] <- data.frame(holdout = held, population = p, cell_type = ct, method = m,
                                             control_cells = nrow(x0), stim_cells = nrow(x1),
                                             t(scores[[m]]), check.names = FALSE)
    }
  }
}
runs <- do.call(rbind, runs)
utils::write.csv(runs, file.path(RESULTS, paste0("kang_lopo", tag, "_runs.csv")), row.names = FALSE)

# Mean over the held-out patient's populations, then mean ± sd over patients.
per_patient <- stats::aggregate(cbind(W1, W2, MMD) ~ method + holdout, data = runs, FUN = mean)
order_m <- unique(runs$method)
table <- do.call(rbind, lapply(order_m, function(m) {
  r <- per_patient[per_patient$method == m, ]
  data.frame(method = m, W1 = mean_sd(r$W1, 3), W2 = mean_sd(r$W2, 3), MMD = mean_sd(r$MMD, 4),
             check.names = FALSE)
}))
utils::write.csv(per_patient, file.path(RESULTS, paste0("kang_lopo", tag, ".csv")), row.names = FALSE)
cat(sprintf("\n## Kang IFN-beta PBMC, leave one patient out (%d PCs fitted on the training patients; %d steps, seed %d)\n\n",
            n_pcs, steps, seed))
cat("Mean over each held-out patient's populations, then mean ± sd over the held-out patients",
    paste(holdouts, collapse = ", "), "\n\n")
md_table(table)
cat("\nPer held-out patient (W1):\n\n")
w1 <- stats::reshape(per_patient[, c("method", "holdout", "W1")], idvar = "method", timevar = "holdout",
                     direction = "wide")
md_table(w1[match(order_m, w1$method), ])

# Kang IFN-beta PBMC in gene space: generate the stimulated cells of a cell type with target FM
# from a ZINB source, from a Gaussian source and from the control cells of the same type (an
# empirical source), and score the generated cells against held-out cells.
#
#   R_LIBS=/tmp/rlib OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 Rscript bench/zinb_source.R
#
# Data: ../shared/data/kang_ifnb_pbmc.csv.gz (9,517 cells x 100 genes, log2(count / s + 1)). The
# raw counts are recovered exactly: in each cell the smallest positive value is count k (k = 1 in
# all but 2 cells, found as the smallest k that makes every value a whole count), so
# count = (2^v - 1) / (2^vmin - 1) * k and the cell's size factor is s = k / (2^vmin - 1).
# The script checks that the recovered counts are whole numbers (largest deviation printed).
#
# For each population (stimulated cells of KANG_TYPES) and seed, the cells are split at random
# in half: training and held-out cells. Rows, all target FM with the same network, steps, batch
# and seed, generating as many cells as are held out (rk4, 20 steps):
#   ZINB source       TargetFMParam(source = ZINBSource(training counts, size_factor = median s,
#                     log_base = 2)): the ZINB fitted per gene to the training cells' counts
#   Gaussian source   TargetFMParam() (the standard Gaussian)
#   control cells     TargetFMParam(source = EmpiricalSource(control cells of the same type))
#   ZINB draws alone  the ZINB source's own draws, not moved (what the flow adds to the source)
#   noise floor       training cells against the held-out cells (the metrics' noise at this size)
# Metrics: RBF MMD (mmdDistance) and energy distance (energyDistance) against the held-out cells
# in the 100 log-normalised genes; mean ± sd over seeds.
#
# Settings (environment): ZINB_STEPS (2000), ZINB_SEEDS (1,2,3), ZINB_WIDTH (256),
# KANG_TYPES ("CD14+ Monocytes,CD4 T cells").
# Writes bench/results/zinb_source_runs.csv (one row per population, seed and row) and zinb_source.csv.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

steps <- env_int("ZINB_STEPS", 2000)
seeds <- env_ints("ZINB_SEEDS", "1,2,3")
width <- env_int("ZINB_WIDTH", 256)
types <- strsplit(Sys.getenv("KANG_TYPES", "CD14+ Monocytes,CD4 T cells"), ",")[[1]]

kang <- utils::read.csv(file.path(data_dir(), "kang_ifnb_pbmc.csv.gz"), check.names = FALSE)
v <- as.matrix(kang[, -(1:3)])
cat(versions_line(), "\n")

# Counts and size factors from log2(count / s + 1).
y <- 2^v - 1
vmin <- apply(y, 1, function(r) if (any(r > 0)) min(r[r > 0]) else 1)
k <- vapply(seq_len(nrow(y)), function(i) {
  r <- y[i, y[i, ] > 0] / vmin[i]
  for (k in 1:10) if (max(abs(r * k - round(r * k)), 0) < 0.02) return(k)
  NA_integer_
}, integer(1))
stopifnot(!anyNA(k))
raw <- y / vmin * k
counts <- round(raw)
sf <- k / vmin
cat(sprintf("counts recovered: largest deviation from a whole number %.2g (5-digit CSV); k = 1 in %d of %d cells\n",
            max(abs(raw - counts)), sum(k == 1), nrow(y)))
stopifnot(max(abs(raw - counts)) < 0.02, max(abs(log2(counts / sf + 1) - v)) < 1e-3)

network <- NetworkParam(width = width, depth = 3)
solver <- SolverParam("rk4", steps = 20)
score <- function(gen, held) {
  c(MMD = mmdDistance(gen, held, max_cells = 2000), energy = energyDistance(gen, held, max_cells = 2000))
}

runs <- list()
for (type in types) {
  stim <- which(kang$condition == "stim" & kang$cell_type == type)
  ctrl <- which(kang$condition == "ctrl" & kang$cell_type == type)
  for (seed in seeds) {
    set.seed(seed)
    train <- sort(sample(stim, length(stim) %/% 2))
    held <- setdiff(stim, train)
    zinb <- ZINBSource(counts[train, ], size_factor = stats::median(sf[train]), log_base = 2)
    methods <- list(`ZINB source` = TargetFMParam(source = zinb), `Gaussian source` = TargetFMParam(),
                    `control cells` = TargetFMParam(source = EmpiricalSource(v[ctrl, ])))
    row <- function(name, gen, secs = NA) {
      data.frame(population = paste("stim", type), seed = seed, row = name, n_train = length(train),
                 n_held = length(held), t(score(gen, v[held, ])), seconds = secs, check.names = FALSE)
    }
    for (m in names(methods)) {
      t0 <- proc.time()[["elapsed"]]
      fit <- fitFlow(v[train, ], method = methods[[m]], network = network,
                     training = TrainingParam(steps = steps, batch_size = 256, seed = seed), verbose = FALSE)
      secs <- proc.time()[["elapsed"]] - t0
      gen <- predict(fit, n = length(held), seed = seed, solver = solver, verbose = FALSE)
      runs[[length(runs) + 1]] <- row(m, gen, secs)
      if (m == "ZINB source") {
        draws <- popflow:::draw_source(fit$method$source, length(held), ncol(v), seed,
                                       handle = popflow:::flow_handle(fit))
        zrow <- row("ZINB draws alone", draws)
      }
      cat(sprintf("%s seed %d %-16s MMD %.4f energy %.4f (%.0f s)\n", type, seed, m,
                  runs[[length(runs)]]$MMD, runs[[length(runs)]]$energy, secs))
    }
    runs[[length(runs) + 1]] <- zrow
    runs[[length(runs) + 1]] <- row("noise floor", v[train, ])
  }
}
runs <- do.call(rbind, runs)
utils::write.csv(runs, file.path(RESULTS, "zinb_source_runs.csv"), row.names = FALSE)

order <- c("ZINB source", "Gaussian source", "control cells", "ZINB draws alone", "noise floor")
table <- do.call(rbind, lapply(split(runs, list(runs$population, factor(runs$row, order)), drop = TRUE), function(r) {
  data.frame(population = r$population[1], row = r$row[1], cells = sprintf("%d / %d", r$n_train[1], r$n_held[1]),
             MMD = mean_sd(r$MMD), energy = mean_sd(r$energy))
}))
table <- table[order(table$population, match(table$row, order)), ]
utils::write.csv(table, file.path(RESULTS, "zinb_source.csv"), row.names = FALSE)
cat(sprintf("\nKang, stimulated cells in 100 genes, target FM (%d steps, width %d), seeds %s; cells = training / held out\n",
            steps, width, paste(seeds, collapse = ",")))
md_table(table)

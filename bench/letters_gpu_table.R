# Summarises a run of bench/gpu_letters.sh (one JSON-lines file per seed and model): per model and
# split, the mean ± sd over seeds of each seed's mean W1, W2 and MMD over the split's populations,
# the steps done, training seconds and the best validation step; writes a CSV and prints a
# markdown table with the baselines and the noise floor beside the models.
#
#   Rscript bench/letters_gpu_table.R bench/results/letters_gpu      # the folder the run wrote

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
dir <- commandArgs(trailingOnly = TRUE)[1]
if (is.na(dir) || !dir.exists(dir)) stop("usage: Rscript bench/letters_gpu_table.R RUN_FOLDER")

lines <- unlist(lapply(list.files(dir, "\\.jsonl$", full.names = TRUE), readLines))
# The trained models' configuration (the baselines' files carry the program's defaults).
model_files <- grep("_baselines\\.jsonl$", list.files(dir, "\\.jsonl$", full.names = TRUE), value = TRUE, invert = TRUE)
config <- jsonlite::fromJSON(grep('^\\{"config"', readLines(model_files[1]), value = TRUE)[1])$config
summaries <- lapply(grep('"summary": true', lines, value = TRUE), jsonlite::fromJSON)
rows <- do.call(rbind, lapply(summaries, function(s) {
  data.frame(model = s$model, split = s$split, W1 = s$W1, W2 = s$W2, MMD = s$MMD, status = s$status,
             steps = s$steps, train_seconds = s$train_seconds, best_step = s$best_step)
}))
# Seeds are the files' prefixes (s1_..., s2_...); each summary line comes from one file.
seeds <- unlist(lapply(list.files(dir, "\\.jsonl$", full.names = TRUE), function(f) {
  n <- sum(grepl('"summary": true', readLines(f)))
  rep(sub("^s([0-9]+)_.*", "\\1", basename(f)), n)
}))
rows$seed <- as.integer(seeds)
utils::write.csv(rows, file.path(dir, "summary.csv"), row.names = FALSE)

labels <- c(mfm_gcn_k50 = "MFM, GCN k = 50", mfm_gcn_k10 = "MFM, GCN k = 10", mfm_mean = "MFM, k = 0 (mean encoder)",
            mfm_kme = "MFM, kernel mean embedding", cgfm = "CGFM (unseen: mean condition)",
            fm = "FM (population-blind, paired within populations)", no_change = "no change",
            mean_shift = "mean shift", oracle_shift = "oracle shift (uses the answer)",
            noise_floor = "noise floor (halves of the observed cells)")
models <- intersect(names(labels), unique(rows$model))
cell <- function(v, digits) if (length(v) > 1) mean_sd(v, digits) else formatC(v, digits = digits, format = "f")
cat(sprintf("Letters on %s: %s steps, %s populations x %s cells a step, coupling %s, width %s, lr %s; %d seeds\n\n",
            config$device, config$steps, config$populations_per_step, config$cells, config$coupling, config$width,
            config$lr, length(unique(rows$seed))))
cat("| prediction | Y W1 | Y W2 | Y MMD | X W1 | X W2 | steps | best step (X W2) | train s |\n")
cat("|---|---|---|---|---|---|---|---|---|\n")
for (m in models) {
  y <- rows[rows$model == m & rows$split == "test", ]
  x <- rows[rows$model == m & rows$split == "val", ]
  trained <- !all(y$status == "untrained")
  cat(sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", labels[[m]], cell(y$W1, 3), cell(y$W2, 3),
              cell(y$MMD, 5), cell(x$W1, 3), cell(x$W2, 3),
              if (trained) paste(unique(y$steps), collapse = "/") else "-",
              if (trained) paste(y$best_step, collapse = "/") else "-",
              if (trained) sprintf("%.0f", mean(y$train_seconds)) else "-"))
}

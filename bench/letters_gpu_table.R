# Summarises a run of bench/gpu_letters.sh: per model and split, the mean ± sd over seeds of each
# seed's mean W1, W2 and MMD over the split's populations, with the steps done, the best
# validation step and the training seconds; writes FILE's summary as CSV beside it and prints a
# markdown table with the baselines and the noise floor beside the models.
#
#   Rscript bench/letters_gpu_table.R bench/results/letters_gpu/letters_gpu.jsonl

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
file <- commandArgs(trailingOnly = TRUE)[1]
if (is.na(file) || !file.exists(file)) stop("usage: Rscript bench/letters_gpu_table.R letters_gpu.jsonl")

records <- lapply(readLines(file), jsonlite::fromJSON)
configs <- Filter(function(r) !is.null(r$config) && identical(r$config$device, "cuda"), records)
config <- configs[[1]]$config
rows <- do.call(rbind, lapply(Filter(function(r) isTRUE(r$summary), records), function(s) {
  data.frame(seed = s$seed, model = s$model, split = s$split, W1 = s$W1, W2 = s$W2, MMD = s$MMD, status = s$status,
             steps = s$steps, train_seconds = s$train_seconds, best_step = s$best_step)
}))
utils::write.csv(rows, sub("\\.jsonl$", "_summary.csv", file), row.names = FALSE)

labels <- c(mfm_gcn_k50 = "MFM, GCN k = 50", mfm_gcn_k10 = "MFM, GCN k = 10", mfm_mean = "MFM, k = 0 (mean encoder)",
            mfm_kme = "MFM, kernel mean embedding", cgfm = "CGFM (unseen: mean condition)",
            fm = "FM (population-blind, paired within populations)", no_change = "no change",
            mean_shift = "mean shift", oracle_shift = "oracle shift (uses the answer)",
            noise_floor = "noise floor (halves of the observed cells)")
models <- intersect(names(labels), unique(rows$model))
cell <- function(v, digits) if (!length(v)) "-" else mean_sd(v, digits)
cat(sprintf("Letters on %s: %s steps, %s populations x %s cells a step, coupling %s, sigma %s, width %s, lr %s; seeds %s\n\n",
            config$device, config$steps, config$populations_per_step, config$cells, config$coupling, config$sigma,
            config$width, config$lr, paste(sort(unique(rows$seed)), collapse = ", ")))
cat("| prediction | Y W1 | Y W2 | Y MMD | X W1 | X W2 | steps | best step (X W2) | train s |\n")
cat("|---|---|---|---|---|---|---|---|---|\n")
for (m in models) {
  y <- rows[rows$model == m & rows$split == "test", ]
  x <- rows[rows$model == m & rows$split == "val", ]
  trained <- !all(y$status == "untrained")
  cat(sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", labels[[m]], cell(y$W1, 3), cell(y$W2, 3),
              cell(y$MMD, 5), cell(x$W1, 3), cell(x$W2, 3),
              if (trained) paste(y$steps, collapse = "/") else "-",
              if (trained) paste(y$best_step, collapse = "/") else "-",
              if (trained) sprintf("%.0f", mean(y$train_seconds)) else "-"))
}

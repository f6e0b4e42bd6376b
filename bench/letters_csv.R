# Writes the letters benchmark as the CSV that bench/cli/popflow_letters reads (for GPU sessions
# without R): the Meta Flow Matching paper's split, 24 letters x 10 rotations for training, X for
# validation and the unseen Y for testing, each population index-paired (source row i is target
# row i), every split drawn with its own seed as bench/letters.R does.
#
#   R_LIBS=/tmp/rlib Rscript bench/letters_csv.R letters.csv        # about 40 MB, 476,000 rows
#
# Settings (environment): LETTERS_ROTATIONS (10), LETTERS_POINTS (all pixels; e.g. 700 caps each
# population), LETTERS_SEED (1): the splits are drawn with seeds 1000 s + 1, + 2, + 3, the
# populations bench/letters.R trains and scores for its seed s.

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

out <- commandArgs(trailingOnly = TRUE)[1]
if (is.na(out)) stop("usage: Rscript bench/letters_csv.R OUTPUT.csv")
rotations <- env_int("LETTERS_ROTATIONS", 10)
points <- if (nzchar(Sys.getenv("LETTERS_POINTS"))) env_int("LETTERS_POINTS", 0) else NULL
seed <- env_int("LETTERS_SEED", 1)

split_rows <- function(letters, split, seed) {
  sim <- simulateLetters(letters, rotations = rotations, points = points, seed = seed)
  # 5 decimals (1e-5 against a noise of 0.05): a third of the full-precision file's size, so three
  # seeds travel to a GPU machine together.
  data.frame(population = sim$cells$population, split = split,
             sx = round(sim$source[, 1], 5), sy = round(sim$source[, 2], 5),
             tx = round(sim$target[, 1], 5), ty = round(sim$target[, 2], 5))
}
rows <- rbind(split_rows(setdiff(LETTERS, c("X", "Y")), "train", 1000 * seed + 1),
              split_rows("X", "val", 1000 * seed + 2),
              split_rows("Y", "test", 1000 * seed + 3))
utils::write.csv(rows, out, row.names = FALSE, quote = FALSE)
cat(sprintf("%s: %d cells in %d populations (%s)\n", out, nrow(rows), length(unique(rows$population)),
            paste(sprintf("%s %d", names(table(rows$split)), as.vector(table(rows$split))), collapse = ", ")))

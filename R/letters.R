# The letters task of Meta Flow Matching (Atanackovic et al., ICLR 2025): each
# population is a capital letter at a random rotation; the flow has to denoise
# it. The glyphs ship as pixel coordinates (tools/make_letters.R), so this needs
# no font at run time.

#' Simulate the letters benchmark of Meta Flow Matching
#'
#' Each population is one capital letter at one random rotation. A letter's
#' points are the pixels of its glyph in DejaVu Sans (rendered once at 100 px
#' on a 200 x 200 canvas, `tools/make_letters.R`), centred and scaled as in
#' the reference implementation: the longer side of the glyph spans
#' `[-scale, scale]`, the other keeps the aspect ratio. For every population:
#'
#' - target = points + N(0, `noise`^2), then rotated by an angle drawn
#'   uniformly from `[0, 2 pi)`;
#' - source = target + N(0, `source_noise`^2), paired with the target by row.
#'
#' Points per letter (all pixels with ink): A 1803, B 2277, C 1567, D 2154,
#' E 1775, F 1352, G 2054, H 1921, I 803, J 1110, K 1858, L 1127, M 2649,
#' N 2261, O 2112, P 1672, Q 2279, R 2050, S 1755, T 1282, U 1810, V 1599,
#' W 2834, X 1681, Y 1246, Z 1802. `points` caps them with a random subset
#' (drawn anew for every population).
#'
#' The paper trains on 24 letters x 10 rotations, validates on X and tests on
#' the unseen Y (10 rotations each).
#'
#' @param letters Capital letters to draw (a character vector, e.g. `LETTERS`
#'   or `c("X", "Y")`).
#' @param rotations Rotations (populations) per letter.
#' @param noise Standard deviation of the noise added to the glyph points (target).
#' @param source_noise Standard deviation of the noise added to the target (source).
#' @param points Largest number of points per population (`NULL`: all pixels of the glyph).
#' @param scale Half the extent of the glyph's longer side.
#' @param seed Random seed; the same seed gives the same populations. The
#'   global random state is left as it was.
#' @return A list with `source` and `target`, matrices (points x 2, columns
#'   `x`, `y`) paired by row, and `cells`, a data.frame with one row per point:
#'   `population` (e.g. `"A_03"`), `letter` and `rotation` (radians).
#' @examples
#' sim <- simulateLetters(c("A", "B"), rotations = 3, points = 500, seed = 1)
#' str(sim$cells)
#' table(sim$cells$population)
#' # Ready for a population model: source and target cells share population ids.
#' pop <- c(sim$cells$population, sim$cells$population)
#' dim(rbind(sim$source, sim$target)); length(pop)
#' @export
simulateLetters <- function(letters = LETTERS, rotations = 10, noise = 0.05, source_noise = 0.5, points = NULL,
                            scale = 3, seed = 1) {
  if (!is.character(letters) || !length(letters) || anyNA(letters) || !all(letters %in% LETTERS)) {
    pf_abort("letters", "must be capital letters A-Z", "e.g. letters = LETTERS or letters = c(\"X\", \"Y\")")
  }
  if (anyDuplicated(letters)) pf_abort("letters", "contains duplicates")
  rotations <- check_count(rotations, "rotations")
  noise <- check_number(noise, "noise", min = 0)
  source_noise <- check_number(source_noise, "source_noise", min = 0)
  if (!is.null(points)) points <- check_count(points, "points", min = 1)
  scale <- check_number(scale, "scale", min = 0, min_inclusive = FALSE)
  seed <- check_number(seed, "seed")
  glyphs <- letter_glyphs(scale)
  pops <- expand.grid(rotation = seq_len(rotations), letter = letters, stringsAsFactors = FALSE)
  with_seed(seed, {
    parts <- lapply(seq_len(nrow(pops)), function(i) {
      g <- glyphs[[pops$letter[i]]]
      if (!is.null(points) && nrow(g) > points) g <- g[sort(sample.int(nrow(g), points)), , drop = FALSE]
      angle <- stats::runif(1, 0, 2 * pi)
      rot <- matrix(c(cos(angle), sin(angle), -sin(angle), cos(angle)), 2)
      target <- (g + stats::rnorm(length(g), sd = noise)) %*% t(rot)
      source <- target + stats::rnorm(length(target), sd = source_noise)
      list(source = source, target = target, angle = angle)
    })
  })
  n <- vapply(parts, function(p) nrow(p$source), integer(1))
  xy <- function(side) {
    m <- do.call(rbind, lapply(parts, `[[`, side))
    dimnames(m) <- list(NULL, c("x", "y"))
    m
  }
  cells <- data.frame(population = rep(sprintf("%s_%02d", pops$letter, pops$rotation), n),
                      letter = rep(pops$letter, n),
                      rotation = rep(vapply(parts, `[[`, numeric(1), "angle"), n), stringsAsFactors = FALSE)
  list(source = xy("source"), target = xy("target"), cells = cells)
}

# Glyph points per letter, centred, the longer side spanning [-scale, scale].
letter_glyphs <- function(scale) {
  path <- system.file("extdata", "letters_dejavu.csv.gz", package = "popflow", mustWork = TRUE)
  px <- utils::read.csv(path, colClasses = c("character", "integer", "integer"))
  lapply(split(px[c("x", "y")], px$letter), function(g) {
    g <- as.matrix(g)
    lo <- apply(g, 2, min)
    range <- apply(g, 2, max) - lo
    unit <- sweep(sweep(g, 2, lo), 2, range, "/") * 2 - 1  # each side in [-1, 1]
    unit <- sweep(unit, 2, range / max(range), "*")      # keep the aspect ratio
    dimnames(unit) <- NULL
    unit * scale
  })
}

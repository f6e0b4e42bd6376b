# Rasterises the capital letters A-Z of DejaVu Sans (Debian: fonts-dejavu-core)
# into pixel coordinates for simulateLetters(), as the Meta Flow Matching
# letters task does with its font: a 100 px font on a 200 x 200 canvas, every
# pixel with any ink is a point. Run once from the package root:
#   Rscript tools/make_letters.R
# Needs the png package (Debian: r-cran-png) and a cairo-enabled R; the
# package itself reads only the resulting inst/extdata/letters_dejavu.csv.gz.
if (!requireNamespace("png", quietly = TRUE)) stop("install the png package (Debian: r-cran-png)")
if (!capabilities("cairo")) stop("R was built without cairo; the glyphs cannot be rendered")
if (!any(grepl("DejaVu Sans", system("fc-list", intern = TRUE), fixed = TRUE))) {
  stop("the DejaVu Sans font is missing (Debian: fonts-dejavu-core)")
}

canvas <- 200
glyph_pixels <- function(letter) {
  file <- tempfile(fileext = ".png")
  on.exit(unlink(file))
  grDevices::png(file, width = canvas, height = canvas, type = "cairo", res = 72, pointsize = 100, bg = "white")
  graphics::par(mar = c(0, 0, 0, 0))
  graphics::plot.new()
  graphics::plot.window(c(0, 1), c(0, 1))
  graphics::text(0.5, 0.5, letter, family = "DejaVu Sans", col = "black")
  grDevices::dev.off()
  ink <- 1 - png::readPNG(file)[, , 1]
  at <- which(ink > 0, arr.ind = TRUE)
  # Image rows run downwards: flip them so that y points up.
  data.frame(letter = letter, x = at[, "col"], y = canvas + 1L - at[, "row"])
}

pixels <- do.call(rbind, lapply(LETTERS, glyph_pixels))
pixels <- pixels[order(pixels$letter, pixels$x, pixels$y), ]
out <- file.path("inst", "extdata", "letters_dejavu.csv.gz")
con <- gzfile(out, "w")
utils::write.csv(pixels, con, row.names = FALSE, quote = FALSE)
close(con)
counts <- table(pixels$letter)
cat(sprintf("%s: %d points (%d to %d per letter)\n", out, nrow(pixels), min(counts), max(counts)))
print(counts)

# popflow's main job on built-in data: predict a held-out time point of the
# EMT time course from the previous one, and compare with trivial baselines.
suppressPackageStartupMessages(library(popflow))
emt <- emtTimecourse()
held_out <- 2
train <- emt$time != held_out
source_cells <- emt$x[emt$time == held_out - 1, ]
observed <- emt$x[emt$time == held_out, ]
cat(sprintf("EMT time course: %d cells x %d dims at times %s; holding out time %d\n",
            nrow(emt$x), ncol(emt$x), paste(sort(unique(emt$time)), collapse = ", "), held_out))

results <- list()
fits <- list()
for (method in c("icfm", "otcfm")) {
  fits[[method]] <- fitFlow(emt$x[train, ], time = emt$time[train], method = method,
                            training = TrainingParam(steps = 1500, batch_size = 256, seed = 1))
  ev <- evaluateFlow(fits[[method]], source_cells, observed, from = held_out - 1, to = held_out)
  results[[method]] <- if (length(results)) ev[1, ] else ev
}
table <- do.call(rbind, results)
table <- table[order(table$W1), ]
rownames(table) <- NULL
cat(sprintf("\nPredicting time %d from time %d (exact W1/W2 on all 10 dims; lower is better):\n",
            held_out, held_out - 1))
print(format(table, digits = 3), row.names = FALSE)

out <- Sys.getenv("POPFLOW_OUT", "popflow_main_job.png")
grDevices::png(out, width = 1500, height = 520, res = 110)
graphics::par(mfrow = c(1, 3))
pred <- predict(fits$otcfm, source_cells, from = held_out - 1, to = held_out)
lim <- apply(rbind(source_cells, observed, pred)[, 1:2], 2, range)
show <- function(x, title, col) {
  graphics::plot(x[, 1:2], pch = 16, cex = 0.4, col = grDevices::adjustcolor(col, 0.5), xlim = lim[, 1], ylim = lim[, 2],
                 xlab = "dim 1", ylab = "dim 2", main = title)
}
show(source_cells, sprintf("time %d (source)", held_out - 1), "grey40")
graphics::points(observed[, 1:2], pch = 16, cex = 0.4, col = grDevices::adjustcolor("steelblue", 0.4))
graphics::legend("topright", c("source", "observed"), col = c("grey40", "steelblue"), pch = 16, bty = "n")
show(pred, sprintf("OT-CFM prediction of time %d", held_out), "firebrick")
graphics::points(observed[, 1:2], pch = 16, cex = 0.4, col = grDevices::adjustcolor("steelblue", 0.25))
graphics::legend("topright", c("predicted", "observed"), col = c("firebrick", "steelblue"), pch = 16, bty = "n")
plot(fits$otcfm)
invisible(grDevices::dev.off())
cat(sprintf("\nFigure written to %s\n", normalizePath(out)))

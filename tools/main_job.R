# popflow's main job on built-in data: predict how an unseen patient's PBMCs
# respond to interferon-beta (Kang et al. 2018). Populations are patient x cell
# type; patient 107 is held out; MFM, CGFM and I-CFM are trained on the other
# two patients' control -> stimulated cells in a 20-PC space and compared, on
# each of 107's populations (scored whole), with the baselines ("no change",
# "mean shift", "label mean shift": the mean change of the same cell type in
# training), the "oracle shift" (the true target mean: how far from perfect)
# and the noise floor (two halves of the observed cells); the sentences say
# what each model adds over the strongest fair baseline, from the numbers.
suppressPackageStartupMessages({
  library(popflow)
  library(SingleCellExperiment)
})
options(width = 150)
steps <- as.integer(Sys.getenv("POPFLOW_STEPS", "1500"))
held_out <- "107"
sce <- kangPBMC()
# Cell types with enough control cells in every patient for a kNN graph (k = 10).
types <- c("B cells", "CD14+ Monocytes", "CD4 T cells", "CD8 T cells", "FCGR3A+ Monocytes", "NK cells")
in_types <- sce$cell_type %in% types
train <- in_types & sce$patient != held_out
held <- sce[, in_types & sce$patient == held_out]
cat(sprintf("Kang IFN-beta PBMCs: %d cells x %d genes, 20 PCs; %d cell types; holding out patient %s (%d control, %d stimulated cells)\n",
            ncol(sce), nrow(sce), length(types), held_out, sum(held$condition == "ctrl"), sum(held$condition == "stim")))

training <- TrainingParam(steps = steps, lr = 1e-3, seed = 1)
network <- NetworkParam(width = 64, depth = 3)
fit_on <- function(name, method, ...) {
  t0 <- Sys.time()
  fit <- fitFlow(sce, space = "PCA", condition = "condition", source = "ctrl", target = "stim",
                 population = c("patient", "cell_type"), cells = train, method = method, network = network,
                 training = training, verbose = FALSE, ...)
  cat(sprintf("  %-6s %d steps in %.0f s\n", name, fit$steps_done, as.numeric(Sys.time() - t0, units = "secs")))
  fit
}
populations <- list(populations_per_step = 6, cells_per_population = 128)
fits <- list(
  MFM = fit_on("MFM", do.call(MFMParam, c(list(k = 10, width = 32), populations))),
  CGFM = fit_on("CGFM", do.call(CGFMParam, populations), label = "cell_type"),
  `I-CFM` = fit_on("I-CFM", "icfm")
)

solver <- SolverParam("rk4", steps = 10)
# One set of baseline rows: MFM's evaluation brings "no change", "mean shift"
# (average over training populations), "oracle shift" and "noise floor";
# CGFM, fitted with the cell type as label, the "label mean shift" (the mean
# change of the same cell type in the training patients).
scores <- rbind(
  evaluateFlow(fits$MFM, held, solver = solver),
  evaluateFlow(fits$CGFM, held, solver = solver, baselines = "label mean shift"),
  evaluateFlow(fits$`I-CFM`, held, solver = solver, baselines = FALSE)
)
metrics <- c("W1", "W2", "MMD", "energy", "mean_R2", "corr_r", "R2_all_genes", "R2_top_genes")
table <- aggregate(scores[metrics], by = list(prediction = scores$prediction), FUN = mean)
is_model <- !(table$prediction %in% c("no change", "mean shift", "label mean shift", "oracle shift", "noise floor"))
table <- rbind(table[is_model, ][order(table$W1[is_model]), ],
               table[match(c("label mean shift", "mean shift", "no change", "oracle shift", "noise floor"), table$prediction), ])
cat(sprintf("\nPatient %s, stimulated cells predicted from its control cells: mean over its %d populations (whole)\n",
            held_out, length(unique(scores$population))))
cat("(exact W1/W2, MMD and energy on 20 PCs: lower is better; R^2 of means, corr r, R^2 of mean expression over\n",
    " all 100 genes and the 20 most responsive ones: higher is better. Oracle shift: the control cells moved onto\n",
    " the true stimulated mean; noise floor: two halves of the stimulated cells against each other)\n", sep = "")
print(format(table, digits = 3), row.names = FALSE)
comparison <- compareToBaselines(scores)
cat("\nWhat each model adds over the strongest fair baseline (no change, mean shift, label mean shift):\n")
cat(paste(strwrap(attr(comparison, "verdicts"), width = 110, exdent = 2), collapse = "\n"), "\n", sep = "")
cat("\nR^2 of mean expression over the 20 most responsive genes, by cell type\n")
r2_top <- xtabs(R2_top_genes ~ cell_type + prediction, data = scores)
print(round(r2_top[, table$prediction], 3))

# Interferon-stimulated genes, reconstructed from the predicted PCs.
isgs <- intersect(c("ISG15", "MX2", "PSME2", "APOL3"), rownames(sce))
pred <- lapply(fits, predict, newdata = held, solver = solver)
observed <- logcounts(held)[isgs, ]
type_means <- function(expr, cell_type) t(sapply(split(seq_along(cell_type), cell_type), function(i) rowMeans(expr[, i, drop = FALSE])))
ctrl <- held$condition == "ctrl"
isg <- data.frame(
  cell_type = rep(types, length(isgs)), gene = rep(isgs, each = length(types)),
  control = as.vector(type_means(observed[, ctrl], droplevels(held$cell_type[ctrl]))[types, ]),
  stimulated = as.vector(type_means(observed[, !ctrl], droplevels(held$cell_type[!ctrl]))[types, ]),
  check.names = FALSE
)
for (nm in names(pred)) {
  isg[[nm]] <- as.vector(type_means(logcounts(pred[[nm]])[isgs, ], droplevels(pred[[nm]]$cell_type))[types, ])
}
cat(sprintf("\nMean log-expression of interferon-stimulated genes in patient %s, by cell type (predicted: reconstructed from PCs)\n", held_out))
print(format(isg, digits = 2), row.names = FALSE)

out <- Sys.getenv("POPFLOW_OUT", "popflow_main_job.png")
grDevices::png(out, width = 1600, height = 540, res = 110)
graphics::par(mfrow = c(1, 3))
pcs <- reducedDim(held, "PCA")[, 1:2]
pred_pcs <- reducedDim(pred$MFM, "PCA")[, 1:2]
lim <- apply(rbind(pcs, pred_pcs), 2, range)
graphics::plot(pcs[ctrl, ], pch = 16, cex = 0.4, col = grDevices::adjustcolor("grey50", 0.5), xlim = lim[, 1],
               ylim = lim[, 2], main = sprintf("patient %s (held out)", held_out))
graphics::points(pcs[!ctrl, ], pch = 16, cex = 0.4, col = grDevices::adjustcolor("steelblue", 0.5))
graphics::legend("topright", c("control", "stimulated"), col = c("grey50", "steelblue"), pch = 16, bty = "n")
graphics::plot(pred_pcs, pch = 16, cex = 0.4, col = grDevices::adjustcolor("firebrick", 0.5), xlim = lim[, 1],
               ylim = lim[, 2], main = "MFM prediction from control cells")
graphics::points(pcs[!ctrl, ], pch = 16, cex = 0.4, col = grDevices::adjustcolor("steelblue", 0.25))
graphics::legend("topright", c("predicted", "stimulated"), col = c("firebrick", "steelblue"), pch = 16, bty = "n")
isg15 <- isg[isg$gene == isgs[1], ]
bars <- t(as.matrix(isg15[, c("control", "stimulated", "MFM", "I-CFM")]))
graphics::barplot(bars, beside = TRUE, ylim = c(0, 1.2 * max(bars)),
                  names.arg = sub(" ", "\n", isg15$cell_type), cex.names = 0.7, ylab = "mean log-expression",
                  col = c("grey70", "steelblue", "firebrick", "darkorange"), main = sprintf("%s by cell type", isgs[1]))
graphics::legend("topleft", c("control", "stimulated", "MFM", "I-CFM"), fill = c("grey70", "steelblue", "firebrick", "darkorange"),
                 bty = "n", cex = 0.8)
invisible(grDevices::dev.off())
cat(sprintf("\nFigure written to %s\n", normalizePath(out)))

# predict()'s cells per second on the CPU, one thread: I-CFM trained on the
# EMT time course (10-d, the default network: width 64, 3 layers, SELU), then
# 40,000 cells moved from time 0 to 3 with the default solver (adaptive
# dopri5) and with rk4 at 20 steps. The model is fitted once and saved
# (PT_MODEL), so that two builds of the package can be timed on the same
# weights, in alternation:
#   for lib in NEW BASE NEW BASE; do R_LIBS=$lib PT_LABEL=... Rscript bench/predict_throughput.R; done
# Prints one CSV line per solver and repeat: label, solver, cells, CPU seconds
# (user + system of this process), wall seconds, cells per CPU second.
suppressPackageStartupMessages(library(popflow))
label <- Sys.getenv("PT_LABEL", "popflow")
model <- Sys.getenv("PT_MODEL", file.path(tempdir(), "predict_throughput.popflow"))
reps <- as.integer(Sys.getenv("PT_REPS", "3"))
emt <- emtTimecourse()
if (!file.exists(model)) {
  fit <- fitFlow(emt$x, time = emt$time, method = "icfm", training = TrainingParam(steps = 2000, seed = 1),
                 threads = 1, verbose = FALSE)
  saveFlow(fit, model)
}
fit <- loadFlow(model)
start <- emt$x[emt$time == 0, ]
cells <- start[rep(seq_len(nrow(start)), length.out = 40000), ]
# PT_CELLS_CSV: also write these cells there (bench/predict_peer.sh moves the same ones).
cells_csv <- Sys.getenv("PT_CELLS_CSV", "")
if (nzchar(cells_csv)) utils::write.table(cells, cells_csv, sep = ",", row.names = FALSE, col.names = FALSE)
solvers <- list(dopri5 = SolverParam(), rk4 = SolverParam("rk4", steps = 20))
for (rep in seq_len(reps)) {
  for (name in names(solvers)) {
    t0 <- proc.time()
    out <- predict(fit, cells, from = 0, to = 3, solver = solvers[[name]], threads = 1, verbose = FALSE)
    t1 <- proc.time()
    stopifnot(all(is.finite(out)))
    cpu <- sum((t1 - t0)[c("user.self", "sys.self")])
    cat(sprintf("%s,%s,%d,%.3f,%.3f,%.0f\n", label, name, nrow(cells), cpu, (t1 - t0)[["elapsed"]],
                nrow(cells) / cpu))
  }
}

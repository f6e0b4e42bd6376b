# popflow side of the training-throughput benchmark: one configuration per process, so that
# `/usr/bin/time -v` gives this configuration's peak RSS (bench/throughput.R runs it).
#
#   Rscript bench/throughput_popflow.R DATA METHOD WIDTH DEPTH BATCH STEPS [OT_MODE]
#
# A 10-step warm-up fit runs first in the same process (not timed); steps/s is then
# steps / fit$seconds (training wall time measured inside C++). The network is the peer's:
# MLP, `DEPTH` hidden layers of `WIDTH`, SELU, raw t as input (time_dim = 0). One thread.
# Prints one line `RESULT <csv fields>`; the last field is the fit's CPU time (user + system, seconds).

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()

a <- commandArgs(trailingOnly = TRUE)
data_file <- a[1]
method <- a[2]
width <- as.integer(a[3])
depth <- as.integer(a[4])
batch <- as.integer(a[5])
steps <- as.integer(a[6])
ot_mode <- if (length(a) >= 7) a[7] else "resample"
sigma <- 0.1

d <- utils::read.csv(data_file)
x <- as.matrix(d[, -1])
side <- d$side
param <- switch(method,
  icfm = ICFMParam(sigma = sigma),
  otcfm = OTCFMParam(sigma = sigma, ot_mode = ot_mode),
  sbcfm = SBCFMParam(sigma = sigma),
  stop("unknown method ", method))
net <- NetworkParam(width = width, depth = depth, activation = "selu", time_dim = 0)
fit1 <- function(n) {
  fitFlow(x, time = side, method = param, network = net,
          training = TrainingParam(steps = n, batch_size = batch, lr = 1e-3, seed = 1),
          threads = 1L, verbose = FALSE)
}
invisible(fit1(10))  # warm-up
cpu <- proc.time()
fit <- fit1(steps)
# CPU time of the process (one thread): what a machine busy with other work leaves comparable.
cpu <- sum((proc.time() - cpu)[c("user.self", "sys.self")])
cat(sprintf("RESULT popflow,%s,%s,%d,%d,%d,%d,%.6f,%.3f,%.6g,%.6f\n", method, ot_mode, width, depth, batch, steps,
            fit$seconds, steps / fit$seconds, mean(utils::tail(fit$loss, 10)), cpu))

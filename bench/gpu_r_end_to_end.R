# GPU training from R, end to end (issue 14, item 4): popflow installed from R against PyTorch's
# CUDA LibTorch on the GPU machine (bench/gpu_session.sh), then fitFlow(device = "cuda") on the
# package's own data, beside the same calls on the CPU. Only popflow's hard dependencies are
# needed (the GPU machine's R has no Bioconductor), so the inputs are matrices.
#
#   Rscript bench/gpu_r_end_to_end.R            # on any machine; the GPU rows need cudaAvailable()
#
# 1. OT-CFM on the EMT time course (time 2 held out, predicted from time 1) on CPU and GPU from the
#    same seed: seconds, steps/s, W1 to the held-out cells.
# 2. The GPU model predicted on GPU and on CPU (same weights: the difference is float
#    arithmetic), and saved, reloaded and predicted on CPU.
# 2b. The NCCL backend with one rank (issue 13), against the plain GPU fit.
# 3. Letters at the paper's size from R (24 letters x 10 rotations, every pixel; width-512
#    residual decoder, MFM GCN k = 10, 10 populations x 700 cells a step, paired, lr 1e-4):
#    STEPS steps on the GPU with TF32 off and on, and with the step as one CUDA graph
#    (TrainingParam(step_graph = TRUE)), W1 on the unseen letter Y; a few CPU steps for the speed ratio.
# Settings (environment): STEPS (2000), EMT_STEPS (2000), CPU_LETTER_STEPS (10).
source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "common.R"))
load_popflow()
steps <- env_int("STEPS", 2000)
emt_steps <- env_int("EMT_STEPS", 2000)
cpu_letter_steps <- env_int("CPU_LETTER_STEPS", 10)
gpu <- cudaAvailable()
cat(sprintf("%s; popflow %s; LibTorch %s; cudaAvailable() %s\n", R.version.string, packageVersion("popflow"),
            popflow:::pf_torch_version(), gpu))
devices <- if (gpu) c("cpu", "cuda") else "cpu"
row <- function(...) {
  cat(sprintf(...), "\n", sep = "")
  flush(stdout())
}
timed <- function(expr) {
  t0 <- proc.time()[["elapsed"]]
  value <- force(expr)
  list(value = value, seconds = proc.time()[["elapsed"]] - t0)
}

# 1. EMT, time 2 held out.
emt <- emtTimecourse()
keep <- emt$time != 2
emt_fits <- list()
for (device in devices) {
  run <- timed(fitFlow(emt$x[keep, ], time = emt$time[keep], method = "otcfm",
                       training = TrainingParam(steps = emt_steps, seed = 1), device = device, verbose = FALSE))
  emt_fits[[device]] <- run$value
  pred <- predict(run$value, emt$x[emt$time == 1, ], from = 1, to = 2, device = device)
  row("emt_otcfm device=%s steps=%d seconds=%.2f steps_per_s=%.1f W1_t2=%.4f status=%s", device,
      run$value$steps_done, run$seconds, run$value$steps_done / run$seconds,
      wassersteinDistance(pred, emt$x[emt$time == 2, ], p = 1), run$value$status)
}

# 2. Same weights, two devices; a saved GPU model predicted on CPU.
if (gpu) {
  fit <- emt_fits$cuda
  x1 <- emt$x[emt$time == 1, ]
  p_gpu <- predict(fit, x1, from = 1, to = 2, device = "cuda")
  p_cpu <- predict(fit, x1, from = 1, to = 2, device = "cpu")
  file <- tempfile(fileext = ".popflow")
  saveFlow(fit, file)
  p_loaded <- predict(loadFlow(file), x1, from = 1, to = 2, device = "cpu")
  row("same_weights max_abs_diff gpu_vs_cpu=%.3g reloaded_cpu_vs_cpu=%.3g (cells %d)", max(abs(p_gpu - p_cpu)),
      max(abs(p_loaded - p_cpu)), nrow(p_cpu))
}

# 2b. Issue 13: the NCCL path with one rank (this process as rank 0 of 1, a launched-style fit), which
#     must give the model of the plain GPU fit: with one rank the allreduce is the identity.
if (gpu) {
  row("distributed_backends=%s", paste(distributedBackends(), collapse = ","))
  if ("nccl" %in% distributedBackends()) {
    plain <- fitFlow(emt$x[keep, ], time = emt$time[keep], method = "otcfm", device = "cuda", verbose = FALSE,
                     training = TrainingParam(steps = 200, seed = 1))
    run <- timed(tryCatch(
      fitFlow(emt$x[keep, ], time = emt$time[keep], method = "otcfm", device = "cuda", verbose = FALSE,
              training = TrainingParam(steps = 200, seed = 1),
              parallel = ParallelParam(backend = "nccl", rank = 0, world_size = 1, port = 29517)),
      error = function(e) e))
    if (inherits(run$value, "error")) {
      row("nccl_one_rank FAILED: %s", conditionMessage(run$value))
    } else {
      x1 <- emt$x[emt$time == 1, ]
      row("nccl_one_rank steps=%d seconds=%.2f status=%s max_abs_loss_diff_vs_plain=%.3g max_abs_pred_diff=%.3g",
          run$value$steps_done, run$seconds, run$value$status, max(abs(run$value$loss - plain$loss)),
          max(abs(predict(run$value, x1, from = 1, to = 2) - predict(plain, x1, from = 1, to = 2))))
    }
  }
}

# 3. Letters at the paper's size.
train_letters <- setdiff(LETTERS, c("X", "Y"))
letters_train <- simulateLetters(train_letters, rotations = 10, seed = 1001)
letters_test <- simulateLetters("Y", rotations = 10, seed = 1003)
pop <- rep(letters_train$cells$population, 2)
mfm <- MFMParam(k = 10, populations_per_step = 10, cells_per_population = 700, coupling = "paired", sigma = 0)
network <- NetworkParam(width = 512, depth = 2, residual = TRUE, time_dim = 128, fourier_features = 256,
                        fourier_scale = 0.01)
letters_fit <- function(device, n_steps, tf32, step_graph = FALSE) {
  run <- timed(fitFlow(letters_train$source, letters_train$target, population = pop, method = mfm,
                       network = network, device = device, verbose = FALSE,
                       training = TrainingParam(steps = n_steps, lr = 1e-4, seed = 1, tf32 = tf32,
                                                step_graph = step_graph)))
  ev <- if (n_steps >= 100) {
    evaluateFlow(run$value, letters_test$source, letters_test$target, population = letters_test$cells$population,
                 solver = SolverParam("dopri5", atol = 1e-4, rtol = 1e-4), baselines = device == "cuda" && !tf32)
  }
  model <- if (is.null(ev)) NA else mean(ev$W1[!ev$prediction %in% c("no change", "mean shift", "oracle shift",
                                                                      "noise floor")])
  row("letters_mfm device=%s tf32=%s step_graph=%s steps=%d seconds=%.2f steps_per_s=%.1f Y_W1=%.4f", device, tf32,
      if (is.null(run$value$step_graph)) "no" else run$value$step_graph, run$value$steps_done, run$seconds,
      run$value$steps_done / run$seconds, model)
  if (!is.null(ev) && device == "cuda" && !tf32) {
    for (b in c("no change", "noise floor")) row("letters_baseline %s Y_W1=%.4f", b, mean(ev$W1[ev$prediction == b]))
  }
}
letters_fit("cpu", cpu_letter_steps, FALSE)
if (gpu) {
  letters_fit("cuda", steps, FALSE)
  letters_fit("cuda", steps, TRUE)
  letters_fit("cuda", steps, FALSE, step_graph = TRUE)  # the step as one CUDA graph, beside the first row
}

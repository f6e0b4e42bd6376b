# Work that grows with the settings rather than with the data: minibatches
# are capped at what the data hold, and a fit whose memory the machine cannot
# give is refused before the engine tries (its allocator's text is no help).

# A flow's step draws `batch_size` cells from each (time, group) block, with
# replacement from a smaller block. Beyond the largest block a batch only
# repeats cells, and an OT coupling's cost grows with its square, so the
# batch is capped there (and the fit says so when verbose).
cap_batch_size <- function(training, block_sizes, verbose) {
  largest <- max(block_sizes)
  if (training$batch_size <= largest) return(training)
  if (verbose) {
    message(sprintf(paste0("batch_size = %d is more than the data hold (at most %d cells per snapshot%s): ",
                           "drawing %d cells per step instead"),
                    training$batch_size, largest, if (length(block_sizes) > 2) " and group" else "", largest))
  }
  training$batch_size <- as.integer(largest)
  training
}

# Cells per (time, group) block of a flow's training data (target FM: the noise side is unbounded).
block_sizes <- function(data, generative) {
  group <- if (length(data$group)) data$group else integer(length(data$time_index))
  counts <- table(data$time_index, group)
  if (generative) counts <- counts[rownames(counts) != "0", , drop = FALSE]
  as.vector(counts[counts > 0])
}

# Rough memory of one training step, in bytes, and what dominates it: the
# network's weights with their gradients and Adam moments (x 5), its
# activations over a step's rows, and the cost matrix and plan of an OT
# coupling (float and double copies of `pairs^2` entries, about 32 bytes each).
# Only allocations far beyond the machine are refused, so rough is enough.
step_memory <- function(network, dim, cond_dim, rows, pairs) {
  input <- dim + network$time_dim + network$fourier_features + cond_dim
  weights <- (input + 1) * network$width + (network$depth - 1) * (network$width + 1) * network$width +
    (network$width + 1) * dim
  parts <- c(network = 4 * 5 * weights, activations = 4 * 4 * rows * network$width * (network$depth + 1),
             coupling = 32 * pairs^2)
  list(total = sum(parts), largest = names(which.max(parts)), parts = parts)
}

# Memory this machine can still give, in bytes (Linux: MemAvailable), or NA.
available_memory <- function() {
  info <- tryCatch(readLines("/proc/meminfo", warn = FALSE), error = function(e) character(0))
  line <- grep("^MemAvailable:", info, value = TRUE)
  if (!length(line)) return(NA_real_)
  as.numeric(gsub("[^0-9]", "", line[1])) * 1024
}

format_bytes <- function(b) {
  if (b >= 1024^3) sprintf("%.1f GB", b / 1024^3) else sprintf("%.0f MB", b / 1024^2)
}

# Refuses a fit whose step needs more memory than the machine has (CPU fits;
# on CUDA the engine's own out-of-memory error is translated instead).
check_step_memory <- function(network, training, dim, cond_dim, rows, pairs, device,
                              batch_arg = "batch_size in TrainingParam()", available = available_memory()) {
  if (!identical(device, "cpu") || is.na(available)) return(invisible())
  need <- step_memory(network, dim, cond_dim, rows, pairs)
  if (need$total <= available) return(invisible())
  what <- switch(need$largest,
    network = sprintf("a network of width %d and depth %d", network$width, network$depth),
    activations = sprintf("%d cells per step through a network of width %d", rows, network$width),
    coupling = sprintf("an OT coupling of %d x %d cells", pairs, pairs))
  fix <- switch(need$largest,
    network = "use a narrower network, e.g. NetworkParam(width = 256)",
    activations = sprintf("lower %s or the network's width", batch_arg),
    coupling = sprintf("lower %s (e.g. 1024; minibatch OT needs no more)", batch_arg))
  pf_abort(if (need$largest == "network") "network" else "training",
           sprintf("asks for about %s of memory in one training step (%s), more than this machine has available (%s)",
                   format_bytes(need$total), what, format_bytes(available)),
           fix)
}

# A flow fit: the batch capped, then its step's memory checked.
flow_step_limits <- function(method, network, training, data, device, verbose) {
  training <- cap_batch_size(training, block_sizes(data, is_generative(method)), verbose)
  n_groups <- max(length(data$groups), 1L)
  rows <- training$batch_size * (length(data$times) - 1L) * min(n_groups, training$groups_per_step)
  pairs <- if (method$coupling %in% c("exact", "sinkhorn", "unbalanced")) training$batch_size else 0
  check_step_memory(network, training, ncol(data$x), 0, rows, pairs, device)
  training
}

# A population model's step: `cells_per_population` cells of each of
# `populations_per_step` populations, coupled within each population.
population_step_limits <- function(method, network, training, dim, device) {
  n <- method$cells_per_population
  check_step_memory(network, training, dim, (method$width %||% 0) + (method$label_dim %||% 0),
                    2 * n * method$populations_per_step, if (identical(method$coupling, "exact")) n else 0, device,
                    batch_arg = sprintf("cells_per_population in %s()", class(method)[1]))
}

# Data-parallel training (ParallelParam() in params.R holds the settings):
# where a launched script's rank comes from, the checks of fitFlow(parallel = ),
# and the workers fitFlow() starts itself on one machine (a PSOCK cluster: R
# processes started fresh, never forked). The engine does the rest
# (src/core/distributed.cpp): rendezvous, start weights, gradient exchange.

#' The data-parallel backends of this build
#'
#' The backends of LibTorch's distributed layer that this popflow was built
#' with: `"gloo"` (CPU; needs Debian's libgloo-dev at install time) and
#' `"nccl"` (GPU; a CUDA LibTorch with NCCL). See [ParallelParam()].
#' @return A character vector, possibly empty.
#' @examples
#' distributedBackends()
#' @export
distributedBackends <- function() pf_distributed_backends()

# A whole number >= 0 from an environment variable, NULL when unset or empty.
env_count <- function(name) {
  v <- Sys.getenv(name, "")
  if (!nzchar(v)) return(NULL)
  n <- suppressWarnings(as.numeric(v))
  if (is.na(n) || n < 0 || n != round(n)) {
    pf_abort("parallel", sprintf("found %s=\"%s\" in the environment, which is not a whole number", name, v),
             sprintf("unset %s or set it as the launcher would (a rank, a count or a port)", name))
  }
  as.integer(n)
}

# The rank and world size of a launched script: arguments first, then
# RANK/WORLD_SIZE (torchrun and its kind), then SLURM_PROCID/SLURM_NTASKS (srun).
launcher_ranks <- function(rank, world_size) {
  if (!is.null(rank) || !is.null(world_size)) {
    if (is.null(rank) || is.null(world_size)) {
      pf_abort(if (is.null(rank)) "rank" else "world_size", "is missing while the other of the two is given",
               "give both `rank` and `world_size`, or neither (they are then read from the launcher's variables)")
    }
    world_size <- check_count(world_size, "world_size")
    rank <- check_count(rank, "rank", min = 0)
    if (rank >= world_size) {
      pf_abort("rank", sprintf("is %d but ranks run from 0 to world_size - 1 = %d", rank, world_size - 1L),
               "number the ranks 0, 1, ..., world_size - 1")
    }
    return(list(launcher = "arguments", rank = rank, world_size = world_size))
  }
  for (vars in list(c("RANK", "WORLD_SIZE"), c("SLURM_PROCID", "SLURM_NTASKS"))) {
    r <- env_count(vars[1])
    w <- env_count(vars[2])
    if (!is.null(r) && !is.null(w) && w >= 1 && r < w) {
      return(list(launcher = paste(vars, collapse = "/"), rank = r, world_size = w))
    }
  }
  list(launcher = "none", rank = NULL, world_size = NULL)
}

# Rank 0's address for a launched script: MASTER_ADDR, else this machine when
# every rank runs on it (one SLURM node, or no launcher), else unknown (NULL).
launcher_address <- function(launcher) {
  addr <- Sys.getenv("MASTER_ADDR", "")
  if (nzchar(addr)) return(addr)
  if (launcher == "SLURM_PROCID/SLURM_NTASKS" && !identical(Sys.getenv("SLURM_NNODES", "1"), "1")) return(NULL)
  "127.0.0.1"
}

# fitFlow(parallel = ): a usable ParallelParam for this method and device, or NULL.
check_parallel <- function(parallel, method, device) {
  if (is.null(parallel)) return(NULL)
  parallel <- expect_param(parallel, "parallel", "ParallelParam")
  one_process <- c(ICNNParam = "the ICNN baseline", MetricFMParam = "metric flow matching", ReflowParam = "reflow")
  kind <- intersect(class(method), names(one_process))
  if (length(kind) || identical(method$schedule, "alternating")) {
    what <- if (length(kind)) one_process[[kind[1]]] else "the alternating schedule"
    pf_abort("parallel", sprintf("is not supported for %s (its fit has two optimisers or rounds of its own)", what),
             "fit it in one process (leave `parallel` out), or use schedule = \"joint\" for MFM")
  }
  if (!(parallel$backend %in% distributedBackends())) {
    pf_abort("parallel", sprintf("asks for the \"%s\" backend, which this popflow was built without", parallel$backend),
             if (parallel$backend == "gloo") {
               "install Debian's libgloo-dev (tools/install.sh does) and reinstall popflow"
             } else {
               "reinstall popflow with POPFLOW_LIBTORCH pointing at a CUDA LibTorch that has NCCL (and nccl.h)"
             })
  }
  if (parallel$backend == "gloo" && device != "cpu") {
    pf_abort("parallel", "uses the \"gloo\" backend, which trains on CPUs", "use device = \"cpu\", or backend = \"nccl\" on GPUs")
  }
  if (parallel$backend == "nccl" && !startsWith(device, "cuda")) {
    pf_abort("parallel", "uses the \"nccl\" backend, which trains on GPUs", "use device = \"cuda:N\", or backend = \"gloo\"")
  }
  if (is.null(parallel$workers)) {
    if (parallel$launcher == "none") {
      pf_abort("parallel", "found no launcher's variables (RANK and WORLD_SIZE, or SLURM_PROCID and SLURM_NTASKS)",
               "start the script once per rank with srun or torchrun, give ParallelParam(rank = , world_size = ), or ParallelParam(workers = 2) to start workers on this machine")
    }
    if (is.null(parallel$address)) {
      pf_abort("parallel", "does not know where rank 0 runs: SLURM runs the ranks on several nodes and MASTER_ADDR is unset",
               "export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) before srun, or give ParallelParam(address = )")
    }
  }
  parallel
}

# What the engine needs to join the process group as `rank` (src/r_glue.h join_from_r()),
# and this rank's local rank (R-side only: rank_config()).
engine_parallel <- function(parallel, rank, port) {
  list(backend = parallel$backend, rank = rank, world_size = parallel$world_size, address = parallel$address,
       port = port, timeout = parallel$timeout, version = popflow_version(), local_rank = parallel$local_rank %||% rank)
}

# The engine configuration of one rank: NCCL takes one GPU per rank, so
# device "cuda" becomes the GPU of the rank's local rank ("cuda:N" stays).
rank_config <- function(config, parallel) {
  if (!is.null(parallel) && identical(parallel$backend, "nccl") && identical(config$training$device, "cuda")) {
    config$training$device <- sprintf("cuda:%d", parallel$local_rank)
  }
  config
}

# This popflow's version, which every rank must share (a function, so that a
# test can make one rank claim another).
popflow_version <- function() as.character(utils::packageVersion("popflow"))

# Runs engine_fit(progress, every, metadata, parallel) as the ranks of
# `parallel`: in this process for a launched script (rank 0 alone shows
# progress), else on workers started here. Returns the engine's result (rank 0's).
parallel_fit <- function(parallel, engine_fit, every, metadata, verbose, steps) {
  if (is.null(parallel$workers)) {
    progress <- if (verbose && parallel$rank == 0) training_progress(steps) else NULL
    res <- engine_fit(progress$update, every, metadata, engine_parallel(parallel, parallel$rank, parallel$port))
    if (!is.null(progress)) progress$done()
    return(res)
  }
  port <- parallel$port %||% free_port()
  if (!is.null(parallel$port) && !port_free(port)) {
    pf_abort("parallel", sprintf("asks for port %d, which is in use on this machine", port),
             "give ParallelParam(port = ) another port, or leave `port` out to use a free one")
  }
  workers <- start_workers(parallel$workers, parallel$timeout)
  on.exit(stop_workers(workers), add = TRUE)
  if (verbose) {
    message(sprintf("Training on %d workers (%s, %d thread%s each)", parallel$workers, parallel$backend,
                    parallel$threads, if (parallel$threads == 1) "" else "s"))
  }
  out <- tryCatch(
    parallel::clusterApply(workers$cluster, seq_len(parallel$workers) - 1L, worker_fit, engine_fit = engine_fit,
                           every = every, metadata = metadata, settings = engine_parallel(parallel, 0L, port)),
    error = function(e) {
      pf_abort("parallel", sprintf("lost a worker: its R process ended during training (%s)", conditionMessage(e)),
               "see whether the machine ran out of memory or the process was killed; the last checkpoint (if any) resumes the fit")
    })
  failed <- Filter(function(o) !isTRUE(o$ok), out)
  if (length(failed)) {
    # The cause, not the others' reports of a peer that went away.
    causes <- Filter(function(o) !grepl("lost contact", o$message, fixed = TRUE), failed)
    first <- if (length(causes)) causes[[1]] else failed[[1]]
    stop(sprintf("data-parallel training failed on worker %d of %d (rank %d): %s", first$rank + 1L, parallel$workers,
                 first$rank, first$message), call. = FALSE)
  }
  workers$done <- TRUE
  out[[1]]$result
}

# One worker's share: the engine's fit as `rank`; errors come back as values so
# that the main process can tell the cause from its consequences.
worker_fit <- function(rank, engine_fit, every, metadata, settings) {
  settings$rank <- rank
  settings$local_rank <- rank  # the workers run on this machine
  tryCatch({
    res <- engine_fit(NULL, every, metadata, settings)
    if (rank != 0) res$bytes <- NULL  # the replicas are rank 0's
    list(ok = TRUE, rank = rank, result = res)
  }, error = function(e) list(ok = FALSE, rank = rank, message = conditionMessage(e)))
}

# A TCP port nobody listens on here (probed without touching R's random numbers).
free_port <- function() {
  start <- as.integer((Sys.getpid() * 7919 + floor(as.numeric(Sys.time()) * 1000) %% 10007) %% 20000)
  for (i in 0:199) {
    port <- 20000L + (start + i * 97L) %% 20000L
    if (port_free(port)) return(port)
  }
  pf_abort("parallel", "found no free TCP port between 20000 and 40000", "give ParallelParam(port = ) a free port")
}

port_free <- function(port) {
  s <- tryCatch(serverSocket(port), error = function(e) NULL, warning = function(w) NULL)
  if (is.null(s)) return(FALSE)
  close(s)
  TRUE
}

# `n` fresh R processes (PSOCK) with this session's library paths and
# popflow loaded, of this session's version. `rscript`: for tests.
start_workers <- function(n, timeout, rscript = file.path(R.home("bin"), "Rscript")) {
  cluster <- tryCatch(
    parallel::makePSOCKcluster(n, rscript = rscript, setup_timeout = max(timeout, 1)),
    error = function(e) {
      pf_abort("parallel", sprintf("could not start %d worker%s (%s)", n, if (n == 1) "" else "s", conditionMessage(e)),
               "check that Rscript runs on this machine and that there is memory for the workers; lower `workers`")
    })
  workers <- new.env()
  workers$cluster <- cluster
  workers$done <- FALSE
  workers$pids <- unlist(parallel::clusterCall(cluster, Sys.getpid))
  # Functions of the base environment: the workers have no popflow to unserialize ours with yet.
  set_libs <- function(libs) invisible(.libPaths(libs))
  environment(set_libs) <- baseenv()
  load_popflow <- function() {
    ok <- suppressWarnings(requireNamespace("popflow", quietly = TRUE))
    if (ok) as.character(utils::packageVersion("popflow")) else NA_character_
  }
  environment(load_popflow) <- baseenv()
  versions <- tryCatch({
    parallel::clusterCall(cluster, set_libs, .libPaths())
    unlist(parallel::clusterCall(cluster, load_popflow))
  }, error = function(e) {
    stop_workers(workers)
    pf_abort("parallel", sprintf("started workers that then failed (%s)", conditionMessage(e)),
             "check that R runs on this machine and that there is memory for the workers")
  })
  mine <- popflow_version()
  if (anyNA(versions) || any(versions != mine)) {
    stop_workers(workers)
    pf_abort("parallel", sprintf("started workers that %s, not popflow %s of this session",
                                 if (anyNA(versions)) "cannot load popflow" else
                                   sprintf("load popflow %s", paste(unique(versions[versions != mine]), collapse = ", ")),
                                 mine),
             "install one popflow version in the libraries of .libPaths(), which the workers use")
  }
  workers
}

# Shuts the workers down: politely when their work is done, else (an error,
# an interrupt) by ending their processes first, so no worker trains on.
stop_workers <- function(workers) {
  if (is.null(workers$cluster)) return(invisible())
  if (!isTRUE(workers$done) && length(workers$pids)) tools::pskill(workers$pids)
  try(parallel::stopCluster(workers$cluster), silent = TRUE)
  workers$cluster <- NULL
  invisible()
}

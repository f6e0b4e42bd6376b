# Resuming training: a fitted model (or a model file, e.g. a checkpoint)
# carries its optimiser state; fitFlow(..., resume = ) continues from its last
# completed step. Every step's randomness depends only on (seed, step), so on
# CPU with one thread a resumed run matches an uninterrupted one exactly.

# `resume` as a fitted model with a training state, or NULL.
resume_model <- function(resume) {
  if (is.null(resume)) return(NULL)
  if (is.character(resume)) {
    if (length(resume) != 1 || is.na(resume) || !file.exists(resume)) {
      pf_abort("resume", sprintf("must be a fitted model or the path of a saved model, not %s", deparse1(resume)),
               "pass the result of fitFlow(), or a file written by saveFlow() or by a checkpoint")
    }
    resume <- loadFlow(resume)
  }
  if (!inherits(resume, "popflow_flow")) {
    pf_abort("resume", sprintf("must be a fitted model or the path of a saved model, not a %s", class(resume)[1]),
             "pass the result of fitFlow(), or a file written by saveFlow() or by a checkpoint")
  }
  resume <- as_model(resume, "resume")
  if (inherits(resume, "popflow_icnn")) icnn_not_resumable()
  if (inherits(resume$method, "MetricFMParam")) {
    pf_abort("resume", "is a metric flow matching model, which cannot be resumed: its interpolant network is not kept",
             "fit again with the total number of steps (TrainingParam(steps = ...))")
  }
  if (pf_training_state(resume$bytes)$steps == 0) {
    pf_abort("resume", "holds no training state (it was saved with saveFlow(resumable = FALSE) or by an older popflow)",
             "fit the model again, or resume from a checkpoint file")
  }
  resume
}

# Method, network and step count of a resumed fit against the model it continues.
check_resume_settings <- function(resume, method, network, training) {
  if (is.null(resume)) return(invisible())
  if (!identical(class(resume), model_class(method))) {
    pf_abort("resume", sprintf("is a %s model, not one of method \"%s\"", method_label(resume$method),
                               attr(method, "kind")),
             "leave `method` out to use the resumed model's method")
  }
  if (!identical(unclass(resume$method), unclass(method)) || !identical(class(resume$method)[1], class(method)[1])) {
    pf_abort("resume", sprintf("was fitted with method \"%s\" and other settings than the `method` given",
                               attr(resume$method, "kind")),
             "leave `method` out (the resumed model's method is used) or pass method = resume$method")
  }
  if (!identical(unclass(resume$network), unclass(network))) {
    pf_abort("resume", "was fitted with a different network than the `network` given",
             "leave `network` out (the resumed model's network is used) or pass network = resume$network")
  }
  if (training$steps <= resume$steps_done) {
    pf_abort("training", sprintf("asks for %d steps in total but `resume` has already completed %d",
                                 training$steps, resume$steps_done),
             sprintf("raise steps in TrainingParam() above %d (it counts all steps, old and new)", resume$steps_done))
  }
  invisible()
}

# Features (and, for flows, snapshot times) of the data against the resumed model.
check_resume_data <- function(resume, x, times = NULL) {
  if (is.null(resume)) return(invisible())
  if (ncol(x) != resume$n_features || !identical(colnames(x), resume$feature_names)) {
    what <- if (ncol(x) == resume$n_features) "other feature names" else sprintf("%d features", ncol(x))
    pf_abort("resume", sprintf("was fitted on %d features; the data have %s", resume$n_features, what),
             "resume with the same features (columns, in the same order) as the model was fitted on")
  }
  if (!is.null(times) && !identical(as.numeric(times), as.numeric(resume$times))) {
    pf_abort("resume", sprintf("was fitted on snapshots at %s, the data have %s", paste(resume$times, collapse = ", "),
                               paste(times, collapse = ", ")),
             "resume with data at the same time points")
  }
  invisible()
}

# R's fields as stored in checkpoint files; loadFlow() fills in the loss and
# step count from the file's training state.
checkpoint_metadata <- function(fields, training) {
  if ((training$checkpoint_every %||% 0) == 0) return(raw(0))
  fields[c("loss", "steps_done", "status", "seconds")] <- list(numeric(0), 0, "checkpoint", NA_real_)
  serialize(fields, NULL)
}

# A finished fit's fields: the loss history and steps count the whole run, old
# and new; the validation record only this run's (the model file keeps none).
fitted_fields <- function(fields, res, resume) {
  fields$loss <- res$loss
  fields$steps_done <- res$steps_done
  fields$status <- res$status
  fields$seconds <- res$seconds + if (is.null(resume)) 0 else sum(resume$seconds, na.rm = TRUE)
  fields$validation <- validation_record(fields$validation, res)
  # Only when asked for (TrainingParam(step_graph = TRUE)): "captured", or why not.
  if (nzchar(res$step_graph %||% "")) fields$step_graph <- res$step_graph
  fields
}

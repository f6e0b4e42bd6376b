# Files popflow writes and reads (saveFlow(), loadFlow(), checkpoints): every
# problem R's connections would report in their own words ("cannot open the
# connection", "unknown input format") is caught first and said in popflow's,
# naming the file, what it is, and what to do.

# A path to write to: one non-empty string, not a folder, in a folder that
# exists and can be written. Returns the expanded path.
check_output_file <- function(file, arg = "file", example = "fit.popflow") {
  if (!is.character(file) || length(file) != 1 || is.na(file) || !nzchar(trimws(file))) {
    pf_abort(arg, sprintf("must be the path of the file to write, not %s", deparse1(file)),
             sprintf("give a file name, e.g. %s = \"%s\"", arg, example))
  }
  path <- path.expand(file)
  if (dir.exists(path)) {
    pf_abort(arg, sprintf("is '%s', a folder, not a file", file),
             sprintf("give a file name inside it, e.g. file.path(\"%s\", \"%s\")", file, example))
  }
  folder <- dirname(path)
  if (!dir.exists(folder)) {
    pf_abort(arg, sprintf("is in the folder '%s', which does not exist", folder),
             sprintf("create it first (dir.create(\"%s\", recursive = TRUE)) or write the file elsewhere", folder))
  }
  if (file.access(folder, 2) != 0 || (file.exists(path) && file.access(path, 2) != 0)) {
    pf_abort(arg, sprintf("cannot be written: no permission to write %s",
                          if (file.exists(path)) sprintf("over '%s'", file) else sprintf("in the folder '%s'", folder)),
             "write the file to a folder you may write to, e.g. file.path(tempdir(), \"fit.popflow\")")
  }
  path
}

# Writes `bytes` to `path`; a failure (a full disk, a path R cannot open)
# becomes popflow's error with R's reason.
write_bytes <- function(bytes, path, arg = "file") {
  reason <- NULL
  ok <- tryCatch(withCallingHandlers({
    writeBin(bytes, path)
    TRUE
  }, warning = function(w) {
    reason <<- conditionMessage(w)
    invokeRestart("muffleWarning")
  }), error = function(e) {
    reason <<- reason %||% conditionMessage(e)
    FALSE
  })
  if (!ok) {
    pf_abort(arg, sprintf("could not be written to '%s' (%s)", path, reason),
             "check that the folder exists, can be written and has free space, or write the file elsewhere")
  }
  invisible(path)
}

# A path to read a model from: an existing, non-empty file (not a folder).
check_model_file <- function(file, arg = "file") {
  if (!is.character(file) || length(file) != 1 || is.na(file) || !nzchar(trimws(file))) {
    pf_abort(arg, sprintf("must be the path of a model file, not %s", deparse1(file)),
             "give the path of a file written by saveFlow() or by a checkpoint")
  }
  path <- path.expand(file)
  if (dir.exists(path)) {
    inside <- list.files(path, pattern = "\\.popflow$")
    pf_abort(arg, sprintf("is '%s', a folder, not a model file", file),
             if (length(inside)) sprintf("give a file inside it, e.g. file.path(\"%s\", \"%s\")", file, inside[1])
             else "give the path of a file written by saveFlow() or by a checkpoint")
  }
  if (!file.exists(path)) {
    pf_abort(arg, sprintf("is '%s', which does not exist", file),
             sprintf("check the path (relative paths start from getwd(), here '%s')", getwd()))
  }
  if (file.access(path, 4) != 0) {
    pf_abort(arg, sprintf("is '%s', which cannot be read (no permission)", file), "check the file's permissions")
  }
  if (file.size(path) == 0) {
    pf_abort(arg, sprintf("is '%s', an empty file", file),
             "it was not written completely: save the model again (saveFlow()) or use an earlier checkpoint")
  }
  path
}

# What a file that is not a popflow model file is, when R can tell: an R data
# file (saveRDS() or save()), with what it holds. NULL otherwise.
r_data_file <- function(path, bytes) {
  head <- bytes[seq_len(min(5, length(bytes)))]
  starts <- function(x) length(head) >= length(x) && identical(head[seq_along(x)], as.raw(x))
  compressed <- starts(c(0x1f, 0x8b)) || starts(c(0x42, 0x5a, 0x68)) || starts(c(0xfd, 0x37, 0x7a, 0x58, 0x5a))
  plain <- starts(c(0x58, 0x0a)) || starts(c(0x41, 0x0a)) || starts(c(0x42, 0x0a))
  workspace <- starts(charToRaw("RDX")) || starts(charToRaw("RDA"))
  if (!(compressed || plain || workspace)) return(NULL)
  value <- tryCatch(readRDS(path), error = function(e) NULL)
  if (!is.null(value)) return(list(kind = "rds", value = value))
  if (tryCatch({
    load(path, envir = new.env())
    TRUE
  }, error = function(e) FALSE)) {
    return(list(kind = "rdata"))
  }
  NULL
}

# loadFlow()'s error for a file that is not a popflow model file.
not_a_model_file <- function(file, path, bytes, reason, arg = "file") {
  data <- r_data_file(path, bytes)
  if (!is.null(data) && data$kind == "rds" && inherits(data$value, "popflow_flow")) {
    pf_abort(arg, sprintf("is '%s', an R data file written by saveRDS() that holds a popflow model, not a saveFlow() file",
                          file),
             sprintf("read it with readRDS(\"%s\"), or save models with saveFlow(fit, file) and load them with loadFlow()",
                     file))
  }
  if (!is.null(data)) {
    holds <- if (data$kind == "rds") sprintf(" that holds a %s", class(data$value)[1]) else ""
    pf_abort(arg, sprintf("is '%s', an R data file (%s)%s, not a popflow model", file,
                          if (data$kind == "rds") "saveRDS()" else "save()", holds),
             sprintf("read it with %s; loadFlow() reads files written by saveFlow() or by a checkpoint",
                     if (data$kind == "rds") "readRDS()" else "load()"))
  }
  pf_abort(arg, sprintf("is not a loadable popflow model: cannot load '%s': %s", file, reason),
           "load a file written completely by saveFlow() or by a checkpoint (copy it again if it was truncated)")
}

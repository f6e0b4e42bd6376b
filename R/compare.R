# compareToBaselines(): a table of evaluateFlow() read as "how far from doing
# nothing, how far from perfect": each model against the strongest fair
# baseline and the noise floor, in numbers and in sentences.

# Metrics of evaluateFlow() and which way is better.
higher_is_better <- c(W1 = FALSE, W2 = FALSE, MMD = FALSE, energy = FALSE, mean_R2 = TRUE, corr_r = TRUE,
                      R2_all_genes = TRUE, R2_top_genes = TRUE)

#' Compare models with the strongest fair baseline and the noise floor
#'
#' Reads a table of [evaluateFlow()] and says, for every model and metric,
#' how the model compares with the strongest fair baseline and how far it is
#' from the noise floor. The fair baselines are "no change", "mean shift" and
#' "label mean shift": they do not use the observed target cells. The
#' "oracle shift" moves the source cells onto the true target mean, so it
#' uses the answer: it is reported beside the others as a marker of how far
#' from perfect, never chosen as the baseline to beat. The "noise floor" is
#' what a perfect model would score at this sample size.
#'
#' With populations (a `population` column), every prediction's metric is
#' first averaged over the populations of the model's rows; the strongest
#' fair baseline is the one with the best average, and `populations_won`
#' counts the populations in which the model beats that baseline.
#'
#' @param evaluation A data.frame from [evaluateFlow()], or several bound
#'   with [rbind()] (e.g. one per model); baseline rows that appear more than
#'   once for a population must agree (bind one set of baselines, e.g. by
#'   evaluating the other models with `baselines = FALSE`, or with only the
#'   baselines they add).
#' @param headline The metric quoted in each model's one-line verdict.
#' @return A data.frame of class `popflow_comparison`, one row per model and
#'   metric: `model`, `metric`, `better` (`"lower"` or `"higher"`), `value`
#'   (the model's), `best_baseline` and `baseline_value` (the strongest fair
#'   baseline), `margin` (how much better the model is, in the metric's units;
#'   negative when worse), `gap_closed` (the margin as a fraction of the gap
#'   between that baseline and the noise floor: 0 is no better than the
#'   baseline, 1 is at the noise floor; `NA` when the baseline is not worse
#'   than the floor; above 1 when the model passes the floor, which is
#'   estimated from half-size samples, see [evaluateFlow()]), `oracle_shift`, `noise_floor`, `populations_won` (e.g.
#'   `"4/6"`, `NA` without populations) and `sentence`. Its attribute
#'   `"verdicts"` holds one sentence per model; `print()` shows the table and
#'   the verdicts.
#' @examples
#' set.seed(1)
#' source <- matrix(rnorm(400), ncol = 2)
#' target <- source %*% matrix(c(0, 1, -1, 0), 2) + 3
#' fit <- fitFlow(source, target, training = TrainingParam(steps = 300), verbose = FALSE)
#' cmp <- compareToBaselines(evaluateFlow(fit, source, target))
#' cmp
#' cmp$sentence[cmp$metric == "W2"]
#' @export
compareToBaselines <- function(evaluation, headline = "W1") {
  if (!is.data.frame(evaluation) || !("prediction" %in% names(evaluation)) || !nrow(evaluation)) {
    pf_abort("evaluation", "must be a non-empty data.frame with a `prediction` column",
             "use the result of evaluateFlow()")
  }
  metrics <- intersect(names(higher_is_better), names(evaluation))
  if (!length(metrics)) {
    pf_abort("evaluation", "has none of the metric columns of evaluateFlow()", "use the result of evaluateFlow()")
  }
  if (!is.character(headline) || length(headline) != 1 || !(headline %in% metrics)) {
    pf_abort("headline", sprintf("must be one metric of `evaluation` (%s), not %s", paste(metrics, collapse = ", "),
                                 deparse1(headline)))
  }
  prediction <- as.character(evaluation$prediction)
  population <- if ("population" %in% names(evaluation)) as.character(evaluation$population) else rep("", length(prediction))
  models <- setdiff(unique(prediction), baseline_names)
  if (!length(models)) pf_abort("evaluation", "has no model rows, only baselines", "evaluate a model with evaluateFlow()")
  fair <- intersect(fair_baseline_names, prediction)
  if (!length(fair)) {
    pf_abort("evaluation", "has no fair baseline rows (\"no change\", \"mean shift\", \"label mean shift\")",
             "evaluate with baselines = TRUE")
  }
  is_base <- prediction %in% baseline_names
  key <- paste(population, prediction, sep = "\r")
  for (k in unique(key[is_base & duplicated(key)])) {
    rows <- as.matrix(evaluation[key == k, metrics, drop = FALSE])
    if (any(abs(sweep(rows, 2, rows[1, ])) > 1e-10, na.rm = TRUE)) {
      p <- strsplit(k, "\r", fixed = TRUE)[[1]]
      pf_abort("evaluation", sprintf("has different \"%s\" rows%s", p[2], if (nzchar(p[1])) sprintf(" for population '%s'", p[1]) else ""),
               "bind one set of baseline rows: evaluate the other models with baselines = FALSE (or only the baselines they add)")
    }
  }
  keep <- !(is_base & duplicated(key))
  evaluation <- evaluation[keep, , drop = FALSE]
  prediction <- prediction[keep]
  population <- population[keep]
  # A prediction's value of a metric in each population (named by population).
  values <- function(pred, metric, pops) {
    i <- which(prediction == pred)
    stats::setNames(evaluation[[metric]][i], population[i])[pops]
  }
  average <- function(v) if (all(is.na(v))) NA_real_ else mean(v, na.rm = TRUE)
  rows <- list()
  for (m in models) {
    pops <- unique(population[prediction == m])
    for (metric in metrics) {
      higher <- higher_is_better[[metric]]
      value <- average(values(m, metric, pops))
      base <- vapply(fair, function(b) average(values(b, metric, pops)), numeric(1))
      best <- if (all(is.na(base))) 1L else if (higher) which.max(base) else which.min(base)
      reference <- function(b) if (b %in% prediction) average(values(b, metric, pops)) else NA_real_
      sign <- if (higher) 1 else -1
      margin <- sign * (value - base[[best]])
      floor <- reference("noise floor")
      gap <- sign * (floor - base[[best]])
      won <- NA_character_
      if (length(pops) > 1 || nzchar(pops[1])) {
        d <- sign * (values(m, metric, pops) - values(fair[best], metric, pops))
        won <- sprintf("%d/%d", sum(d > 0, na.rm = TRUE), sum(!is.na(d)))
      }
      rows[[length(rows) + 1]] <- data.frame(
        model = m, metric = metric, better = if (higher) "higher" else "lower", value = value,
        best_baseline = fair[best], baseline_value = base[[best]], margin = margin,
        gap_closed = if (is.finite(gap) && gap > 0) margin / gap else NA_real_,
        oracle_shift = reference("oracle shift"), noise_floor = floor, populations_won = won,
        stringsAsFactors = FALSE
      )
    }
  }
  out <- do.call(rbind, rows)
  out$sentence <- vapply(seq_len(nrow(out)), function(i) comparison_sentence(out[i, ]), character(1))
  verdicts <- vapply(models, function(m) model_verdict(out[out$model == m, ], headline), character(1))
  structure(out, class = c("popflow_comparison", "data.frame"), verdicts = verdicts)
}

# "MFM beats the strongest fair baseline, mean shift, on W1: 2.95 against 3.21 (8% lower), ..."
comparison_sentence <- function(r) {
  num <- function(x) if (is.na(x)) "NA" else format(signif(x, 4))
  if (is.na(r$value) || is.na(r$baseline_value)) {
    return(sprintf("%s on %s: not available (%s %s, %s %s).", r$model, r$metric, r$model, num(r$value),
                   r$best_baseline, num(r$baseline_value)))
  }
  beats <- r$margin > 0
  change <- if (r$better == "lower") {
    if (r$baseline_value != 0) sprintf("%s%% %s", format(signif(100 * abs(r$margin / r$baseline_value), 2)), if (beats) "lower" else "higher")
    else sprintf("%s %s", num(abs(r$margin)), if (beats) "lower" else "higher")
  } else {
    sprintf("%s%s", if (beats) "+" else "-", num(abs(r$margin)))
  }
  sign <- if (r$better == "lower") -1 else 1
  past <- function(v) !is.na(r$noise_floor) && sign * (v - r$noise_floor) >= 0
  floor <- if (is.na(r$noise_floor)) {
    ""
  } else if (past(r$value) && past(r$baseline_value)) {
    sprintf("; both are past the noise floor (%s), so at this sample size %s hardly tells them apart",
            num(r$noise_floor), r$metric)
  } else if (beats && !is.na(r$gap_closed)) {
    sprintf(", closing %.0f%% of the gap to the noise floor (%s)", 100 * r$gap_closed, num(r$noise_floor))
  } else {
    sprintf("; noise floor %s", num(r$noise_floor))
  }
  sprintf("%s %s the strongest fair baseline, %s, on %s: %s against %s (%s)%s%s%s.", r$model,
          if (beats) "beats" else "does not beat", r$best_baseline, r$metric, num(r$value), num(r$baseline_value),
          change, floor, if (is.na(r$oracle_shift)) "" else sprintf("; oracle shift %s", num(r$oracle_shift)),
          if (is.na(r$populations_won)) "" else sprintf("; better in %s populations", r$populations_won))
}

# One sentence per model: on how many metrics it beats the strongest fair baseline, and its headline metric.
model_verdict <- function(rows, headline) {
  ok <- !is.na(rows$margin)
  wins <- rows$metric[ok & rows$margin > 0]
  losses <- rows$metric[ok & rows$margin <= 0]
  count <- if (!length(losses)) {
    sprintf("on all %d metrics", length(wins))
  } else if (!length(wins)) {
    sprintf("on none of the %d metrics", length(losses))
  } else if (length(wins) <= length(losses)) {
    sprintf("on %d of %d metrics (%s)", length(wins), length(wins) + length(losses), paste(wins, collapse = ", "))
  } else {
    sprintf("on %d of %d metrics (not on %s)", length(wins), length(wins) + length(losses),
            paste(losses, collapse = ", "))
  }
  sprintf("%s beats the strongest fair baseline %s. %s", rows$model[1], count, rows$sentence[rows$metric == headline])
}

#' @export
print.popflow_comparison <- function(x, ...) {
  cat("Each model against the strongest fair baseline (no change, mean shift, label mean shift) and the noise floor\n")
  cat("(the oracle shift uses the true target mean: a marker of how far from perfect, not a baseline)\n")
  shown <- as.data.frame(unclass(x)[setdiff(names(x), "sentence")], stringsAsFactors = FALSE, optional = TRUE)
  for (nm in names(shown)[vapply(shown, is.numeric, logical(1))]) {
    shown[[nm]] <- formatC(shown[[nm]], digits = 3, format = "g")
  }
  if ("populations_won" %in% names(shown) && all(is.na(shown$populations_won))) shown$populations_won <- NULL
  print(shown, row.names = FALSE)
  verdicts <- attr(x, "verdicts")
  if (length(verdicts)) cat("\n", paste(strwrap(verdicts, exdent = 2), collapse = "\n"), "\n", sep = "")
  invisible(x)
}

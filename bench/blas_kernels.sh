#!/bin/sh
# What OpenBLAS's choice of kernels costs popflow on this CPU: popflow_step_limits (the I-CFM
# step and its matrix products, the four rows of the README's table) and popflow_predict_bench
# (40,000 EMT cells moved 0 -> 3, dopri5 and rk4 with 20 steps), each run with the kernels
# OpenBLAS picks itself (OPENBLAS_CORETYPE unset) and with each named kernel set, alternating,
# RUNS times, one thread. Where Rscript is present, also R's own 2000 x 2000 double product
# (3 repeats, seconds), once more with the first named kernel set only in an Renviron file, which
# R reads after OpenBLAS has loaded. Prints one JSON line per run; blasInfo() in R says which
# kernels run.
#   sh bench/blas_kernels.sh [BUILD_DIR (build/cpp)] [RUNS (3)] > runs.jsonl
# Environment: BK_CORETYPES ("SkylakeX Haswell": OPENBLAS_CORETYPE values to compare with the
# default), BK_PREDICT_DIR (a folder holding bench/predict_peer.sh's model.popflow and cells.csv;
# without it the prediction runs are left out).
set -eu
build=${1:-build/cpp}
runs=${2:-3}
coretypes=${BK_CORETYPES:-SkylakeX Haswell}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive OPENBLAS_NUM_THREADS=1
# $1: "default" (OpenBLAS's own choice) or an OPENBLAS_CORETYPE value; the rest: the command.
with_kernels() {
  ct=$1
  shift
  if [ "$ct" = default ]; then env -u OPENBLAS_CORETYPE "$@"; else env OPENBLAS_CORETYPE="$ct" "$@"; fi
}
r=1
while [ "$r" -le "$runs" ]; do
  for row in "64 256 2000" "64 1024 1000" "256 256 1000" "256 1024 200"; do
    set -- $row
    for ct in default $coretypes; do
      out=$(with_kernels "$ct" "$build/popflow_step_limits" --width "$1" --batch "$2" --steps "$3" | tail -1)
      echo "{\"bench\": \"step_limits\", \"coretype\": \"$ct\", \"run\": $r, \"result\": $out}"
    done
  done
  if [ -n "${BK_PREDICT_DIR:-}" ]; then
    for solver in dopri5 rk4; do
      for ct in default $coretypes; do
        out=$(with_kernels "$ct" "$build/popflow_predict_bench" --model "$BK_PREDICT_DIR/model.popflow" \
          --cells "$BK_PREDICT_DIR/cells.csv" --from 0 --to 3 --solver "$solver" --steps 20 --reps 1 | tail -1)
        echo "{\"bench\": \"predict\", \"coretype\": \"$ct\", \"run\": $r, \"result\": $out}"
      done
    done
  fi
  if command -v Rscript >/dev/null 2>&1; then
    product='set.seed(1); a <- matrix(rnorm(4e6), 2000); cat(system.time(for (i in 1:3) a %*% a)[["elapsed"]])'
    first=${coretypes%% *}
    renviron=$(mktemp)
    echo "OPENBLAS_CORETYPE=$first" > "$renviron"
    for ct in default $coretypes "renviron:$first"; do
      case "$ct" in
        renviron:*) s=$(env -u OPENBLAS_CORETYPE R_ENVIRON_USER="$renviron" Rscript -e "$product") ;;
        *) s=$(with_kernels "$ct" Rscript -e "$product") ;;
      esac
      echo "{\"bench\": \"r_product\", \"coretype\": \"$ct\", \"run\": $r, \"seconds\": $s}"
    done
    rm -f "$renviron"
  fi
  r=$((r + 1))
done

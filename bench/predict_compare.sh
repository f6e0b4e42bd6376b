#!/bin/sh
# Two builds of popflow_predict_bench (this change, and a base build such as main's) alternated on
# the CPU, RUNS times each, dopri5 and rk4 with 20 steps, one thread: 40,000 EMT cells moved from
# time 0 to 3 with bench/predict_peer.sh's model (PP_WORK: model.popflow and cells.csv; that
# script writes them). Prints one JSON line per run with the process's minor page faults
# (GNU time), under OPENBLAS_CORETYPE as the environment sets it.
#   sh bench/predict_compare.sh NEW_BINARY BASE_BINARY [RUNS (5)] > runs.jsonl
set -eu
new=$1
base=$2
runs=${3:-5}
work=${PP_WORK:-/tmp/popflow_predict_peer}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
faults=$(mktemp)
r=1
while [ "$r" -le "$runs" ]; do
  for version in new base; do
    if [ "$version" = new ]; then bin=$new; else bin=$base; fi
    for solver in dopri5 rk4; do
      out=$(/usr/bin/time -o "$faults" -f "%R" "$bin" --model "$work/model.popflow" --cells "$work/cells.csv" \
        --from 0 --to 3 --solver "$solver" --steps 20 --reps 1 | tail -1)
      echo "{\"version\": \"$version\", \"coretype\": \"${OPENBLAS_CORETYPE:-default}\", \"run\": $r, \"minor_faults\": $(tail -1 "$faults"), \"result\": $out}"
    done
  done
  r=$((r + 1))
done
rm -f "$faults"

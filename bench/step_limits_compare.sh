#!/bin/sh
# Alternates two builds of popflow_step_limits (this change, and a base build
# such as main's) over the four I-CFM shapes, RUNS times each, so that both
# meet the same load on a shared machine; then prints each row's median run.
#   bench/step_limits_compare.sh NEW_BINARY BASE_BINARY [RUNS] > runs.log
# The medians (by step / products) follow the runs as lines starting "median".
set -eu
new=$1
base=$2
runs=${3:-5}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
for shape in "64 256 2000" "64 1024 1000" "256 256 1000" "256 1024 200"; do
  set -- $shape
  r=0
  while [ "$r" -lt "$runs" ]; do
    echo "new $("$new" --width "$1" --batch "$2" --steps "$3")"
    echo "base $("$base" --width "$1" --batch "$2" --steps "$3")"
    r=$((r + 1))
  done
done | tee /dev/stderr | python3 -c '
import json, sys
rows = {}
for line in sys.stdin:
    who, js = line.split(" ", 1)
    d = json.loads(js)
    rows.setdefault((who, d["width"], d["batch"]), []).append(d)
for (who, w, b), ds in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    ds.sort(key=lambda d: d["step_over_products"])
    print("median", who, json.dumps(ds[len(ds) // 2]))
'

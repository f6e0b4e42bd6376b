#!/bin/sh
# Two builds of popflow_mfm_bench (this change, and a base build such as main's) alternated on the
# CPU, RUNS times each, so that both meet the same load; prints every run's steady steps/s and
# final loss, then each build's median. Default: a small MFM step (10 populations of 256 cells,
# width-64 decoder, k = 10), where per-step overhead such as memory allocation shows; pass other
# popflow_mfm_bench options after the three arguments (e.g. none of the defaults: the letters
# configuration, "--steps 30 --report-every 10"). One thread unless MFM_THREADS says otherwise.
#   sh bench/mfm_cpu_compare.sh NEW_BINARY BASE_BINARY [RUNS (5)] [OPTIONS...] > runs.log
set -eu
new=$1
base=$2
runs=${3:-5}
shift 2
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- --populations-per-step 10 --cells 256 --populations 12 --width 64 --k 10 --steps 300
threads=${MFM_THREADS:-1}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
r=0
while [ "$r" -lt "$runs" ]; do
  echo "new $("$new" "$@" --threads "$threads" --json 2>/dev/null | tail -1)"
  echo "base $("$base" "$@" --threads "$threads" --json 2>/dev/null | tail -1)"
  r=$((r + 1))
done | tee /dev/stderr | /usr/bin/python3 "$(dirname "$0")/steps_medians.py"

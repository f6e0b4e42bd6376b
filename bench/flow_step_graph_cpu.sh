#!/bin/bash
# Staged (TrainConfig::step_graph) against eager I-CFM steps on the CPU, alternated: width 64 /
# batch 256 (3000 steps) and width 256 / batch 1024 (400 steps), --sync-every 25, one thread, on the
# 10-d cells of bench/throughput_torchcfm.py --make-data. Prints the training loop's steps/s and
# the final loss of each run (staged and eager should give the same loss).
#   usage: bash bench/flow_step_graph_cpu.sh [BUILD_DIR (build/cpp)] [REPS (3)]
set -eu
cd "$(dirname "$0")/.."
bin=${1:-build/cpp}/popflow_bench
reps=${2:-3}
data=/tmp/popflow_flow10.csv
[ -x "$bin" ] || { echo "build popflow_bench first (cmake --build build/cpp --target popflow_bench)" >&2; exit 1; }
[ -s "$data" ] || /usr/bin/python3 bench/throughput_torchcfm.py --make-data "$data" > /dev/null
for rep in $(seq "$reps"); do
  for size in "64 256 3000" "256 1024 400"; do
    set -- $size
    for staged in 0 1; do
      OMP_WAIT_POLICY=passive "$bin" "$data" --time-column side --width "$1" --depth 3 --batch "$2" --steps "$3" \
        --sync-every 25 --step-graph "$staged" --json |
        /usr/bin/python3 -c 'import json, sys
d = json.load(sys.stdin)
print("width %d batch %d %s: %.1f steps/s, final loss %s"
      % (d["width"], d["batch"], d["step_graph"] or "eager", d["steps_per_s"], d["final_loss"]))'
    done
  done
done

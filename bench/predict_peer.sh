#!/bin/sh
# Prediction side by side with a peer on the same network: popflow's transport()
# (what predict() runs) against torchdiffeq's odeint on the velocity field
# rebuilt in PyTorch from popflow's own weights (checked on probe points).
# I-CFM on the EMT time course (bench/predict_throughput.R's model), 40,000
# time-0 cells moved to time 3, one thread; dopri5 (atol = rtol = 1e-5, each
# library its own step control) and rk4 with 20 steps (the same 80
# evaluations); the two alternate, PP_REPS (3) times each.
#   PEER_PATH=<folder holding the torchdiffeq package> sh bench/predict_peer.sh [BUILD_DIR] > runs.jsonl
# BUILD_DIR (build/cpp) must hold popflow_predict_bench (CMake). R_LIBS must name popflow's library;
# PEER_PYTHON (/usr/bin/python3) runs the peer.
set -eu
build=${1:-build/cpp}
peer=${PEER_PATH:?set PEER_PATH to a folder holding the torchdiffeq package}
work=${PP_WORK:-/tmp/popflow_predict_peer}
reps=${PP_REPS:-3}
python=${PEER_PYTHON:-/usr/bin/python3}   # Debian's, which has torch
mkdir -p "$work"
# The model and the cells of bench/predict_throughput.R (fitted once, then reused).
PT_REPS=0 PT_MODEL="$work/model.popflow" PT_CELLS_CSV="$work/cells.csv" Rscript bench/predict_throughput.R
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
for solver in dopri5 rk4; do
  mkdir -p "$work/$solver"
  r=0
  while [ "$r" -lt "$reps" ]; do
    "$build/popflow_predict_bench" --model "$work/model.popflow" --cells "$work/cells.csv" --from 0 --to 3 \
      --solver "$solver" --steps 20 --reps 1 --export "$work/$solver"
    PYTHONPATH="$peer" "$python" bench/predict_peer_torchdiffeq.py --dir "$work/$solver" --cells "$work/cells.csv" --reps 1
    r=$((r + 1))
  done
done

#!/bin/sh
# Meta Flow Matching's letters step on the CPU, popflow beside its PyTorch peer in the same run:
# popflow_mfm_bench (CMake build) and bench/mfm_peer_torch.py (Debian's python3-torch, the same
# OpenBLAS), the same model and batch (10 populations x 700 cells a step, GCN on k = 50 graphs,
# width-512 decoder), cached graphs, one thread each, alternated RUNS times so that both meet the
# same load; prints every run and each side's median steady steps/s.
#   sh bench/mfm_cpu_peer.sh [BUILD_DIR (build/cpp)] [RUNS (3)] [STEPS (30)] > runs.log
# Run it with OPENBLAS_CORETYPE set as tools/blas_env.sh would where OpenBLAS runs generic kernels.
set -eu
build=${1:-build/cpp}
runs=${2:-3}
steps=${3:-30}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
here=$(dirname "$0")
r=0
while [ "$r" -lt "$runs" ]; do
  echo "popflow $("$build/popflow_mfm_bench" --steps "$steps" --report-every 10 --threads 1 --json 2>/dev/null | tail -1)"
  echo "pytorch $(/usr/bin/python3 "$here/mfm_peer_torch.py" --device cpu --steps "$steps" --threads 1 --json | tail -1)"
  r=$((r + 1))
done | tee /dev/stderr | /usr/bin/python3 "$here/steps_medians.py"

#!/usr/bin/env bash
# The README's first command: install everything, then run the main job on built-in data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
source tools/blas_env.sh  # the CPU's own BLAS kernels where OpenBLAS does not know it
OMP_WAIT_POLICY=passive Rscript tools/main_job.R

#!/bin/bash
# The letters benchmark at the paper's size on a GPU machine without R (issue 10, item 4): builds
# bench/cli/popflow_letters against PyTorch's bundled CUDA LibTorch, then trains and scores every
# model for 3 seeds at once (one process per seed and model, all sharing the GPU), plus the
# baselines and the noise floor. Output (few files: the device tool brings back at most 8):
# OUTDIR/letters_gpu.jsonl (every process's lines, each with its "seed"), OUTDIR/errors.txt,
# OUTDIR/build.log, OUTDIR/gpu.txt. Summarise here: Rscript bench/letters_gpu_table.R OUTDIR/letters_gpu.jsonl
#
# Prepare on a machine with R (the data is three seeds of bench/letters_csv.R, gzipped, and the
# LEMON headers, which the GPU machine lacks; .gpu/ is git-ignored and travels as a carried path):
#   for s in 1 2 3; do LETTERS_SEED=$s Rscript bench/letters_csv.R /tmp/letters_s$s.csv; done
#   mkdir -p .gpu/lemon_inc && cp -r /usr/include/lemon .gpu/lemon_inc/ && gzip -9c /tmp/letters_s1.csv > .gpu/letters_s1.csv.gz ...
# Run there (the device tool: carry .gpu):
#   bash bench/gpu_letters.sh $OUT
# Settings (environment): STEPS (4000), MODELS (mfm_gcn_k50,mfm_gcn_k10,mfm_mean,cgfm,fm),
# SEEDS (1 2 3), TIME_LIMIT (seconds of training per fit, 300: a safety net, the summary records
# the steps done), VALIDATE_EVERY (500: W2 on the validation letter X; the best step is kept,
# as the reference keeps its best validation-W2 checkpoint), EXTRA (more popflow_letters flags).
set -u
OUTDIR=${1:?usage: bash bench/gpu_letters.sh OUTDIR}
STEPS=${STEPS:-4000}
MODELS=${MODELS:-mfm_gcn_k50,mfm_gcn_k10,mfm_mean,cgfm,fm}
SEEDS=${SEEDS:-1 2 3}
TIME_LIMIT=${TIME_LIMIT:-300}
VALIDATE_EVERY=${VALIDATE_EVERY:-500}
EXTRA=${EXTRA:-}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUTDIR"
start=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUTDIR/gpu.txt" 2>&1
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
{
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DPOPFLOW_LEMON_INCLUDE="$PWD/.gpu/lemon_inc" -DPOPFLOW_BUILD_TESTS=OFF &&
  cmake --build build/cuda -j16 --target popflow_letters
} > "$OUTDIR/build.log" 2>&1 || { tail -40 "$OUTDIR/build.log"; echo "build failed"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

for s in $SEEDS; do gunzip -c ".gpu/letters_s$s.csv.gz" > "/tmp/letters_s$s.csv" & done
wait
bin=build/cuda/popflow_letters
parts=/tmp/letters_parts
rm -rf "$parts" && mkdir -p "$parts"
pids=()
for s in $SEEDS; do
  csv=/tmp/letters_s$s.csv
  # Baselines need no GPU and no training.
  "$bin" --csv "$csv" --seed "$s" --models no_change,mean_shift,oracle_shift,noise_floor --score val,test \
    > "$parts/s${s}_baselines.jsonl" 2> "$parts/s${s}_baselines.err" &
  for m in ${MODELS//,/ }; do
    "$bin" --csv "$csv" --seed "$s" --device cuda --models "$m" --steps "$STEPS" --score val,test \
      --validate-every "$VALIDATE_EVERY" --time-limit "$TIME_LIMIT" $EXTRA \
      > "$parts/s${s}_${m}.jsonl" 2> "$parts/s${s}_${m}.err" &
    pids+=($!)
  done
done
# A progress line every 30 s: how many fits have finished.
while [ "$(jobs -r | wc -l)" -gt 0 ]; do
  sleep 30
  echo "$(( $(date +%s) - start )) s: $(grep -l '"done"' "$parts"/*.jsonl 2>/dev/null | wc -l) of $(ls "$parts"/*.jsonl | wc -l) done; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
done
wait
for s in $SEEDS; do
  for f in "$parts"/s${s}_*.jsonl; do sed "s/^{/{\"seed\": $s, /" "$f"; done
done > "$OUTDIR/letters_gpu.jsonl"
for f in "$parts"/*.err; do [ -s "$f" ] && { echo "== $f"; tail -5 "$f"; }; done | tee "$OUTDIR/errors.txt"
grep '"summary"' "$OUTDIR/letters_gpu.jsonl" | grep '"test"'
echo "total $(( $(date +%s) - start )) s"

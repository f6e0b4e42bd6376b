#!/bin/bash
# Issue 14 in one GPU session (a machine with PyTorch and CUDA but no R): builds, measures and
# writes at most 8 files to OUTDIR (the device tool brings back no more).
#
#   A. Builds, side by side: popflow_mfm_bench and popflow_letters against PyTorch's CUDA
#      LibTorch (CMake), and R itself (tools/gpu_r_bundle.sh's archive, unpacked) with popflow
#      installed into it against the same LibTorch (R CMD INSTALL).
#   B. MFM training throughput, the letters configuration at 10 and 100 populations x 700 cells a
#      step, alone on the GPU: popflow (host checks every step, as before; every 25 steps; the
#      same with TF32; the step captured as one CUDA graph, TF32 off and on, and with the graph
#      batch propagated by gather and scatter-add instead of the sparse product) against bench/mfm_peer_torch.py (eager fp32 reading the loss every step,
#      the reference's habit; eager TF32 with fused Adam; a CUDA graph of the whole step, TF32).
#      Then I-CFM (width 64, batch 256; width 256, batch 1024): popflow eager and captured against
#      TorchCFM's I-CFM on the GPU. First (B0) the staged-step tests, whose GPU case checks that the captured step trains the
#      model the eager GPU step trains (popflow_step_graph_tests, output in session.log).
#   C. GPU training from R: bench/gpu_r_end_to_end.R (with the NCCL backend run as one rank, issue 13).
#   D. Letters at the paper's size, MFM GCN k = 10, 3 seeds, LETTERS_STEPS (2000) steps, TF32 off
#      and on (6 fits sharing the GPU), scored on the unseen Y: whether TF32 moves the metrics.
#   F. (only with PHASES containing F) Exact OT of one minibatch: the auction solver on the GPU
#      against the CPU solvers and POT's ot.emd, n = 1024 and 4096, d = 10 and 50, then OT-CFM
#      steps at batch 1024 and 4096 with each solver (bench/exact_ot.py). PHASES=F alone needs
#      only LEMON's headers carried (the R build then fails harmlessly).
#   G. (only with PHASES containing G) Prediction on the GPU beside torchdiffeq on the same
#      weights (bench/predict_peer.sh's pieces): carry .gpu/peer (a folder holding the
#      torchdiffeq package) and .gpu/predict (model.popflow and cells.csv from that script's
#      work folder, /tmp/popflow_predict_peer). Rows are appended to throughput.jsonl.
#
# Prepare here: sh tools/gpu_r_bundle.sh (writes .gpu/r_bundle.tar.xz) and LEMON's headers
# (mkdir -p .gpu/lemon_inc && cp -r /usr/include/lemon .gpu/lemon_inc/); carry the two
# (.gpu/r_bundle.tar.xz, .gpu/lemon_inc), and for the I-CFM peer TorchCFM's package
# (mkdir -p .gpu/torchcfm_src && cp -r /tmp/torchcfm_peer/torchcfm .gpu/torchcfm_src/ after any
# bench/*_torchcfm.py run here has extracted it; never committed). Run there: bash bench/gpu_session.sh $OUT
# (R there writes the letters CSVs itself, bench/letters_csv.R.)
# Files: gpu.txt, build.log (CMake and R CMD INSTALL), throughput.jsonl, op_counts_cuda.txt (B),
# r_end_to_end.txt, letters_tf32.jsonl, exact_ot_gpu.jsonl (F), session.log (this script's
# progress and errors).
set -u
OUTDIR=${1:?usage: bash bench/gpu_session.sh OUTDIR}
DEADLINE=${DEADLINE:-500}   # seconds: later phases are skipped past it
PHASES=${PHASES:-"B C D"}   # after the builds; E: where the step's time goes; F: exact OT; G: prediction (see below)
has() { case " $PHASES " in *" $1 "*) return 0 ;; esac; return 1; }
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUTDIR"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
log() { echo "$(elapsed) s: $*" | tee -a "$OUTDIR/session.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUTDIR/gpu.txt" 2>&1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$OUTDIR/gpu.txt" 2>&1

# A. Builds.
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
torch_root=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
mkdir -p /tmp/lemon/include && ln -sfn "$PWD/.gpu/lemon_inc/lemon" /tmp/lemon/include/lemon
export PATH=/usr/lib/R/bin:$PATH   # R as the archive unpacks it (Debian's layout)
# Each build is tried once more without CUDA graphs (and, for R, without the distributed layer) if it
# fails: code never compiled against this LibTorch must not cost the session its measurements.
cmake_build() {  # extra CMake options
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DPOPFLOW_LEMON_INCLUDE="$PWD/.gpu/lemon_inc" -DPOPFLOW_BUILD_TESTS=OFF -DPOPFLOW_BUILD_GPU_CHECK=ON "$@" &&
    cmake --build build/cuda -j10 --target popflow_mfm_bench popflow_bench $(has D && echo popflow_letters) \
      $(has F && echo popflow_ot_bench) $(has G && echo popflow_predict_bench) &&
    { cmake --build build/cuda -j10 --target popflow_step_graph_tests || echo "step graph tests: build FAILED"; }
}
(
  cmake_build || { echo "== FAILED; again without CUDA graphs"; cmake_build -DPOPFLOW_CUDA_GRAPHS=OFF; }
) > /tmp/cmake.log 2>&1 &
cmake_pid=$!
(
  tar -xJf .gpu/r_bundle.tar.xz -C / &&
    export LD_LIBRARY_PATH=/opt/popflow-rlibs:${LD_LIBRARY_PATH:-} &&
    mkdir -p /tmp/rlib /root/.R && echo "CXX17FLAGS = -O2 -fPIC" > /root/.R/Makevars &&
    R --version | head -1 && export POPFLOW_LIBTORCH="$torch_root" POPFLOW_LEMON=/tmp/lemon MAKEFLAGS=-j8 &&
    { R CMD INSTALL --no-docs --no-test-load -l /tmp/rlib . ||
      { echo "== FAILED; again without CUDA graphs and the distributed layer"
        POPFLOW_CUDA_GRAPHS=no POPFLOW_DISTRIBUTED=no R CMD INSTALL --no-docs --no-test-load -l /tmp/rlib .; }; }
) > /tmp/r_install.log 2>&1 &
r_pid=$!
wait $cmake_pid && log "CMake build done" || log "CMake build FAILED"
wait $r_pid && log "R and popflow installed" || log "R CMD INSTALL FAILED"
{ echo "== CMake"; grep -m 30 -B2 -A8 -E "error:|FAILED" /tmp/cmake.log; tail -25 /tmp/cmake.log
  echo "== R CMD INSTALL"; grep -m 30 -B2 -A8 -E "error:|FAILED" /tmp/r_install.log; tail -40 /tmp/r_install.log
} > "$OUTDIR/build.log"

# B0. The captured step against the eager one on the GPU (tests/cpp/test_step_graph.cpp), into session.log.
if has B && [ -x build/cuda/popflow_step_graph_tests ]; then
  timeout 120 build/cuda/popflow_step_graph_tests -v >> "$OUTDIR/session.log" 2>&1
  log "step graph tests: exit $?"
fi

# B. Throughput, one program at a time.
bin=build/cuda/popflow_mfm_bench
tp="$OUTDIR/throughput.jsonl"
for p in $(has B && echo 10 100); do
  steps=$([ $p = 10 ] && echo 300 || echo 60)
  if [ -x $bin ]; then
    # sync-every (1: a read every step; 0: every 25), TF32, the step as one CUDA graph (--step-graph),
    # its graph batch propagated by the sparse product or by gather and scatter-add.
    for v in "1 0 0 sparse" "0 0 0 sparse" "0 1 0 sparse" "0 0 1 sparse" "0 1 1 sparse" "0 0 1 scatter"; do
      set -- $v
      timeout 120 $bin --device cuda --populations-per-step $p --populations $p --steps $steps --sync-every $1 \
        --tf32 $2 --step-graph $3 --propagation $4 --json >> "$tp" 2>> "$OUTDIR/session.log"
    done
  fi
  for v in "0 1 0 0" "1 0 1 0" "1 0 0 1"; do
    set -- $v
    timeout 120 python3 bench/mfm_peer_torch.py --device cuda --populations-per-step $p --populations $p \
      --steps $steps --tf32 $1 --read-loss $2 --fused-adam $3 --cuda-graph $4 --json >> "$tp" 2>> "$OUTDIR/session.log"
  done
  log "throughput at $p populations done"
done

# B''. I-CFM steps (flows staged and captured too): popflow eager and captured against TorchCFM's I-CFM
#      on the GPU (bench/throughput_torchcfm.py --device cuda; TorchCFM's torchcfm/ carried in
#      .gpu/torchcfm_src), 10-d cells (source N(0, I), target a two-Gaussian mixture; stdlib only).
if has B && [ -x build/cuda/popflow_bench ]; then
  python3 - > /tmp/flow10.csv <<'PYEOF'
import random
random.seed(0)
print("side," + ",".join(f"x{i + 1}" for i in range(10)))
for side in (0, 1):
    for _ in range(4096):
        s = random.choice((-1.0, 1.0))
        v = [random.gauss(0, 1) if side == 0 else 0.5 * random.gauss(0, 1) + s * c for c in [3.0, 1.0] + [0.0] * 8]
        print(f"{side}," + ",".join(f"{x:.7g}" for x in v))
PYEOF
  for wb in "64 256" "256 1024"; do
    set -- $wb
    for sg in 0 1; do
      timeout 60 build/cuda/popflow_bench /tmp/flow10.csv --time-column side --device cuda --width $1 --depth 3 \
        --batch $2 --steps 3000 --step-graph $sg --json >> "$tp" 2>> "$OUTDIR/session.log"
    done
    TORCHCFM_SRC=$PWD/.gpu/torchcfm_src timeout 90 python3 bench/throughput_torchcfm.py --data /tmp/flow10.csv \
      --method icfm --device cuda --width $1 --depth 3 --batch $2 --steps 3000 2>> "$OUTDIR/session.log" |
      sed -n 's/^RESULT //p' >> "$tp"
  done
  log "I-CFM steps done"
fi

# B'. The step's operator calls and host reads on the GPU at 10 populations (a few seconds): the
#     CPU build's counts (bench/results/mfm_op_counts.txt) should hold here too, and host reads be 0.
if has B && [ -x $bin ]; then
  timeout 60 $bin --device cuda --op-counts --populations-per-step 10 --populations 10 --cells 700 --steps 30 \
    --report-every 5 --sync-every 25 > "$OUTDIR/op_counts_cuda.txt" 2>> "$OUTDIR/session.log"
  log "op counts: exit $?"
fi

# E. Where a 10 x 700 step's time goes: popflow with the mean encoder (no sparse products), with
#    a width-64 decoder (launch-bound), with one population a step, and the default again.
if has E && [ -x $bin ]; then
  for v in "--encoder mean" "--width 64" "--populations-per-step 1 --populations 10" "--encoder gcn"; do
    timeout 60 $bin --device cuda --populations-per-step 10 --populations 10 --steps 300 $v --json \
      | sed "s/^{/{\"variant\": \"$v\", /" >> "$tp" 2>> "$OUTDIR/session.log"
  done
  log "step breakdown done"
fi

# F. Exact OT of one minibatch (issue 14, item 3): time per solve of the auction solver on the GPU
#    next to the CPU solvers (exact = auction prices + JV, LEMON) and POT (if importable), with
#    each one's gap to the optimum; then OT-CFM steps per second with each solver.
if has F && [ -x build/cuda/popflow_ot_bench ]; then
  timeout 300 python3 bench/exact_ot.py --build build/cuda --device cuda --sizes 1024,4096 --dims 10,50 \
    --shapes shifted,identical,kang --solvers exact,lemon,auction --steps --step-sizes 1024,4096 \
    > "$OUTDIR/exact_ot_gpu.jsonl" 2>> "$OUTDIR/session.log"
  log "exact OT: exit $?"
fi

# G. Prediction beside torchdiffeq, the same network and cells, dopri5 and rk4 (wall time).
if has G && [ -x build/cuda/popflow_predict_bench ] && [ -s .gpu/predict/cells.csv ]; then
  for solver in dopri5 rk4; do
    mkdir -p /tmp/predict_$solver
    timeout 120 build/cuda/popflow_predict_bench --device cuda --model .gpu/predict/model.popflow \
      --cells .gpu/predict/cells.csv --from 0 --to 3 --solver $solver --steps 20 --reps 3 \
      --export /tmp/predict_$solver >> "$tp" 2>> "$OUTDIR/session.log"
    PYTHONPATH=.gpu/peer timeout 120 python3 bench/predict_peer_torchdiffeq.py --device cuda \
      --dir /tmp/predict_$solver --cells .gpu/predict/cells.csv --reps 3 >> "$tp" 2>> "$OUTDIR/session.log"
  done
  log "prediction beside torchdiffeq done"
fi

# C. From R; meanwhile R writes the letters CSVs for D (CPU only).
export LD_LIBRARY_PATH=/opt/popflow-rlibs:${LD_LIBRARY_PATH:-}
if has D && [ -f /tmp/rlib/popflow/libs/popflow.so ]; then
  for s in 1 2 3; do
    LETTERS_SEED=$s R_LIBS=/tmp/rlib Rscript bench/letters_csv.R /tmp/letters_s$s.csv > /dev/null 2>> "$OUTDIR/session.log" &
  done
fi
if has C && [ -f /tmp/rlib/popflow/libs/popflow.so ] && [ "$(elapsed)" -lt $((DEADLINE - 200)) ]; then
  R_LIBS=/tmp/rlib timeout 240 \
    Rscript bench/gpu_r_end_to_end.R > "$OUTDIR/r_end_to_end.txt" 2>&1
  log "R end to end: exit $?"
fi

# D. Letters, TF32 off and on.
left=$((DEADLINE - $(elapsed) - 40))
wait  # the CSVs
if has D && [ -x build/cuda/popflow_letters ] && [ -s /tmp/letters_s3.csv ] && [ $left -gt 90 ]; then
  for s in 1 2 3; do
    for tf in 0 1; do
      build/cuda/popflow_letters --csv /tmp/letters_s$s.csv --seed $s --device cuda --models mfm_gcn_k10 \
        --steps ${LETTERS_STEPS:-2000} --score test --validate-every 1000 --time-limit $((left - 50)) --tf32 $tf \
        | sed "s/^{/{\"seed\": $s, \"tf32\": $tf, /" > /tmp/letters_${s}_$tf.jsonl 2>> "$OUTDIR/session.log" &
    done
  done
  wait
  cat /tmp/letters_*.jsonl > "$OUTDIR/letters_tf32.jsonl"
  grep '"summary"' "$OUTDIR/letters_tf32.jsonl" | grep '"test"' | tee -a "$OUTDIR/session.log"
  log "letters done"
else
  log "letters skipped ($left s left)"
fi
log "total"

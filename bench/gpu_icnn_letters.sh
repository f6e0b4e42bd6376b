#!/bin/bash
# Device run (run tool, .gpu carried: see bench/gpu_letters.sh): OUT=$OUT bash bench/gpu_icnn_letters.sh
# Device run for the ICNN branch: the C++ unit tests (CPU build against PyTorch's LibTorch) and
# the ICNN row of the letters benchmark at the paper's size (3 seeds, lr 1e-4 and 1e-3).
set -u
start=$(date +%s)
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
(
  cmake -S . -B build/tests -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
    -DPOPFLOW_LEMON_INCLUDE="$PWD/.gpu/lemon_inc" -DPOPFLOW_BUILD_BENCH=OFF > "$OUT/tests_build.log" 2>&1 &&
    cmake --build build/tests -j8 >> "$OUT/tests_build.log" 2>&1 &&
    OMP_WAIT_POLICY=passive timeout 240 build/tests/popflow_tests > "$OUT/cpp_tests.log" 2>&1
  echo "tests rc=$? at $(( $(date +%s) - start )) s" >> "$OUT/cpp_tests.log"
) &
STEPS=6000 MODELS=icnn VALIDATE_EVERY=0 TIME_LIMIT=150 EXTRA="--lr 1e-4" bash bench/gpu_letters.sh "$OUT/lr1e-4"
STEPS=6000 MODELS=icnn VALIDATE_EVERY=0 TIME_LIMIT=150 EXTRA="--lr 1e-3" bash bench/gpu_letters.sh "$OUT/lr1e-3"
wait
tail -3 "$OUT/cpp_tests.log"; grep -i "fail" "$OUT/cpp_tests.log" | head
echo "total $(( $(date +%s) - start )) s"
# One file back: the device tool returns few files.
tar -czf "$OUT/icnn_gpu.tar.gz" -C "$OUT" lr1e-4 lr1e-3 tests_build.log cpp_tests.log && rm -rf "$OUT/lr1e-4" "$OUT/lr1e-3" "$OUT/tests_build.log" "$OUT/cpp_tests.log"

#!/usr/bin/env bash
# Memory-safety checks of the C++ engine; docs/reliability.md records the last results.
#   bash tools/sanitize.sh asan       # C++ unit tests built with -fsanitize=address,undefined (build/asan)
#   bash tools/sanitize.sh valgrind   # valgrind --leak-check=full on popflow_bench with a small CSV (build/cpp)
#   bash tools/sanitize.sh            # both
# Slow (a sanitizer build of the engine and the tests, then valgrind's ~50x
# slowdown), so not part of tools/test.sh. Exits non-zero when a sanitizer
# reports an error or valgrind finds definitely lost bytes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
what=${1:-all}
JOBS=${JOBS:-2}
export OMP_WAIT_POLICY=passive
status=0

if [ "$what" = all ] || [ "$what" = asan ]; then
  echo "== AddressSanitizer + UndefinedBehaviorSanitizer: C++ unit tests (build/asan)"
  # halt_on_error: the first UBSan finding fails the run; the LSan suppression
  # covers one known 152-byte leak inside libtorch's archive reader (tests/cpp/lsan.supp).
  BUILD_DIR=build/asan CMAKE_ARGS="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOPFLOW_SANITIZE=ON -DPOPFLOW_BUILD_BENCH=OFF" \
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} bash tools/cpp_tests.sh 2>&1 | tee build/asan-tests.log | tail -40
  rc=${PIPESTATUS[0]}
  if grep -qE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" build/asan-tests.log; then rc=1; fi
  echo "asan+ubsan: exit status $rc"
  [ "$rc" -eq 0 ] || status=1
fi

if [ "$what" = all ] || [ "$what" = valgrind ]; then
  echo "== valgrind --leak-check=full on popflow_bench (build/cpp)"
  if ! command -v valgrind >/dev/null 2>&1; then
    # Optional tool, installed only here (never by the package's own install).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y valgrind >/dev/null || { echo "valgrind: cannot install"; exit 1; }
    else
      echo "valgrind: not installed (Debian: apt-get install valgrind)"; exit 1
    fi
  fi
  mkdir -p build/cpp build/valgrind
  cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release >build/cpp/configure.log 2>&1 &&
    cmake --build build/cpp -j"$JOBS" --target popflow_bench >build/valgrind/build.log 2>&1 ||
    { tail -20 build/valgrind/build.log; echo "popflow_bench: build failed"; exit 1; }
  # Three snapshots of 150 cells in 5 dimensions drifting apart (deterministic).
  awk 'BEGIN { srand(7); print "cell,samples,f1,f2,f3,f4,f5";
         for (t = 0; t < 3; t++) for (i = 0; i < 150; i++) {
           printf "c%d_%d,%d", t, i, t;
           for (j = 1; j <= 5; j++) printf ",%.5f", rand() - 0.5 + t * j / 5;
           printf "\n" } }' >build/valgrind/small.csv
  # Debian's LibTorch loads OpenCV -> libjxl -> libhwy, whose initialiser executes RDTSCP; valgrind 3.19
  # refuses that instruction when the CPU does not advertise it (as in many VMs) and kills the program
  # before main(). popflow never calls Highway, so an empty stand-in library is loaded instead.
  stub_dir=build/valgrind/hwy-stub
  if ldd build/cpp/popflow_bench | grep libhwy.so.1 >/dev/null && ! grep -qw rdtscp /proc/cpuinfo; then
    mkdir -p "$stub_dir"
    echo 'void popflow_hwy_stand_in(void) {}' >"$stub_dir/stub.c"
    cc -shared -fPIC -o "$stub_dir/libhwy.so.1" -Wl,-soname,libhwy.so.1 "$stub_dir/stub.c" || exit 1
    export LD_LIBRARY_PATH="$PWD/$stub_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "valgrind: using an empty libhwy stand-in (CPU does not advertise rdtscp)"
  fi
  valgrind --leak-check=full --num-callers=30 --log-file=build/valgrind/valgrind.log \
    build/cpp/popflow_bench build/valgrind/small.csv --holdout 1 --steps 40 --batch 64 --width 32 --depth 2 \
    --coupling exact
  rc=$?
  grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable" build/valgrind/valgrind.log
  lost=$(grep -E "definitely lost:" build/valgrind/valgrind.log | sed -E 's/.*definitely lost: ([0-9,]+) bytes.*/\1/' | tr -d ,)
  echo "valgrind: popflow_bench exit status $rc, definitely lost ${lost:-?} bytes (log: build/valgrind/valgrind.log)"
  { [ "$rc" -eq 0 ] && [ "${lost:-1}" = 0 ]; } || status=1
fi
exit $status

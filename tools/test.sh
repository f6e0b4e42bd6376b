#!/usr/bin/env bash
# The README's second command: the whole test suite (C++ engine tests, then the
# R tests against the installed package). Ends with one line "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=passive
bash tools/install.sh || { echo "0 passed, 1 failed"; exit 1; }

cpp_pass=0; cpp_fail=0
if [ -f CMakeLists.txt ] && [ -f tools/cpp_tests.sh ]; then
  cpp_out=$(bash tools/cpp_tests.sh 2>&1); cpp_rc=$?
  echo "$cpp_out" | tail -25
  line=$(echo "$cpp_out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -1)
  if [ -n "$line" ]; then
    cpp_pass=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    cpp_fail=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
  fi
  if [ $cpp_rc -ne 0 ] && [ "$cpp_fail" -eq 0 ]; then cpp_fail=1; fi  # build failure
fi

Rscript tools/run_r_tests.R "$cpp_pass" "$cpp_fail"

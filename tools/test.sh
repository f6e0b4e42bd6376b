#!/usr/bin/env bash
# The README's second command (.ci/run calls it): the whole test suite.
#   1. tools/install.sh --system-only: the apt packages (a fresh machine has none);
#      then tools/blas_env.sh sets OPENBLAS_CORETYPE where OpenBLAS does not know the CPU;
#   2. tools/cpp_tests.sh: the C++ engine tests (CMake build of the core in build/cpp);
#   3. tools/check_package.sh: R CMD build with the vignettes knitted and R CMD
#      check of the tarball (examples, the testthat suite), compiling the package
#      once, into the private library build/check/lib (never the default one).
# Counts one entry per C++ test, per test_that() block, per vignette, plus one
# for R CMD build and one for R CMD check (0 ERROR and 0 WARNING), and ends with
# one line "N passed, N failed, N skipped"; exits non-zero on any failure.
# POPFLOW_SKIP_VIGNETTES=1 skips the vignettes (see tools/check_package.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=passive  # libtorch spin-waits otherwise
start=$(date +%s)
bash tools/install.sh --system-only || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
source tools/blas_env.sh  # the CPU's own BLAS kernels where OpenBLAS does not know it

t=$(date +%s)
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
t_cpp=$(( $(date +%s) - t ))

t=$(date +%s)
pkg_out=$(bash tools/check_package.sh 2>&1)
t_pkg=$(( $(date +%s) - t ))
echo "$pkg_out" | grep -Ev '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$'
pkg_counts=$(echo "$pkg_out" | grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' | tail -1 |
  sed -E 's/^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/')
[ -n "$pkg_counts" ] || pkg_counts="0 1 0"  # the script itself broke
read -r pkg_pass pkg_fail pkg_skip <<< "$pkg_counts"

echo "C++ tests: $cpp_pass passed, $cpp_fail failed, 0 skipped"
echo "times: C++ tests ${t_cpp} s, R CMD build + check ${t_pkg} s, total $(( $(date +%s) - start )) s"
echo "$((cpp_pass + pkg_pass)) passed, $((cpp_fail + pkg_fail)) failed, $pkg_skip skipped"
[ $((cpp_fail + pkg_fail)) -eq 0 ]

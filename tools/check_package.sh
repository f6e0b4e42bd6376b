#!/usr/bin/env bash
# R CMD build and R CMD check of the package, compiling it once (tools/test.sh
# runs this after the C++ engine tests). R CMD build would compile the package
# into a temporary library to knit the vignettes and R CMD check would compile
# it again to install it; here the one installation serves both:
#   1. R CMD build --no-build-vignettes: the source tarball, no compilation;
#   2. R CMD INSTALL of that tarball into build/check/lib, with R CMD check's
#      own install options (the one compilation, ~5 min on 2 cores);
#   3. the vignettes knitted against that installation and added to the
#      tarball as R CMD build does (inst/doc/ + build/vignette.rds);
#   4. R CMD check --install=check:<its install log> --library=build/check/lib
#      on that tarball: every check, the examples and the testthat suite
#      (tests/testthat.R) against the installed package; --no-vignettes, as
#      step 3 just ran them against the same installation.
# Entries: "R CMD build" (a complete tarball), one per vignette, "R CMD check"
# (passes with 0 ERROR and 0 WARNING; its NOTEs are listed), and one per
# test_that() block (R tests). Prints "name: N passed, N failed, N skipped" for
# each suite and ends with the total "N passed, N failed, N skipped"; exits
# non-zero on any failure.
#   usage: tools/check_package.sh
#   POPFLOW_SKIP_VIGNETTES=1  no knitting and R CMD check --ignore-vignettes
#                             (vignette entries counted as skipped)
# Everything is written under build/check/ (tarball, lib/, popflow.Rcheck/,
# logs), which is emptied first and left for inspection.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/check"
rm -rf "$out" && mkdir -p "$out/lib" "$out/src" || exit 1

export LC_ALL=C.UTF-8
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}  # libtorch spin-waits otherwise
# -O2 without -g (see shared BUILD_NOTES) and all cores for the one compilation.
export R_MAKEVARS_USER="$root/tools/Makevars.user"
export MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}
# As in R CMD check's own install: symbol tables of the .o files, for its
# "checking compiled code".
export _R_SHLIB_BUILD_OBJECTS_SYMBOL_TABLES_=TRUE
export _R_CHECK_TIMINGS_=0                    # R CMD check prints the time of each timed step
export POPFLOW_TEST_RESULTS="$out/r-tests.txt"  # tests/testthat.R writes its counts there

skip_vignettes=${POPFLOW_SKIP_VIGNETTES:-0}
names=()
for f in "$root"/vignettes/*.Rmd; do
  [ -e "$f" ] && names+=("$(basename "$f" .Rmd)")
done
pkg_pass=0; pkg_fail=0; vig_pass=0; vig_fail=0; vig_skip=0
r_counts="0 passed, 1 failed, 0 skipped"  # until tests/testthat.R says otherwise
ok()   { echo "ok   $*"; }
fail() { echo "FAIL $*"; }
indent() { sed 's/^/    /'; }
now() { date +%s; }

# 1. The source tarball, without vignette outputs: no compilation.
t=$(now)
( cd "$out" && R CMD build --no-build-vignettes --no-manual "$root" ) > "$out/00build.log" 2>&1
build_rc=$?
tarball=$(ls "$out"/*.tar.gz 2>/dev/null | head -1)
t_build=$(( $(now) - t ))

# 2. The one compilation: installed as R CMD check would (its options --no-html
#    --no-multiarch), the log kept for the check.
install_ok=0; t_install=0
if [ $build_rc -eq 0 ] && [ -n "$tarball" ]; then
  echo "R CMD INSTALL $(basename "$tarball") into build/check/lib (the one compilation)"
  t=$(now)
  R CMD INSTALL -l "$out/lib" --no-html --no-multiarch "$tarball" > "$out/00install.out" 2>&1 &&
    grep -q '^\* DONE' "$out/00install.out" && install_ok=1
  t_install=$(( $(now) - t ))
fi

# 3. The vignettes knitted against that installation, as R CMD build does
#    (tools::buildVignettes(tangle = TRUE), then sources, outputs and R code to
#    inst/doc/ and the index to build/vignette.rds), and the tarball re-packed.
t_knit=0; knit_ok=0
if [ $install_ok -eq 1 ] && [ "$skip_vignettes" != "1" ] && [ ${#names[@]} -gt 0 ]; then
  echo "knitting ${#names[@]} vignette(s) against it"
  t=$(now)
  tar -xzf "$tarball" -C "$out/src" &&
  ( cd "$out/src/popflow" && R_LIBS="$out/lib" Rscript --vanilla --default-packages= -e '
      vigns <- tryCatch(tools::buildVignettes(dir = ".", tangle = TRUE), error = function(e) NULL)
      if (is.null(vigns)) quit(status = 1)
      vigns <- tools::pkgVignettes(dir = ".", output = TRUE, source = TRUE)
      dir.create(file.path("inst", "doc"), recursive = TRUE, showWarnings = FALSE)
      files <- unique(c(vigns$docs, vigns$outputs, unlist(vigns$sources)))
      stopifnot(all(file.copy(files, file.path("inst", "doc"), copy.date = TRUE)))
      unlink(c(vigns$outputs, unlist(vigns$sources)))
      index <- tools:::.build_vignette_index(vigns)
      dir.create("build", showWarnings = FALSE)
      saveRDS(index, file.path("build", "vignette.rds"), version = 2L)' ) > "$out/00knit.log" 2>&1 &&
  ( cd "$out/src" && tar -czf "$tarball" popflow ) && knit_ok=1
  t_knit=$(( $(now) - t ))
fi

if [ -n "$tarball" ] && [ $install_ok -eq 1 ] && { [ $knit_ok -eq 1 ] || [ "$skip_vignettes" = "1" ] || [ ${#names[@]} -eq 0 ]; }; then
  ok "R CMD build: $(basename "$tarball"), $(du -k "$tarball" | cut -f1) KiB (build ${t_build} s, install ${t_install} s, vignettes ${t_knit} s)"
  pkg_pass=$((pkg_pass + 1))
elif [ $build_rc -ne 0 ] || [ -z "$tarball" ]; then
  fail "R CMD build --no-build-vignettes (exit status $build_rc); end of its log:"
  tail -40 "$out/00build.log" | indent
  pkg_fail=$((pkg_fail + 1))
elif [ $install_ok -eq 0 ]; then
  fail "R CMD build: installing the package failed (${t_install} s); end of build/check/00install.out:"
  tail -40 "$out/00install.out" | indent
  pkg_fail=$((pkg_fail + 1))
else
  fail "R CMD build: knitting the vignettes failed (${t_knit} s; log: build/check/00knit.log)"
  pkg_fail=$((pkg_fail + 1))
fi
for v in "${names[@]}"; do
  if [ "$skip_vignettes" = "1" ]; then
    echo "skip vignette $v.Rmd (POPFLOW_SKIP_VIGNETTES=1)"
    vig_skip=$((vig_skip + 1))
  elif [ -f "$out/00knit.log" ] && grep -Eq -- "--- finished re-building .{1,3}${v}\.Rmd" "$out/00knit.log"; then
    ok "vignette $v.Rmd"
    vig_pass=$((vig_pass + 1))
  else
    fail "vignette $v.Rmd"
    [ -f "$out/00knit.log" ] &&  # its knitr error
      sed -En "/--- re-building .{1,3}${v}\.Rmd/,/--- (failed|finished) re-building/p" "$out/00knit.log" | head -30 | indent
    vig_fail=$((vig_fail + 1))
  fi
done

# 4. R CMD check of the tarball against that installation.
if [ $install_ok -eq 1 ]; then
  vig_opt=--no-vignettes
  [ "$skip_vignettes" = "1" ] && vig_opt=--ignore-vignettes
  echo "R CMD check --no-manual $vig_opt $(basename "$tarball") (installed package: build/check/lib)"
  t=$(now)
  ( cd "$out" && R CMD check --no-manual "$vig_opt" --library="$out/lib" \
      --install="check:$out/00install.out" "$tarball" ) > "$out/00check.out" 2>&1
  check_rc=$?
  t_check=$(( $(now) - t ))
  indent < "$out/00check.out"
  log="$out/popflow.Rcheck/00check.log"
  status=$(grep -E '^Status: ' "$log" 2>/dev/null | tail -1)
  notes=$(grep -E '^\* checking .* NOTE$' "$log" 2>/dev/null | sed -E 's/^\* checking (.*) \.\.\. NOTE$/\1/')
  if [ $check_rc -eq 0 ] && [ -n "$status" ] && ! echo "$status" | grep -Eq 'ERROR|WARNING'; then
    ok "R CMD check: $status (${t_check} s)"
    pkg_pass=$((pkg_pass + 1))
  else
    fail "R CMD check: ${status:-no status (exit status $check_rc)} (${t_check} s; log: build/check/popflow.Rcheck/00check.log)"
    pkg_fail=$((pkg_fail + 1))
  fi
  [ -n "$notes" ] && echo "$notes" | sed 's/^/     NOTE: checking /'
  fail_out="$out/popflow.Rcheck/tests/testthat.Rout.fail"
  if [ -f "$fail_out" ]; then
    echo "R tests failed; from build/check/popflow.Rcheck/tests/testthat.Rout.fail:"
    # testthat's summary of the failures when it got that far, else the end of the output.
    if grep -q '^\[ FAIL [0-9]' "$fail_out"; then
      sed -n '/^\[ FAIL [0-9]/,$p' "$fail_out" | head -150 | indent
    else
      tail -60 "$fail_out" | indent
    fi
  fi
  if [ -f "$POPFLOW_TEST_RESULTS" ] && grep -Eq '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$POPFLOW_TEST_RESULTS"; then
    r_counts=$(cat "$POPFLOW_TEST_RESULTS")
  else
    echo "R tests: tests/testthat.R wrote no counts (it did not run or did not finish)"
  fi
else
  fail "R CMD check: not run (no installed package)"
  pkg_fail=$((pkg_fail + 1))
fi

read -r r_pass r_fail r_skip < <(echo "$r_counts" | sed -E 's/^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/')
echo "R tests: $r_counts"
echo "vignettes: $vig_pass passed, $vig_fail failed, $vig_skip skipped"
echo "R CMD build + check: $pkg_pass passed, $pkg_fail failed, 0 skipped"
echo "$((r_pass + vig_pass + pkg_pass)) passed, $((r_fail + vig_fail + pkg_fail)) failed, $((r_skip + vig_skip)) skipped"
[ $((r_fail + vig_fail + pkg_fail)) -eq 0 ]

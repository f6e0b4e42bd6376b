#!/usr/bin/env bash
# Builds the source package with `R CMD build`, which installs it into a
# temporary library and knits every vignette in vignettes/, as R CMD check and
# CRAN do. Counts one test per vignette (knitted, and its HTML shipped in the
# tarball) plus one for the build itself, and ends with
# "N passed, N failed, N skipped".
#   usage: tools/build_vignettes.sh [package directory, default: this repository]
#   POPFLOW_SKIP_VIGNETTES=1 skips the build (every entry counted as skipped).
# Nothing is written into the package directory: the build runs in a temporary
# directory that is removed afterwards (POPFLOW_KEEP_BUILD=DIR keeps the tarball there).
set -uo pipefail
pkg=$(cd "${1:-$(dirname "$0")/..}" && pwd)
makevars="$(cd "$(dirname "$0")" && pwd)/Makevars.user"

names=()
for f in "$pkg"/vignettes/*.Rmd; do
  [ -e "$f" ] && names+=("$(basename "$f" .Rmd)")
done
total=$(( ${#names[@]} + 1 ))

if [ "${POPFLOW_SKIP_VIGNETTES:-0}" = "1" ]; then
  echo "vignettes: skipped (POPFLOW_SKIP_VIGNETTES=1)"
  echo "0 passed, 0 failed, $total skipped"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "R CMD build $(basename "$pkg"): installing into a temporary library and knitting ${#names[@]} vignette(s)"
start=$(date +%s)
# -O2 without -g (tools/Makevars.user) and all cores: the build compiles the engine again.
( cd "$work" && LC_ALL=C.UTF-8 R_MAKEVARS_USER="$makevars" MAKEFLAGS="-j$(nproc)" R CMD build "$pkg" ) \
  > "$work/build.log" 2>&1
rc=$?
seconds=$(( $(date +%s) - start ))
tarball=$(ls "$work"/*.tar.gz 2>/dev/null | head -1)
shipped=""
[ -n "$tarball" ] && shipped=$(tar -tzf "$tarball")

passed=0; failed=0
if [ $rc -eq 0 ] && [ -n "$tarball" ]; then
  echo "ok   R CMD build: $(basename "$tarball"), $(du -k "$tarball" | cut -f1) KiB, ${seconds} s"
  passed=$((passed + 1))
else
  echo "FAIL R CMD build (exit status $rc, ${seconds} s); end of its log:"
  tail -40 "$work/build.log" | sed 's/^/    /'
  failed=$((failed + 1))
fi
for v in "${names[@]}"; do
  # A successful build lists nothing per vignette: its HTML in the tarball is
  # the test. A failed build (e.g. another vignette failed) makes no tarball
  # but logs every vignette it knitted.
  if { [ -n "$tarball" ] && echo "$shipped" | grep -Eq "^[^/]+/inst/doc/${v}\.html$"; } ||
     { [ -z "$tarball" ] && grep -Eq -- "--- finished re-building .{1,3}${v}\.Rmd" "$work/build.log"; }; then
    echo "ok   vignette $v.Rmd"
    passed=$((passed + 1))
  else
    echo "FAIL vignette $v.Rmd"
    # Its knitr error, when the log has one.
    sed -En "/--- re-building .{1,3}${v}\.Rmd/,/--- (failed|finished) re-building/p" "$work/build.log" |
      head -20 | sed 's/^/    /'
    failed=$((failed + 1))
  fi
done
if [ -n "${POPFLOW_KEEP_BUILD:-}" ] && [ -n "$tarball" ]; then
  mkdir -p "$POPFLOW_KEEP_BUILD" && cp "$tarball" "$POPFLOW_KEEP_BUILD/"
fi
echo "$passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]

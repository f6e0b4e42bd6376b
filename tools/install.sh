#!/usr/bin/env bash
# Installs popflow's system requirements (Debian 12, via apt) and the package
# itself into the default R library (tools/setup.sh, the README's first command).
# Safe to re-run: apt is a no-op when everything is present, and the package is
# rebuilt only when its sources changed.
#   usage: tools/install.sh [--system-only]
#   --system-only: the apt packages and the SeuratObject 5 test library only
#                  (tools/test.sh: tools/check_package.sh installs the package
#                  into a private library for R CMD check).
set -euo pipefail
cd "$(dirname "$0")/.."
system_only=0
case "${1:-}" in
  --system-only) system_only=1 ;;
  "") ;;
  *) echo "usage: tools/install.sh [--system-only]" >&2; exit 2 ;;
esac

PKGS=(r-base-dev r-cran-rcpp r-cran-testthat r-cran-roxygen2 r-cran-pkgbuild
      libtorch-dev libopenblas0-pthread liblemon-dev libgloo-dev
      r-bioc-singlecellexperiment r-cran-seurat r-cran-seuratobject r-cran-matrix
      r-bioc-hdf5array r-cran-callr  # HDF5-backed objects; callr: the Seurat v5 tests' own R process
      r-cran-knitr r-cran-rmarkdown pandoc r-cran-ggplot2 r-cran-cli cmake g++ make
      r-cran-png fonts-dejavu-core   # png + fonts: only tools/make_letters.R (letters data)
      python3                        # tools/blas_env.sh asks OpenBLAS which kernels it runs (ctypes)
      python3-pot)                   # POT: only the benchmarks' peer (bench/exact_ot.py, bench/*_torchcfm.py)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "popflow: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# SeuratObject 5 (CRAN) in a library of its own, /opt/popflow-seurat5 (or
# $POPFLOW_SEURAT5_LIB), for the tests of the Seurat v5 paths: Debian's
# SeuratObject is 4. About 4 min on a fresh machine (Matrix 1.6-5 compiles),
# 5 s when present.
R_MAKEVARS_USER="$PWD/tools/Makevars.user" MAKEFLAGS="-j$(nproc)" POPFLOW_NCPUS="$(nproc)" \
  Rscript tools/install_seurat5.R >/tmp/popflow-seurat5.log 2>&1 &&
  tail -1 /tmp/popflow-seurat5.log ||
  # Not fatal: popflow itself does not need it; the v5 tests then skip and say why.
  { tail -20 /tmp/popflow-seurat5.log
    echo "popflow: WARNING: SeuratObject 5 did not install (CRAN unreachable?); the Seurat v5 tests will skip (full log: /tmp/popflow-seurat5.log)"; }
if [ $system_only -eq 1 ]; then
  echo "popflow: system packages present"
  exit 0
fi

# Rebuild only when the package sources changed since the installed build.
stamp=$(cat DESCRIPTION NAMESPACE configure src/Makevars.in src/*.cpp src/*.h src/core/*.cpp src/core/*.h R/*.R vignettes/*.Rmd 2>/dev/null | sha1sum | cut -c1-40)
installed=$(Rscript -e 'f <- system.file("srcstamp", package = "popflow"); if (nzchar(f)) cat(readLines(f))' 2>/dev/null || true)
# The vignettes, knitted once against the installed package (installing from
# the source folder builds none; R CMD build would compile a second time).
# About 1 min of CPU (57 s; 3.4 min wall on 2 cores busy with other builds);
# POPFLOW_SKIP_VIGNETTES=1 leaves them out. tools/test.sh (CI) installs with
# --system-only and knits the vignettes once in tools/check_package.sh.
install_vignettes() {
  if [ "${POPFLOW_SKIP_VIGNETTES:-0}" = "1" ]; then
    echo "popflow: vignettes not installed (POPFLOW_SKIP_VIGNETTES=1)"
    return 0
  fi
  echo "popflow: knitting the vignettes into the installation (a minute or two)"
  OMP_WAIT_POLICY=passive Rscript tools/install_vignettes.R "$1" >/tmp/popflow-vignettes.log 2>&1 ||
    { tail -40 /tmp/popflow-vignettes.log; echo "popflow: knitting the vignettes failed (full log: /tmp/popflow-vignettes.log)"; exit 1; }
  tail -1 /tmp/popflow-vignettes.log
}
if [ "$stamp" != "$installed" ]; then
  echo "popflow: building and installing the R package (a few minutes: LibTorch is a large dependency)"
  # -O2 without -g: faster compiles and a smaller library (see shared BUILD_NOTES).
  R_MAKEVARS_USER="$PWD/tools/Makevars.user" MAKEFLAGS="-j$(nproc)" R CMD INSTALL --preclean . >/tmp/popflow-install.log 2>&1 ||
    { tail -40 /tmp/popflow-install.log; echo "popflow: installation failed (full log: /tmp/popflow-install.log)"; exit 1; }
  lib=$(Rscript -e 'cat(dirname(system.file(package = "popflow")))')
  ./cleanup
  install_vignettes "$lib"
  echo "$stamp" > "$lib/popflow/srcstamp"
fi
echo "popflow: installed ($(Rscript -e 'cat(as.character(packageVersion("popflow")))'))"

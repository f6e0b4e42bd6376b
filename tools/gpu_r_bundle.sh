#!/bin/sh
# R for a GPU machine that has none (issue 14, item 4): packs this machine's R
# (Debian 12's r-base-core), the R packages popflow needs to install and load
# (Rcpp, cli, ggplot2 and what they import), and every shared library these
# load beyond the C and C++ runtimes, into one archive of paths under / and
# /opt/popflow-rlibs. The GPU machine unpacks it, puts /opt/popflow-rlibs on
# LD_LIBRARY_PATH and installs popflow against PyTorch's CUDA LibTorch:
# bench/gpu_r_end_to_end.sh does all of that.
#
#   sh tools/gpu_r_bundle.sh [.gpu/r_bundle.tar.xz]
set -eu
out=${1:-.gpu/r_bundle.tar.xz}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Base packages, and the installed packages popflow's imports need (recursively).
pkgs=$(Rscript -e 'ip <- installed.packages(); base <- rownames(ip)[ip[, "Priority"] %in% "base"]
  need <- c("Rcpp", "cli", "ggplot2"); deps <- tools::package_dependencies(need, db = ip,
  which = c("Depends", "Imports", "LinkingTo"), recursive = TRUE)
  u <- unique(c(base, need, unlist(deps))); cat(file.path(ip[u, "LibPath"], u), sep = "\n")')

mkdir -p "$stage/usr/lib/R/library" "$stage/usr/lib/R/site-library" "$stage/usr/share" "$stage/etc" \
  "$stage/opt/popflow-rlibs"
cp -a /usr/lib/R/bin /usr/lib/R/etc /usr/lib/R/lib /usr/lib/R/modules /usr/lib/R/SVN-REVISION "$stage/usr/lib/R/"
cp -a /usr/share/R "$stage/usr/share/"
rm -rf "$stage/usr/share/R/doc/manual"
cp -a /etc/R "$stage/etc/"
for p in $pkgs; do
  dest="$stage$(dirname "$p")"
  mkdir -p "$dest"
  cp -a "$p" "$dest/"
  rm -rf "$dest/$(basename "$p")/doc" "$dest/$(basename "$p")/html" "$dest/$(basename "$p")/help"
done

# No display there: the X11 and data-editor modules (and their graphics libraries) stay behind.
rm -f "$stage/usr/lib/R/modules/R_X11.so" "$stage/usr/lib/R/modules/R_de.so"
# Shared libraries: those of R's executable, libR and every package's or module's .so, minus the
# C/C++ runtime (the GPU machine's newer glibc and libstdc++ serve Debian 12 binaries). BLAS and
# LAPACK are the reference ones (1 MB, not OpenBLAS's 36): R's own algebra is not what runs there.
objs=$(find "$stage/usr/lib/R" -name '*.so' -o -path '*/bin/exec/R')
for o in $objs; do LD_LIBRARY_PATH=/usr/lib/R/lib ldd "$o" 2>/dev/null; done | awk '/=> \// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libdl|librt|libpthread|libresolv|ld-linux[^/]*|libstdc\+\+|libgcc_s|libR|libblas|liblapack|libopenblas)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/opt/popflow-rlibs/"; done
blas=/usr/lib/x86_64-linux-gnu/blas/libblas.so.3
[ -f "$blas" ] || blas=$(ldd /usr/lib/R/lib/libR.so | awk '/libblas/ {print $3}')
cp -L "$blas" "$stage/opt/popflow-rlibs/libblas.so.3"
lapack=/usr/lib/x86_64-linux-gnu/lapack/liblapack.so.3
[ -f "$lapack" ] || lapack=$(ldd /usr/lib/R/modules/lapack.so | awk '/liblapack/ {print $3}')
cp -L "$lapack" "$stage/opt/popflow-rlibs/liblapack.so.3"
du -sh "$stage"/usr/lib/R "$stage"/opt/popflow-rlibs

mkdir -p "$(dirname "$out")"
tar -C "$stage" -cJf "$out" usr etc opt
echo "$out: $(du -h "$out" | cut -f1) ($(echo "$pkgs" | wc -l) R packages, $(ls "$stage/opt/popflow-rlibs" | wc -l) shared libraries)"

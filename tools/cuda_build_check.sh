#!/bin/bash
# Builds popflow against a CUDA LibTorch on a machine without a GPU, and runs
# its tests there: the check to make before spending scarce GPU minutes.
#
# Debian 13 (trixie) packages PyTorch 2.6 with CUDA 12.4, NCCL and Gloo
# (contrib: libtorch-cuda-dev). This script makes a trixie root with
# debootstrap, installs that LibTorch, the CUDA toolkit and popflow's other
# requirements from Debian, copies the committed tree in, then:
#   1. CMake: the engine, its C++ tests and the benchmarks (with the CUDA
#      graphs of the training step and both data-parallel backends compiled
#      in), and the C++ tests run (their GPU cases skip);
#   2. R CMD INSTALL through configure, then the R tests (tests/testthat.R).
# Output: ROOT/popflow-cuda-check/{cmake,ctest,install,rtests}.log and a
# summary on stdout. As root, on Debian or Ubuntu with network access to a
# Debian mirror; about 25 minutes on 2 cores, 12 GB of disk.
#
# Nothing here runs a GPU. One stand-in: libtorch-cuda depends on
# nvidia-cudnn, an installer that downloads cuDNN from NVIDIA, which this
# check does not need. A placeholder package satisfies apt, and a stub
# libcudnn.so.9 (every entry point returns an error) lets libtorch_cuda load;
# popflow calls no cuDNN, and without a GPU LibTorch never does.
#
#   sudo bash tools/cuda_build_check.sh [ROOT]     (default ROOT: /var/tmp/popflow-trixie)
set -euo pipefail
ROOT=${1:-/var/tmp/popflow-trixie}
MIRROR=${POPFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/popflow-cuda-check
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap > /dev/null || apt-get install -y -qq debootstrap > /dev/null

if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
  echo "== debootstrap trixie into $ROOT"
  debootstrap --variant=minbase --components=main,contrib,non-free,non-free-firmware trixie "$ROOT" "$MIRROR" \
    > /tmp/popflow-debootstrap.log
fi
for fs in proc sys dev; do
  mountpoint -q "$ROOT/$fs" || mount --rbind "/$fs" "$ROOT/$fs"
done
trap 'for fs in dev sys proc; do umount -R "$ROOT/$fs" 2> /dev/null || true; done' EXIT
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's own certificate authorities (a proxy's, say): CRAN over https as from the host.
mkdir -p "$ROOT/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2> /dev/null || true
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 bash -c "$1"; }

echo "== packages (CUDA LibTorch, CUDA toolkit, NCCL, Gloo, R and popflow's requirements)"
mkdir -p "$ROOT/tmp/cudnn-placeholder/DEBIAN"
cat > "$ROOT/tmp/cudnn-placeholder/DEBIAN/control" << 'EOF'
Package: nvidia-cudnn
Version: 9.99.0-popflow-placeholder
Architecture: amd64
Maintainer: popflow CUDA build check <popflow@localhost>
Description: placeholder for the cuDNN installer (tools/cuda_build_check.sh)
EOF
in_root "dpkg-query -W nvidia-cudnn > /dev/null 2>&1 || { dpkg-deb --build /tmp/cudnn-placeholder /tmp/cudnn.deb > /dev/null && dpkg -i /tmp/cudnn.deb > /dev/null; }"
in_root "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  libtorch-cuda-dev nvidia-cuda-toolkit libnccl-dev libgloo-cuda-dev liblemon-dev libopenblas0-pthread \
  r-base-dev r-cran-rcpp r-cran-testthat r-bioc-singlecellexperiment r-cran-seurat r-cran-seuratobject \
  r-cran-matrix r-bioc-hdf5array r-cran-callr r-cran-knitr r-cran-rmarkdown r-cran-ggplot2 r-cran-cli \
  cmake g++ make python3 ca-certificates > /tmp/popflow-apt.log 2>&1 && update-ca-certificates > /dev/null 2>&1" ||
  { tail -20 "$ROOT/tmp/popflow-apt.log"; exit 1; }
# The stub cuDNN: the symbols libtorch_cuda takes from it, under its version node.
in_root 'test -f /usr/local/lib/libcudnn.so.9 || {
  cd /tmp && nm -D --undefined-only /usr/lib/x86_64-linux-gnu/libtorch_cuda.so |
    grep -o "cudnn[A-Za-z0-9_]*@libcudnn.so.9" | sed "s/@.*//" | sort -u |
    sed "s/.*/int &(void) { return 4; }/" > cudnn_stub.c &&
  echo "libcudnn.so.9 { global: *; };" > cudnn_stub.map &&
  gcc -shared -fPIC -Wl,-soname,libcudnn.so.9 -Wl,--version-script=cudnn_stub.map -o /usr/local/lib/libcudnn.so.9 cudnn_stub.c &&
  ldconfig; }'

echo "== popflow's committed tree ($(git -C "$SRC" rev-parse --short HEAD))"
rm -rf "$ROOT/build/popflow" "$ROOT/build/lib" && mkdir -p "$ROOT/build/popflow" "$ROOT/build/lib" "$OUT"
git -C "$SRC" archive HEAD | tar -x -C "$ROOT/build/popflow"
in_root "dpkg-query -W -f '\${Package} \${Version}\n' libtorch-cuda-2.6 nvidia-cuda-toolkit libnccl2 r-base-core" \
  > "$OUT/versions.txt"

echo "== 1. CMake build and C++ tests"
in_root "cd /build/popflow && cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -Wno-dev &&
  cmake --build build/cuda -j$(nproc)" > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
grep "^-- popflow:" "$OUT/cmake.log"
in_root "cd /build/popflow && OMP_WAIT_POLICY=passive build/cuda/popflow_tests" > "$OUT/ctest.log" 2>&1 || true
grep -E "skipped|^[0-9]+ passed" "$OUT/ctest.log" | sort | uniq -c

echo "== 2. R CMD INSTALL and the R tests"
in_root "cd /build/popflow && MAKEFLAGS=-j$(nproc) R_MAKEVARS_USER=/build/popflow/tools/Makevars.user \
  R CMD INSTALL --no-test-load -l /build/lib ." > "$OUT/install.log" 2>&1 || { tail -30 "$OUT/install.log"; exit 1; }
grep "^popflow:" "$OUT/install.log"
in_root "R_LIBS=/build/lib Rscript -e 'library(popflow); cat(\"cudaAvailable():\", cudaAvailable(),
  \"| distributedBackends():\", distributedBackends(), \"\n\"); x <- matrix(rnorm(200), 50);
  tryCatch(fitFlow(x, x + 1, device = \"cuda\"), error = function(e) cat(conditionMessage(e), \"\n\"))'" 2>&1 |
  grep -v "OpenBLAS\|^popflow: "
# SeuratObject 5 from CRAN for the Seurat v5 tests, as tools/install.sh does (not fatal).
in_root "cd /build/popflow && MAKEFLAGS=-j$(nproc) POPFLOW_NCPUS=$(nproc) Rscript tools/install_seurat5.R" \
  > "$OUT/seurat5.log" 2>&1 || echo "SeuratObject 5 did not install (see seurat5.log): the v5 tests will skip"
# The Ctrl-C test sends this process a real SIGINT: started from a script in
# the background, SIGINT would be ignored, so the tests run through python3,
# which restores its default disposition.
in_root "cd /build/popflow/tests && OMP_WAIT_POLICY=passive R_LIBS=/build/lib POPFLOW_TEST_RESULTS=/tmp/rtests.txt \
  python3 -c 'import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(\"Rscript\", [\"Rscript\", \"testthat.R\"])'" \
  > "$OUT/rtests.log" 2>&1 || true
echo "R tests: $(cat "$ROOT/tmp/rtests.txt" 2>/dev/null || echo 'no result (see rtests.log)')"
cat "$OUT/versions.txt"

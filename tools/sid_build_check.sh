#!/bin/bash
# Builds popflow's engine and C++ tests against Debian sid's LibTorch (2.14.1
# when this was written, which needs C++20) with sid's GCC and CMake, in a
# debootstrap root, and runs the tests: the check that the build picks C++20
# where LibTorch asks for it. C++ only (no R). As root; about 15 minutes on 2
# cores. Output: the package versions, CMake's popflow lines, the tests'
# closing line and the standard the core was compiled with.
#
#   sudo bash tools/sid_build_check.sh [ROOT]     (default ROOT: /var/tmp/popflow-sid)
set -euo pipefail
S=${1:-/var/tmp/popflow-sid}
MIRROR=${POPFLOW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SRC=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap > /dev/null || apt-get install -y -qq debootstrap > /dev/null
[ -x "$S/usr/bin/apt-get" ] ||
  debootstrap --variant=minbase --components=main sid "$S" "$MIRROR" > /tmp/sid_debootstrap.log 2>&1
for fs in proc sys dev; do mountpoint -q "$S/$fs" || mount --rbind "/$fs" "$S/$fs"; done
trap 'for fs in dev sys proc; do umount -R "$S/$fs" 2> /dev/null || true; done' EXIT
cp /etc/resolv.conf "$S/etc/"
ROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
in_root() { chroot "$S" /usr/bin/env -i PATH=$ROOT_PATH HOME=/root bash -c "$1"; }
# A mirror snapshot older than sid's Release validity would be refused without Check-Valid-Until=false.
in_root 'apt-get -o Acquire::Check-Valid-Until=false update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtorch-dev liblemon-dev libgloo-dev \
    cmake g++ make libopenblas0-pthread > /tmp/apt.log 2>&1; dpkg-query -W libtorch-dev g++ cmake'
rm -rf "$S/build/popflow" && mkdir -p "$S/build/popflow" && git -C "$SRC" archive HEAD | tar -x -C "$S/build/popflow"
in_root 'cd /build/popflow && cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release -Wno-dev > /tmp/cmake.log 2>&1
  grep "^-- popflow:" /tmp/cmake.log; echo "warnings: $(grep -c "warning:" /tmp/cmake.log)"
  cmake --build build/cpp -j$(nproc) --target popflow_tests >> /tmp/cmake.log 2>&1 &&
    OMP_WAIT_POLICY=passive build/cpp/popflow_tests > /tmp/ctest.log 2>&1; tail -1 /tmp/ctest.log
  echo "warnings after the build: $(grep -c "warning:" /tmp/cmake.log)"
  grep -o "std=[a-z+0-9]*" build/cpp/CMakeFiles/popflow_core.dir/flags.make | sort -u'

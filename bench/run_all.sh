#!/bin/sh
# Run every popflow benchmark, side by side with the TorchCFM peer where there is one.
#
#   R_LIBS=/tmp/rlib sh bench/run_all.sh            # from the repository root
#
# Environment:
#   R_LIBS        library holding the installed popflow (e.g. /tmp/rlib)
#   TORCHCFM_SRC  folder holding TorchCFM's torchcfm/ package; when unset, it is extracted from
#                 the bare mirror /work/.mirror/atong01+conditional-flow-matching/repo to
#                 /tmp/torchcfm_peer (outside the repository). Peer rows are skipped, with a
#                 message, when neither exists.
#   PEER_PYTHON   Python with torch and POT (default /usr/bin/python3, Debian's)
#   BENCH_ONLY    space-separated subset of: emt_holdout throughput sampling_steps letters kang_lopo
#                 population_dynamics mfm_throughput diffusion_steps reflow_steps zinb_source (default: the
#                 first three; the population ones take 15-25 minutes each)
# Each benchmark prints a markdown table, writes CSVs to bench/results/ and a log to
# bench/results/<name>.log.
set -u
cd "$(dirname "$0")/.." || exit 1
NPROC=$(OMP_NUM_THREADS= nproc --all)  # nproc itself obeys OMP_NUM_THREADS
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export PYTHONDONTWRITEBYTECODE=1
PEER_PYTHON=${PEER_PYTHON:-/usr/bin/python3}
export PEER_PYTHON
mkdir -p bench/results

echo "## Machine and versions"
echo "date:      $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "host:      $(uname -srm); $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
echo "cpu:       $NPROC cores (nproc --all), $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
echo "memory:    $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
echo "R:         $(Rscript -e 'cat(R.version.string)' 2>/dev/null)"
echo "popflow:   $(Rscript -e 'suppressPackageStartupMessages(library(popflow)); cat(as.character(packageVersion("popflow")), "LibTorch", popflow:::pf_torch_version())' 2>&1 | tail -1)"
so=$(Rscript -e 'cat(system.file("libs", "popflow.so", package = "popflow"))' 2>/dev/null)
flags=$(readelf --debug-dump=info "$so" 2>/dev/null | grep -m1 DW_AT_producer | grep -o ' -O[0-9s]' | tr -d '\n')
echo "popflow lib: $so (compiled with:${flags:- no debug info, so unknown; tools/Makevars.user builds use -O2} -- the last -O wins)"
echo "repo HEAD: $(git rev-parse --short HEAD 2>/dev/null), $(git status --porcelain -- R src 2>/dev/null | wc -l) files changed in R/ src/ (the installed popflow may differ)"
if [ -x "$PEER_PYTHON" ]; then
  "$PEER_PYTHON" - <<'EOF'
import os, sys
sys.dont_write_bytecode = True
sys.path.insert(0, "bench")
import peer_common as pc
src, why = pc.peer_source()
try:
    import torch, ot, numpy
    print(f"python:    {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, "
          f"POT {ot.__version__}, numpy {numpy.__version__}")
except Exception as e:
    print(f"python:    {sys.executable}: {e!r}")
if src:
    sys.path.insert(0, src)
    import torchcfm
    print(f"TorchCFM:  {torchcfm.__version__} from {src} (mirror commit {pc.peer_commit()})")
else:
    print(f"TorchCFM:  absent ({why}); peer rows will be skipped")
EOF
else
  echo "python:    $PEER_PYTHON not found; peer rows will be skipped"
fi

status=0
for b in ${BENCH_ONLY:-emt_holdout throughput sampling_steps}; do
  echo
  echo "## $b  (Rscript bench/$b.R)"
  echo "(load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
  start=$(date +%s)
  Rscript "bench/$b.R" > "bench/results/$b.log" 2>&1
  rc=$?
  cat "bench/results/$b.log"
  echo "($b: exit $rc, $(( $(date +%s) - start )) s wall)"
  [ $rc -eq 0 ] || status=1
done
exit $status

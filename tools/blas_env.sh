# Sourced by tools/setup.sh and tools/test.sh: where the system's OpenBLAS does
# not recognise this CPU and would run its generic SSE kernels, export
# OPENBLAS_CORETYPE naming the CPU's AVX-512 or AVX2 kernels for the processes
# these scripts start (2.3-4x faster training steps on a 5th-generation Xeon with
# Debian 12's OpenBLAS 0.3.21). OpenBLAS reads the variable once, when it loads,
# so it must be in the environment before R or a test binary starts. The rule is
# src/core/blas_kernels.cpp's, which blasInfo() and popflow's startup message use;
# asking OpenBLAS here needs Python's ctypes, not popflow. A value already set is kept.
popflow_blas_coretype() {
  local core flags
  core=$(python3 - 2>/dev/null <<'PY'
import ctypes
lib = ctypes.CDLL("libopenblas.so.0")
for name in ("openblas_get_config", "openblas_get_corename"):
    getattr(lib, name).restype = ctypes.c_char_p
config = lib.openblas_get_config().decode()
print(lib.openblas_get_corename().decode() if "DYNAMIC_ARCH" in config else "")
PY
) || return 0
  case "$(echo "$core" | tr '[:upper:]' '[:lower:]')" in
    "" | haswell | zen | excavator | skylakex | cooperlake | sapphirerapids) return 0 ;;
  esac
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null) "
  has() { case "$flags" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
  if has avx512f && has avx512bw && has avx512vl && has avx512dq && has avx512cd; then
    echo "SkylakeX $core"
  elif has avx2 && has fma; then
    echo "Haswell $core"
  fi
}

if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  popflow_blas_advice=$(popflow_blas_coretype)
  if [ -n "$popflow_blas_advice" ]; then
    export OPENBLAS_CORETYPE=${popflow_blas_advice%% *}
    echo "popflow: OpenBLAS does not recognise this CPU (it chose its generic '${popflow_blas_advice#* }' kernels);" \
      "running with OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE. For your own R sessions:" \
      "export OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE (see ?popflow::blasInfo)"
  fi
  unset popflow_blas_advice
fi

"""Shared helpers for the TorchCFM (peer) side of the popflow benchmarks.

Nothing from TorchCFM is copied here: the peer is imported from a directory that holds its
`torchcfm` package, given by the environment variable TORCHCFM_SRC. When TORCHCFM_SRC is unset
and the bare git mirror of atong01/conditional-flow-matching exists, its `torchcfm/` folder is
extracted (git archive) to /tmp/torchcfm_peer, outside the repository, and used from there.

Run with Debian's Python (/usr/bin/python3: torch 1.13, POT 0.8.2).
"""

import gzip
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True

import numpy as np

PEER_MIRROR = os.environ.get(
    "TORCHCFM_MIRROR", "/work/.mirror/atong01+conditional-flow-matching/repo"
)
PEER_EXTRACT = os.environ.get("TORCHCFM_EXTRACT", "/tmp/torchcfm_peer")
SKIP_STATUS = 77  # exit status meaning "peer not available, skipped"

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.environ.get("POPFLOW_BENCH_DATA", os.path.join(BENCH_DIR, "..", "..", "shared", "data"))
if not os.path.isdir(DATA_DIR):
    DATA_DIR = "/work/shared/data"


def peer_source():
    """Directory holding the `torchcfm` package, or None (with a reason) when unavailable."""
    src = os.environ.get("TORCHCFM_SRC")
    if src:
        if os.path.isdir(os.path.join(src, "torchcfm")):
            return src, None
        return None, f"TORCHCFM_SRC={src} has no torchcfm/ folder"
    if os.path.isdir(os.path.join(PEER_EXTRACT, "torchcfm")):
        return PEER_EXTRACT, None
    if os.path.isdir(PEER_MIRROR):
        os.makedirs(PEER_EXTRACT, exist_ok=True)
        # The mirror lacks some large binary blobs (assets/); git prints errors about them
        # even though only torchcfm/ is archived, so its stderr is dropped.
        arch = subprocess.run(
            ["git", "-C", PEER_MIRROR, "archive", "HEAD", "torchcfm"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        if arch.returncode == 0 and arch.stdout:
            subprocess.run(["tar", "-x", "-C", PEER_EXTRACT], input=arch.stdout, check=True)
            if os.path.isdir(os.path.join(PEER_EXTRACT, "torchcfm")):
                return PEER_EXTRACT, None
        return None, f"could not extract torchcfm from the mirror {PEER_MIRROR}"
    return None, "set TORCHCFM_SRC to a folder holding TorchCFM's torchcfm/ package"


def import_peer(needs_ot=True):
    """Import TorchCFM's flow matchers, or exit with SKIP_STATUS and a clear message.

    needs_ot=False (I-CFM): where POT is not installed (a GPU machine with PyTorch alone), TorchCFM's
    module-level `import ot` gets an empty stand-in module; its OT samplers are then unusable.
    """
    src, why = peer_source()
    if src is None:
        print(f"SKIP: TorchCFM peer not available ({why})", file=sys.stderr)
        sys.exit(SKIP_STATUS)
    sys.path.insert(0, src)
    if not needs_ot:
        try:
            import ot  # noqa: F401
        except ImportError:
            import types
            sys.modules["ot"] = types.ModuleType("ot")
            print("note: POT not installed; TorchCFM imported with an empty `ot` (I-CFM only)", file=sys.stderr)
    try:
        from torchcfm.conditional_flow_matching import (  # noqa: F401
            ConditionalFlowMatcher,
            ExactOptimalTransportConditionalFlowMatcher,
            SchrodingerBridgeConditionalFlowMatcher,
        )
        import torchcfm
    except Exception as e:  # missing torch, POT, ...
        print(f"SKIP: TorchCFM peer not importable from {src} ({e!r})", file=sys.stderr)
        sys.exit(SKIP_STATUS)
    return {
        "icfm": ConditionalFlowMatcher,
        "otcfm": ExactOptimalTransportConditionalFlowMatcher,
        "sbcfm": SchrodingerBridgeConditionalFlowMatcher,
        "version": getattr(torchcfm, "__version__", "unknown"),
        "src": src,
    }


def peer_commit():
    try:
        out = subprocess.run(["git", "-C", PEER_MIRROR, "rev-parse", "--short", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def make_mlp(torch, dim, width=64, depth=3):
    """Plain MLP on [x, t]: `depth` hidden layers of `width` units with SELU, like TorchCFM's
    own `models.MLP(dim, time_varying=True, w=width)` (which has depth 3)."""
    layers = [torch.nn.Linear(dim + 1, width), torch.nn.SELU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.SELU()]
    layers.append(torch.nn.Linear(width, dim))
    return torch.nn.Sequential(*layers)


def vector_field(model, torch):
    def f(t, x):
        tt = torch.full((x.shape[0], 1), float(t), dtype=x.dtype)
        return model(torch.cat([x, tt], dim=1))
    return f


def rk4(f, x, t0, t1, steps):
    h = (t1 - t0) / steps
    t = t0
    for _ in range(steps):
        k1 = f(t, x)
        k2 = f(t + h / 2, x + h / 2 * k1)
        k3 = f(t + h / 2, x + h / 2 * k2)
        k4 = f(t + h, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t += h
    return x


# Dormand-Prince 5(4) tableau.
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_DP_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_DP_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def dopri5(f, x, t0, t1, atol=1e-5, rtol=1e-5, max_steps=100000):
    """Adaptive Dormand-Prince 5(4) with FSAL and an RMS error norm over all cells
    (the torchdiffeq convention). Returns (x(t1), number of accepted steps)."""
    span = t1 - t0
    t = t0
    k1 = f(t, x)
    # Initial step (Hairer, Norsett & Wanner, II.4).
    scale = atol + rtol * x.abs()
    d0 = ((x / scale) ** 2).mean().sqrt().item()
    d1 = ((k1 / scale) ** 2).mean().sqrt().item()
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, abs(span))
    x_try = x + h0 * k1
    d2 = (((f(t + h0, x_try) - k1) / scale) ** 2).mean().sqrt().item() / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    h = min(100 * h0, h1, abs(span))
    accepted = 0
    for _ in range(max_steps):
        if t >= t1 - 1e-12 * abs(span):
            return x, accepted
        h = min(h, t1 - t)
        ks = [k1]
        for i in range(1, 7):
            xi = x
            for j, a in enumerate(_DP_A[i]):
                if a != 0.0:
                    xi = xi + h * a * ks[j]
            ks.append(f(t + _DP_C[i] * h, xi))
        x5 = x
        for b, k in zip(_DP_B5, ks):
            if b != 0.0:
                x5 = x5 + h * b * k
        err = 0.0
        for b5, b4, k in zip(_DP_B5, _DP_B4, ks):
            if b5 != b4:
                err = err + h * (b5 - b4) * k
        scale = atol + rtol * torch_max(x.abs(), x5.abs())
        e = ((err / scale) ** 2).mean().sqrt().item()
        if e <= 1.0:
            t += h
            x = x5
            k1 = ks[6]  # FSAL
            accepted += 1
        factor = 10.0 if e == 0 else min(10.0, max(0.2, 0.9 * e ** (-1 / 5)))
        h = h * factor
    raise RuntimeError("dopri5: too many steps")


def torch_max(a, b):
    return (a > b) * a + (a <= b) * b


def read_emt():
    """EMT time course: (labels, cells) as numpy arrays (float64)."""
    path = os.path.join(DATA_DIR, "emt_timecourse.csv.gz")
    with gzip.open(path, "rt") as fh:
        header = fh.readline().strip().split(",")
        a = np.loadtxt(fh, delimiter=",")
    assert header[0] == "samples"
    return a[:, 0].astype(int), a[:, 1:]


def w1_exact(x, y):
    """Exact W1 with Euclidean ground cost, by POT's network simplex (ot.emd2)."""
    import ot
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    m = ot.dist(x, y, metric="euclidean")
    return float(ot.emd2(ot.unif(len(x)), ot.unif(len(y)), m, numItermax=10_000_000))


def now():
    return time.perf_counter()

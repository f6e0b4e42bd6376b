#!/usr/bin/python3
"""Exact OT of one minibatch: time per solve of popflow's assignment solvers against POT's
network simplex (ot.emd, what TorchCFM's exact OT-CFM calls), side by side in one run, one
thread each, on the same points; and the OT-CFM training step with and without the solve.

    bench/exact_ot.py [--sizes 256,1024,4096] [--dims 10,50] [--shapes shifted,identical,...]
                      [--solvers exact,jv,lemon,auction] [--device cpu] [--steps]
                      [--out bench/results/exact_ot.csv]
    bench/exact_ot.py --table bench/results/exact_ot.csv     (markdown tables of a run)

Shapes (source -> target, n cells each):
  shifted     N(0, I) -> N(3, 0.25 I) (issue 14's case)
  identical   N(0, I) -> N(0, I)
  clusters    two well-separated clusters (weights 1/3, 2/3) -> two others (1/2, 1/2)
  emt         the EMT time course's first -> last snapshot (10-d embedding; d = 10 only),
              drawn with replacement (so with duplicate cells)
  kang        Kang PBMC control -> IFN-beta stimulated, log expression of 100 genes projected
              on their first d principal components
For each (shape, n, d): POT's ot.emd with its default numItermax (1e5), as TorchCFM calls it, and
when that stops short of the optimum, again with numItermax 1e8 ("pot_exact"); then
build/cpp/popflow_ot_bench on the same points: popflow's solvers (see that file). Times are the
process CPU milliseconds of the solve alone (the cost matrix is made beforehand), and wall
milliseconds; the gap is the relative excess of the mean cost over LEMON's exact optimum.
--steps adds the training step: build/cpp/popflow_bench, an MLP of width 64 and depth 3 on
shifted data, batch n, with independent pairs, and with exact OT (solvers exact and auction; OT
modes resample, TorchCFM's and popflow's default, and permutation), steps per second over a few
steps (the first steps included).
Run with Debian's Python (/usr/bin/python3: numpy, POT 0.8.2); OMP_NUM_THREADS=1.
"""

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

sys.dont_write_bytecode = True
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
import numpy as np  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
DATA = os.path.join(ROOT, "inst", "extdata")


def read_csv_gz(name):
    with gzip.open(os.path.join(DATA, name), "rt") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


_cache = {}


def real_cells(name):
    if name in _cache:
        return _cache[name]
    if name == "emt":
        head, rows = read_csv_gz("emt_timecourse.csv.gz")
        a = np.array(rows, dtype=float)
        t = a[:, 0]
        out = (a[t == t.min(), 1:], a[t == t.max(), 1:])
    else:
        head, rows = read_csv_gz("kang_ifnb_pbmc.csv.gz")
        cond = np.array([r[1] for r in rows])
        x = np.array([r[3:] for r in rows], dtype=float)
        x = x - x.mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        out = (x[cond == "ctrl"], x[cond == "stim"], vt)
    _cache[name] = out
    return out


def points(shape, n, d, rng):
    if shape == "shifted":
        return rng.standard_normal((n, d)), 3 + 0.5 * rng.standard_normal((n, d))
    if shape == "identical":
        return rng.standard_normal((n, d)), rng.standard_normal((n, d))
    if shape == "clusters":
        e0, e1 = np.zeros(d), np.zeros(d)
        e0[0], e1[1] = 8.0, 8.0
        s = np.where(rng.random(n) < 1 / 3, 1.0, -1.0)[:, None]
        t = np.where(rng.random(n) < 1 / 2, 1.0, -1.0)[:, None]
        return rng.standard_normal((n, d)) + s * e0, rng.standard_normal((n, d)) + t * e1
    if shape == "emt":
        if d != 10:
            return None
        src, tgt = real_cells("emt")
        return src[rng.integers(0, len(src), n)], tgt[rng.integers(0, len(tgt), n)]
    if shape == "kang":
        ctrl, stim, vt = real_cells("kang")
        proj = vt[:d].T
        replace = n > min(len(ctrl), len(stim))
        return (ctrl[rng.choice(len(ctrl), n, replace=replace)] @ proj,
                stim[rng.choice(len(stim), n, replace=replace)] @ proj)
    raise SystemExit(f"unknown shape {shape}")


def time_pot(x0, x1, num_iter):
    import ot
    M = ot.dist(x0, x1)  # squared Euclidean, double
    w = np.full(len(x0), 1.0 / len(x0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c0, w0 = time.process_time(), time.perf_counter()
        G, log = ot.emd(w, w, M, numItermax=num_iter, log=True)
        c1, w1 = time.process_time(), time.perf_counter()
    return {"cpu_ms": 1e3 * (c1 - c0), "wall_ms": 1e3 * (w1 - w0), "mean_cost": float((G * M).sum()),
            "optimal": log.get("warning") is None}


def run_ot_bench(binary, path, n, d, solvers, device):
    out = subprocess.run([binary, "--points", path, "--n", str(n), "--d", str(d), "--solvers", ",".join(solvers),
                          "--device", device], stdout=subprocess.PIPE, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def write_step_csv(path, n, d, rng):
    x0, x1 = points("shifted", 4 * n, d, rng)
    side = np.r_[np.zeros(len(x0)), np.ones(len(x1))]
    header = "samples," + ",".join(f"x{i + 1}" for i in range(d))
    np.savetxt(path, np.c_[side, np.r_[x0, x1]], delimiter=",", header=header, comments="",
               fmt=["%d"] + ["%.7g"] * d)


def table(path):
    """Markdown tables of a CSV this script wrote: CPU ms per solve (gap to the optimum), and steps/s."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    solve = [r for r in rows if r["cpu_ms"]]
    names = [s for s in ("pot_emd", "pot_exact", "lemon", "jv", "exact", "auction") if any(r["solver"] == s for r in solve)]
    print("| shape | n | d | " + " | ".join(names) + " | POT / exact |")
    print("|---|---|---|" + "---|" * (len(names) + 1))
    cases = []
    for r in solve:
        key = (r["shape"], int(r["n"]), int(r["d"]))
        if key not in cases:
            cases.append(key)
    for key in cases:
        cells, by = [], {r["solver"]: r for r in solve if (r["shape"], int(r["n"]), int(r["d"])) == key}
        for s in names:
            r = by.get(s)
            if r is None:
                cells.append("")
                continue
            gap = float(r["gap"]) if r["gap"] else 0.0
            note = "" if abs(gap) < 1e-9 else f" ({gap:.1e})"
            cells.append(f"{float(r['cpu_ms']):.1f}{note}")
        ratio = ""
        if "pot_emd" in by and "exact" in by:
            ratio = f"{float(by['pot_emd']['cpu_ms']) / float(by['exact']['cpu_ms']):.1f}"
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + f" | {ratio} |")
    steps = [r for r in rows if r["steps_per_s"]]
    if steps:
        print()
        print("| n | d | width | variant | steps/s |")
        print("|---|---|---|---|---|")
        for r in steps:
            print(f"| {r['n']} | {r['d']} | {r.get('width') or 64} | {r['solver']} | {float(r['steps_per_s']):.2f} |")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        table(sys.argv[2])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,1024,4096")
    ap.add_argument("--dims", default="10,50")
    ap.add_argument("--shapes", default="shifted,identical,clusters,emt,kang")
    ap.add_argument("--solvers", default="exact,jv,lemon,auction")
    ap.add_argument("--no-pot", action="store_true")
    ap.add_argument("--jv-max", type=int, default=4096, help="skip plain JV above this n")
    ap.add_argument("--device", default="cpu", help="device of the auction solver")
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "cpp"))
    ap.add_argument("--steps", action="store_true", help="also time OT-CFM training steps")
    ap.add_argument("--step-sizes", default="256,1024,4096")
    ap.add_argument("--ot-modes", default="resample,permutation", help="OT-CFM ot_mode(s) of the steps")
    ap.add_argument("--step-solvers", default="exact,auction", help="ot_solver(s) of the steps")
    ap.add_argument("--widths", default="64", help="MLP width(s) of the steps (depth 3)")
    ap.add_argument("--out", default=None, help="CSV of all rows (default: print only)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    dims = [int(s) for s in args.dims.split(",") if s]
    solvers = [s for s in args.solvers.split(",") if s]
    binary = os.path.join(args.build, "popflow_ot_bench")
    have_pot = False
    if not args.no_pot:
        try:
            import ot  # noqa: F401
            have_pot = True
        except ImportError:
            print("POT not importable: its rows are skipped", file=sys.stderr)
    rows = []
    tmp = tempfile.mkdtemp(prefix="exact_ot_")

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    rng = np.random.default_rng(args.seed)
    for n in sizes:
        for d in dims:
            for shape in args.shapes.split(","):
                xy = points(shape, n, d, rng)
                if xy is None:
                    continue
                x0, x1 = (np.ascontiguousarray(a, dtype=np.float64) for a in xy)
                case = {"shape": shape, "n": n, "d": d}
                results = []
                if have_pot:
                    r = time_pot(x0, x1, 100000)
                    results.append(dict(case, solver="pot_emd", device="cpu", **r))
                    if not r["optimal"]:
                        results.append(dict(case, solver="pot_exact", device="cpu", **time_pot(x0, x1, 10**8)))
                path = os.path.join(tmp, "points.bin")
                np.concatenate([x0, x1]).tofile(path)
                use = [s for s in solvers if not (s == "jv" and n > args.jv_max)]
                for r in run_ot_bench(binary, path, n, d, use, args.device):
                    r.pop("reps", None)
                    results.append(dict(case, **{k: v for k, v in r.items() if k not in ("n", "d")}))
                lemon = [r["mean_cost"] for r in results if r["solver"] == "lemon"]
                for r in results:
                    if lemon:
                        r["gap"] = (r["mean_cost"] - lemon[0]) / max(abs(lemon[0]), 1e-300)
                    emit(r)
    if args.steps:
        step_bin = os.path.join(args.build, "popflow_bench")
        for n in [int(s) for s in args.step_sizes.split(",") if s]:
            for d in dims:
                path = os.path.join(tmp, "step.csv")
                write_step_csv(path, n, d, rng)
                steps = 40 if n <= 1024 else 8
                variants = [("independent", "exact", "resample")] + [
                    ("exact", solver, mode) for mode in args.ot_modes.split(",") for solver in args.step_solvers.split(",")]
                for width in [int(w) for w in args.widths.split(",")]:
                    for coupling, solver, mode in variants:
                        cmd = [step_bin, path, "--coupling", coupling, "--ot-solver", solver, "--ot-mode", mode,
                               "--batch", str(n), "--steps", str(steps), "--width", str(width),
                               "--device", args.device, "--json"]
                        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
                        res = json.loads(out.strip().splitlines()[-1])
                        name = "step_independent" if coupling == "independent" else f"step_{solver}_{mode}"
                        emit({"shape": "shifted", "n": n, "d": d, "solver": name, "device": args.device,
                              "width": width, "steps_per_s": res.get("steps_per_s"), "steps": steps})
    if args.out:
        keys = ["shape", "n", "d", "solver", "device", "cpu_ms", "wall_ms", "mean_cost", "gap", "optimal",
                "width", "steps_per_s", "steps"]
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

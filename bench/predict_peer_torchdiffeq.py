"""The network that popflow_predict_bench --export wrote, integrated with torchdiffeq.

    PYTHONPATH=<torchdiffeq checkout> python3 bench/predict_peer_torchdiffeq.py --dir DIR --cells CELLS.csv

Rebuilds popflow's velocity field in PyTorch from DIR/manifest.json and the raw
float32 parameters (an MLP on [x, sin/cos time embedding], SELU; the default
network, no Fourier features, residual blocks or conditioning), checks it on
DIR/probes.f32 (popflow's own outputs at random points), then moves the cells
over the model's interval with torchdiffeq's dopri5 (same atol and rtol) or
rk4 (same number of steps), one thread, --reps times. Prints one JSON line per
repeat (CPU seconds of this process, cells per CPU second, velocity
evaluations) and how far its end state is from popflow's (DIR/popflow_end.f32).
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torchdiffeq


def read_f32(path, shape):
    return torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(shape).copy())


class Field(torch.nn.Module):
    def __init__(self, man, folder):
        super().__init__()
        if man["residual"] or man["fourier_features"] or man["cond_dim"] or man["growth"] or man["activation"] != "selu":
            raise SystemExit("this peer rebuilds only the default network (plain SELU MLP, time embedding)")
        self.time_dim = man["time_dim"]
        t = man["tensors"]
        names = ["input"] + [f"hidden.{i}" for i in range(man["depth"] - 1)] + ["output"]
        self.layers = torch.nn.ModuleList()
        for name in names:
            w = read_f32(os.path.join(folder, f"{name}.weight.f32"), t[f"{name}.weight"])
            b = read_f32(os.path.join(folder, f"{name}.bias.f32"), t[f"{name}.bias"])
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            self.layers.append(lin)
        self.evaluations = 0

    def embed(self, t, n):
        tt = t.reshape(-1, 1).expand(n, 1) if t.numel() == 1 else t.reshape(-1, 1)
        if self.time_dim == 0:
            return tt
        half = self.time_dim // 2
        # popflow's time embedding (network.cpp): angular frequencies 1 to 20 on a log scale.
        freqs = torch.exp(torch.linspace(0.0, math.log(20.0), half, device=t.device))
        angles = tt * freqs.unsqueeze(0)
        return torch.cat([torch.sin(angles), torch.cos(angles)], 1)

    def forward(self, t, x):
        self.evaluations += 1
        h = torch.cat([x, self.embed(t.to(x.dtype), x.shape[0])], 1)
        for lin in self.layers[:-1]:
            h = torch.selu(lin(h))
        return self.layers[-1](h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--cells", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (then compare wall_s: CPU time means little)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(1)
    man = json.load(open(os.path.join(args.dir, "manifest.json")))
    field = Field(man, args.dir).to(dev)
    d = man["dim"]
    probes = read_f32(os.path.join(args.dir, "probes.f32"), (-1, 2 * d + 1))
    with torch.no_grad():
        probe_err = (field(probes[:, d].to(dev), probes[:, :d].to(dev)).cpu() - probes[:, d + 1:]).abs().max().item()
    cells = torch.from_numpy(np.loadtxt(args.cells, delimiter=",", dtype=np.float32)).to(dev)
    popflow_end = read_f32(os.path.join(args.dir, "popflow_end.f32"), cells.shape)
    span = torch.tensor([float(man["model_from"]), float(man["model_to"])], device=dev)
    if man["solver"] == "dopri5":
        kw = dict(method="dopri5", atol=man["atol"], rtol=man["rtol"])
    else:
        step = (man["model_to"] - man["model_from"]) / man["steps"]
        kw = dict(method=man["solver"], options=dict(step_size=step))
    for rep in range(args.reps):
        field.evaluations = 0
        if dev.type == "cuda":
            torch.cuda.synchronize()
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            end = torchdiffeq.odeint(field, cells, span, **kw)[-1]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        print(json.dumps({"impl": "torchdiffeq", "solver": man["solver"], "cells": cells.shape[0], "threads": 1,
                          "rep": rep + 1, "cpu_s": round(cpu, 4), "wall_s": round(wall, 4),
                          "cells_per_cpu_s": round(cells.shape[0] / cpu), "evaluations": field.evaluations,
                          "probe_max_abs_err": probe_err,
                          "device": args.device,
                          "end_max_abs_diff_vs_popflow": (end.cpu() - popflow_end).abs().max().item()}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""TorchCFM (peer) side of the training-throughput benchmark: one configuration per process.

    throughput_torchcfm.py --make-data PATH          write a synthetic 10-d data set (optional;
                                                     bench/throughput.R writes its own)
    throughput_torchcfm.py --idle                    import only (start-up RSS)
    throughput_torchcfm.py --data PATH --method otcfm --width 64 --depth 3 --batch 256 --steps 500
    throughput_torchcfm.py --data PATH --method icfm --device cuda ...   (bench/gpu_session.sh)

The training loop is the TorchCFM tutorial's: draw `batch` source and `batch` target cells,
(s, x_s, u_s) from TorchCFM's flow matcher (exact OT-CFM: POT's network simplex plan, pairs
drawn from it), MLP on [x, t] (SELU), MSE, Adam. `warmup` steps run first and are not timed;
steps/s is measured around the remaining loop. Prints one line `RESULT {json}`. On a GPU the cells
live on the device, the drawn indices are sent each step, and the clock stops after a synchronize.
Run it under `/usr/bin/time -v` for the peak RSS of the process (the driver does).
"""

import argparse
import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402


def make_data(path, n=4096, dim=10, seed=0):
    """Source N(0, I); target a two-component Gaussian mixture, shifted and narrower."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((n, dim))
    centre = np.zeros(dim)
    centre[0], centre[1] = 3.0, 1.0
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None]
    x1 = 0.5 * rng.standard_normal((n, dim)) + sign * centre
    side = np.r_[np.zeros(n), np.ones(n)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = "side," + ",".join(f"x{i + 1}" for i in range(dim))
    np.savetxt(path, np.c_[side, np.r_[x0, x1]], delimiter=",", header=header, comments="",
               fmt=["%d"] + ["%.7g"] * dim)
    print(f"wrote {path}: {n} source + {n} target cells, {dim} dims")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-data")
    ap.add_argument("--idle", action="store_true", help="import torch, POT and TorchCFM, then exit")
    ap.add_argument("--data")
    ap.add_argument("--method", default="otcfm", choices=["icfm", "otcfm", "sbcfm"])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.make_data:
        make_data(args.make_data)
        return

    peer = pc.import_peer(needs_ot=args.method != "icfm")
    import numpy as np
    import torch
    import ot  # noqa: F401  (TorchCFM's OT-CFM imports it too)

    dev = torch.device(args.device)

    if args.idle:
        print("RESULT " + json.dumps({"impl": "TorchCFM", "method": "idle"}), flush=True)
        return

    torch.set_num_threads(args.threads)
    a = np.loadtxt(args.data, delimiter=",", skiprows=1)
    X0 = torch.from_numpy(a[a[:, 0] == 0, 1:]).float().to(dev)
    X1 = torch.from_numpy(a[a[:, 0] == 1, 1:]).float().to(dev)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    FM = peer[args.method](sigma=args.sigma)
    model = pc.make_mlp(torch, X0.shape[1], args.width, args.depth).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def step():
        opt.zero_grad()
        x0 = X0[torch.from_numpy(np.random.randint(X0.shape[0], size=args.batch)).to(dev)]
        x1 = X1[torch.from_numpy(np.random.randint(X1.shape[0], size=args.batch)).to(dev)]
        t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1)
        vt = model(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(args.warmup):
        step()
    sync()
    t0, cpu0 = pc.now(), time.process_time()
    for _ in range(args.steps):
        loss = step()
    sync()
    secs = pc.now() - t0
    cpu = time.process_time() - cpu0  # user + system CPU time: comparable on a busy machine
    print("RESULT " + json.dumps({
        "impl": "TorchCFM", "method": args.method, "width": args.width, "depth": args.depth,
        "batch": args.batch, "steps": args.steps, "seconds": secs, "cpu_seconds": cpu,
        "steps_per_s": args.steps / secs, "final_loss": float(loss.item()),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
        "torchcfm": peer["version"],
    }), flush=True)


if __name__ == "__main__":
    main()

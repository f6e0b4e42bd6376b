"""PyTorch implementation of the Meta Flow Matching letters model, for side-by-side throughput.

Written for popflow's benchmarks (no code from the reference repository): the same model and
batch as bench/cli/popflow_mfm_bench.cpp, so steps/s compare like for like on one machine.

  python3 bench/mfm_peer_torch.py --device cuda --populations-per-step 10 --steps 200 [--tf32 1]
      [--graphs cached|per_step] [--fused-adam 0|1] [--read-loss 1|0] [--cuda-graph 0|1] [--json]

Model: GCN 2-64-64-64 (no bias in the products, bias after propagation, ReLU between layers) on a
k = 50 nearest-neighbour graph of each population's source cells (symmetrised, self-loops,
D^-1/2 A D^-1/2), mean over the population's nodes, unit length; decoder on [x, 128-d sinusoidal
time embedding, 256 Fourier features of x (scale 0.01), embedding]: Linear to 512, SELU, two
residual blocks (SELU(Linear), Linear, add, SELU), Linear to 2. I-CFM path, sigma 0.1, independent
coupling, Adam lr 1e-4, joint training. Each step draws P populations and every one of their cells
on both sides, in a random order (as popflow does with cells_per_population = all of them).

--graphs per_step rebuilds the drawn populations' kNN graphs every step, as the reference code
does; cached builds each once. --read-loss 1 reads the loss back every step (as a training loop
that logs it does); --cuda-graph 1 captures the whole step (forward, backward, Adam) in a CUDA
graph and replays it (cached graphs, capturable Adam), the strongest PyTorch variant here.
The steady rate is timed after --warmup steps, with the device synchronised at both ends.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--populations", type=int, default=12)
    p.add_argument("--populations-per-step", type=int, default=10)
    p.add_argument("--cells", type=int, default=700)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--tf32", type=int, default=0)
    p.add_argument("--graphs", default="cached", choices=["cached", "per_step"])
    p.add_argument("--fused-adam", type=int, default=0)
    p.add_argument("--read-loss", type=int, default=1)
    p.add_argument("--cuda-graph", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    a.populations = max(a.populations, a.populations_per_step)
    return a


def synthetic(n_pop, n, gen):
    """Rings of different radius and centre; the target is the source rotated and shifted."""
    src, tgt = [], []
    for p in range(n_pop):
        ang = torch.rand(n, generator=gen) * 2 * math.pi
        rad = 0.5 * (p % 3 + 1) + 0.1 * torch.randn(n, generator=gen)
        s = torch.stack([rad * torch.cos(ang), rad * torch.sin(ang)], 1) + 2 * torch.randn(1, 2, generator=gen)
        th = math.pi * p / n_pop
        rot = torch.tensor([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
        src.append(s)
        tgt.append(s @ rot + 1)
    return torch.stack(src), torch.stack(tgt)  # [P, n, 2] each


def knn_graph(x, k):
    """Edges (row, col) and weights of the normalised symmetric kNN graph with self-loops."""
    n = x.shape[0]
    d = torch.cdist(x, x)
    nbr = d.topk(k + 1, largest=False).indices  # includes the cell itself
    rows = torch.arange(n, device=x.device).repeat_interleave(k + 1)
    a = torch.zeros(n, n, device=x.device)
    a[rows, nbr.reshape(-1)] = 1.0
    a = torch.maximum(a, a.t())
    a.fill_diagonal_(1.0)
    deg = a.sum(1)
    inv = deg.rsqrt()
    idx = a.nonzero().t()
    w = inv[idx[0]] * inv[idx[1]]
    return idx, w


class GCN(nn.Module):
    def __init__(self, dim=2, width=64, layers=3):
        super().__init__()
        self.lin = nn.ModuleList(nn.Linear(dim if i == 0 else width, width, bias=False) for i in range(layers))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(width)) for _ in range(layers))

    def forward(self, x, adj, n_graphs):
        h = x
        for i, (lin, b) in enumerate(zip(self.lin, self.bias)):
            h = torch.sparse.mm(adj, lin(h)) + b
            if i + 1 < len(self.lin):
                h = F.relu(h)
        m = h.view(n_graphs, -1, h.shape[1]).mean(1)
        return m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)


class Decoder(nn.Module):
    def __init__(self, dim=2, width=512, blocks=2, time_dim=128, fourier=256, emb=64):
        super().__init__()
        self.time_dim = time_dim
        self.register_buffer("fourier", torch.randn(dim, fourier // 2) * 0.01)
        self.inp = nn.Linear(dim + time_dim + fourier + emb, width)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)])
                                    for _ in range(blocks))
        self.out = nn.Linear(width, dim)

    def forward(self, x, t, cond):
        half = self.time_dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(20.0), half, device=x.device))
        ang = t[:, None] * freqs[None]
        proj = x @ self.fourier * (2 * math.pi)
        h = F.selu(self.inp(torch.cat([x, torch.sin(ang), torch.cos(ang), torch.sin(proj), torch.cos(proj), cond], 1)))
        for l1, l2 in self.blocks:
            h = F.selu(h + l2(F.selu(l1(h))))
        return self.out(h)


def main():
    a = parse()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(a.tf32)
        torch.backends.cudnn.allow_tf32 = bool(a.tf32)
    gen = torch.Generator().manual_seed(1)
    src, tgt = synthetic(a.populations, a.cells, gen)
    src, tgt = src.to(dev), tgt.to(dev)
    P, n = a.populations_per_step, a.cells
    torch.manual_seed(1)
    gcn, dec = GCN().to(dev), Decoder().to(dev)
    params = list(gcn.parameters()) + list(dec.parameters())
    cached = [knn_graph(src[p], a.k) for p in range(a.populations)] if a.graphs == "cached" else None

    def batch_adjacency(pops):
        idx, ws, off = [], [], 0
        for p in pops:
            i, w = cached[p] if cached is not None else knn_graph(src[p], a.k)
            idx.append(i + off)
            ws.append(w)
            off += n
        return torch.sparse_coo_tensor(torch.cat(idx, 1), torch.cat(ws), (off, off)).coalesce()

    def loss_of(x_src, adj, x0, x1, t, eps):
        emb = gcn(x_src.reshape(-1, 2), adj, P)
        xt = (1 - t)[:, None] * x0 + t[:, None] * x1 + 0.1 * eps
        cond = emb.repeat_interleave(n, 0)
        return F.mse_loss(dec(xt, t, cond), x1 - x0)

    def draw():
        pops = torch.randperm(a.populations)[:P].tolist()
        order0 = torch.argsort(torch.rand(P, n, device=dev), 1)
        order1 = torch.argsort(torch.rand(P, n, device=dev), 1)
        sel = torch.tensor(pops, device=dev)
        x_src = src[sel]
        x0 = torch.gather(x_src, 1, order0[..., None].expand(-1, -1, 2)).reshape(-1, 2)
        x1 = torch.gather(tgt[sel], 1, order1[..., None].expand(-1, -1, 2)).reshape(-1, 2)
        t = torch.rand(P * n, device=dev)
        eps = torch.randn(P * n, 2, device=dev)
        return pops, x_src, x0, x1, t, eps

    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    if a.cuda_graph:
        # Static inputs, one captured step (forward, backward, capturable Adam); each replay is a step.
        opt = torch.optim.Adam(params, lr=1e-4, capturable=True)
        pops, x_src, x0, x1, t, eps = draw()
        adj = batch_adjacency(pops)
        static = [x_src.clone(), x0.clone(), x1.clone(), t.clone(), eps.clone()]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                opt.zero_grad(set_to_none=False)
                loss_of(static[0], adj, *static[1:]).backward()
                opt.step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=False)
        with torch.cuda.graph(graph):
            static_loss = loss_of(static[0], adj, *static[1:])
            static_loss.backward()
            opt.step()

        def step():
            _, xs, y0, y1, tt, ee = draw()  # the drawn population set's graph stays the captured one
            for dst, val in zip(static, (xs, y0, y1, tt, ee)):
                dst.copy_(val)
            graph.replay()
            return static_loss
    else:
        opt = torch.optim.Adam(params, lr=1e-4, fused=bool(a.fused_adam) and dev.type == "cuda")

        def step():
            pops, x_src, x0, x1, t, eps = draw()
            loss = loss_of(x_src, batch_adjacency(pops), x0, x1, t, eps)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

    for _ in range(a.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
        if a.read_loss:
            loss.item()
    sync()
    sec = time.perf_counter() - start
    row = {"impl": "pytorch", "device": a.device, "torch": torch.__version__, "tf32": a.tf32, "graphs": a.graphs,
           "fused_adam": a.fused_adam, "read_loss": a.read_loss, "cuda_graph": a.cuda_graph,
           "populations_per_step": P, "cells": n, "steps": a.steps, "seconds": round(sec, 4),
           "steady_steps_per_s": round(a.steps / sec, 3), "final_loss": round(float(loss), 5)}
    print(json.dumps(row) if a.json else row, flush=True)


if __name__ == "__main__":
    main()

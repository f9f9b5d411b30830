"""Training throughput of the torch hash encoding + MLPs against a naive per-level loop.

Samples per second through encoding -> density MLP -> colour MLP, forward and backward, at
Instant-NGP's default size (16 levels x 2 features, 2^19 table, base 16, finest 2048), for
``nerf_training``'s vectorised backend and for a straightforward implementation written here
(a Python loop over levels and corners, autograd through ``index_select``). Same run, same
inputs, same parameters.

    .venv/bin/python benchmarks/bench_hash_encoding.py [--batch 65536] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from nerf_training.field import mlp
from nerf_training.hash_encoding import HashEncodingConfig, TorchHashEncoding, spatial_hash
from nerf_training.sh_encoding import spherical_harmonics


class NaiveHashEncoding(nn.Module):
    """Per-level, per-corner loop over the same parameter layout (the baseline)."""

    def __init__(self, vectorised: TorchHashEncoding):
        super().__init__()
        self.layout = vectorised.layout
        self.config = vectorised.config
        self.params = vectorised.params  # shared: identical outputs, identical parameters

    def forward(self, x):
        table = self.params.view(-1, self.config.n_features_per_level)
        outs = []
        for level in range(self.config.n_levels):
            pos = x * float(self.layout.scales[level]) + 0.5
            base = torch.floor(pos).long()
            frac = pos - base
            res, size = int(self.layout.resolutions[level]), int(self.layout.sizes[level])
            acc = 0
            for corner in range(8):
                bits = torch.tensor([corner & 1, (corner >> 1) & 1, (corner >> 2) & 1])
                c = base + bits
                w = torch.prod(torch.where(bits.bool(), frac, 1 - frac), -1, keepdim=True)
                if self.layout.dense[level]:
                    idx = c[:, 0] + c[:, 1] * res + c[:, 2] * res * res
                else:
                    idx = spatial_hash(c)
                acc = acc + w * table.index_select(0, idx % size + int(self.layout.offsets[level]))
            outs.append(acc)
        return torch.cat(outs, -1)


def samples_per_second(encoding, density_mlp, color_mlp, x, d, repeats: int) -> float:
    def step():
        h = density_mlp(encoding(x))
        rgb = torch.sigmoid(color_mlp(torch.cat([spherical_harmonics(d), h[:, 1:]], -1)))
        loss = torch.exp(h[:, 0]).mean() + rgb.mean()
        loss.backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return x.shape[0] / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1 << 16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_hash_encoding.json"))
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 1 << 13, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = HashEncodingConfig()  # Instant-NGP default
    vectorised = TorchHashEncoding(config)
    naive = NaiveHashEncoding(vectorised)
    density_mlp = mlp(config.n_output_dims, 64, 1, 16)
    color_mlp = mlp(16 + 15, 64, 2, 3)
    x = torch.rand(args.batch, 3)
    d = torch.nn.functional.normalize(torch.randn(args.batch, 3), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(vectorised(x[:4096]), naive(x[:4096]), atol=1e-5, rtol=1e-5)
    rows = {}
    for name, enc in (("naive per-level loop", naive), ("vectorised (ours)", vectorised)):
        rows[name] = samples_per_second(enc, density_mlp, color_mlp, x, d, args.repeats)
    speedup = rows["vectorised (ours)"] / rows["naive per-level loop"]
    print(f"hash encoding + MLPs, fwd+bwd, batch {args.batch}, threads {torch.get_num_threads()}")
    for name, sps in rows.items():
        print(f"  {name:24s} {sps / 1e3:10.1f} k samples/s")
    print(f"  speed-up {speedup:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "samples_per_s": rows,
                "speedup": speedup,
                "config": vars(config),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

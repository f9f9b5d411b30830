"""Copy a pretraining run with its attention tempered: every Swin block's query and key
projections scaled by ``--factor`` f, so every attention logit ``q.k / sqrt(d)`` shrinks by
f^2 while the values, the MLPs, the norms and the relative position tables stay pretrained.

A mechanism experiment (issue 23): the pretrained encoders' attention is far sharper than an
untrained one's (query-key logits 100x larger, a few tokens of each window taking most of
the weight). Fine-tuning from the tempered copy asks whether that sharpness, rather than
what the weights encode, is what a detector fine-tuned from them loses. The copy is a
pretraining run folder like any other (``config.json``, ``metrics.json``, every kept
checkpoint), so ``bench_transfer.py --pretrain-tag`` fine-tunes from it unchanged.

    .venv/bin/python benchmarks/temper_attention.py \\
        bench_out/t23b/pretrain_independent_d0_structure_first_decorrelated_r1024_s0 \\
        bench_out/t23b/pretrain_independent_d0_structure_first_decorrelated_r1024qk_s0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from torch import Tensor

QKV_SUFFIXES = (".attn.qkv.weight", ".attn.qkv.bias")


def temper_queries_and_keys(state: dict[str, Tensor], factor: float) -> list[str]:
    """Scale, in place, the query and key rows of every ``*.attn.qkv`` tensor of ``state``
    (rows ``[0, 2C)`` of the ``(3C, ...)`` projection: queries then keys then values, as
    :class:`model.networks.swin3d.WindowAttention3D` splits them). Returns the names."""
    names = [n for n in state if n.endswith(QKV_SUFFIXES)]
    for name in names:
        tensor = state[name]
        if tensor.shape[0] % 3:
            raise ValueError(f"{name}: {tuple(tensor.shape)} is not a (3C, ...) projection")
        queries_and_keys = 2 * tensor.shape[0] // 3
        tensor[:queries_and_keys] *= factor
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished pretraining run folder")
    p.add_argument("out", type=Path, help="the tempered copy (a new run folder)")
    p.add_argument("--factor", type=float, default=0.1,
                   help="scale of the query and key projections (logits scale by its square)")
    args = p.parse_args(argv)
    if not (args.run / "metrics.json").is_file():
        raise SystemExit(f"{args.run}: no metrics.json: not a finished pretraining run")
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; choose a new folder")
    if not 0 < args.factor:
        raise SystemExit(f"--factor {args.factor}: must be > 0")
    (args.out / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "metrics.json"):
        shutil.copy2(args.run / name, args.out / name)
    for path in sorted((args.run / "checkpoints").glob("*.pt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        names = temper_queries_and_keys(checkpoint["model"], args.factor)
        checkpoint["tempered_attention"] = {"factor": args.factor, "source": str(path)}
        torch.save(checkpoint, args.out / "checkpoints" / path.name)
        print(f"{path.name}: {len(names)} projections' queries and keys x {args.factor:g}")
    (args.out / "tempered.json").write_text(json.dumps(
        {"source": str(args.run), "factor": args.factor}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pack the pretraining runs of a ``bench_transfer.py --stage pretrain`` work folder for the
trip back from a GPU machine: one ``.tar`` per run with its ``metrics.json``,
``config.json`` and ``train_log.jsonl``, its last checkpoint without optimiser, scheduler
and RNG state (what fine-tuning and the probes read: the model, its config, the position)
and, where it fits under ``--max-mb``, its middle checkpoint likewise with the weights in
float16 (a point of the probe curve).

    python benchmarks/pack_pretraining.py WORK OUT       # on the GPU machine
    tar -xf OUT/pretrain_....tar -C bench_out/transfer   # here; then bench_transfer.py
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

import torch

KEPT = ("format", "version", "task", "position", "model", "config", "model_config", "metrics")
"""Checkpoint keys fine-tuning and the probes read; the rest only resumes a run."""


def slim_checkpoint(path: Path, dtype: torch.dtype | None = None) -> bytes:
    """``path``'s checkpoint without resume state (weights cast to ``dtype`` if given)."""
    content = torch.load(path, map_location="cpu", weights_only=False)
    slim = {k: content[k] for k in KEPT if k in content}
    if dtype is not None:
        slim["model"] = {k: v.to(dtype) if v.is_floating_point() else v
                         for k, v in slim["model"].items()}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    return buffer.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack_run(run: Path, out: Path, max_bytes: int) -> Path:
    """``out/<run name>.tar`` (see the module doc)."""
    steps = sorted((run / "checkpoints").glob("step_*.pt"))
    if not steps:
        raise SystemExit(f"{run}: no checkpoints/step_*.pt (did pretraining finish?)")
    files = {f"{run.name}/{name}": (run / name).read_bytes()
             for name in ("metrics.json", "config.json", "train_log.jsonl")
             if (run / name).is_file()}  # fmt: skip
    files[f"{run.name}/checkpoints/{steps[-1].name}"] = slim_checkpoint(steps[-1])
    if len(steps) > 1:
        middle = steps[(len(steps) - 1) // 2]
        data = slim_checkpoint(middle, torch.float16)
        if sum(map(len, files.values())) + len(data) + 64_000 <= max_bytes:
            files[f"{run.name}/checkpoints/{middle.name}"] = data
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{run.name}.tar"
    with tarfile.open(target, "w") as tar:
        for name, data in files.items():
            add_bytes(tar, name, data)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="bench_transfer.py's --work")
    parser.add_argument("out", type=Path, help="folder the .tar files go to")
    parser.add_argument("--max-mb", type=float, default=16.0,
                        help="largest .tar (MiB): the middle checkpoint is left out above it")
    args = parser.parse_args(argv)
    runs = sorted(p for p in args.work.glob("pretrain_*") if (p / "metrics.json").is_file())
    if not runs:
        raise SystemExit(f"{args.work}: no finished pretraining runs")
    for run in runs:
        target = pack_run(run, args.out, int(args.max_mb * 2**20))
        print(f"{target}: {target.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

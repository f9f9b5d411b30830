"""Loader throughput: (4, 160, 160, 160) float32 batches from a local GridStore vs NeRF-MAE .npz.

Both paths deliver the same samples (``rgba`` padded at the high end to 160^3, ``valid``)
with 0 and 2 DataLoader workers, in the same run:

  trainer  the batches of a pretraining run exactly as the engine gets them
           (``model.training.trainer.Trainer.batches``: the task's ``GridDataset`` with the
           run's crop and augmentation, the resumable sampler, ``model.training.loaders``'
           DataLoader with ``collate_grids``, a new iterator per epoch): float16
           Blosc-zstd chunks decoded and cast chunk by chunk into the padded batch, which
           workers allocate in shared memory, handed over without a copy
  npz      NeRF-MAE's path: ``np.load(f)["rgbsigma"]`` (zlib, float32 (X, Y, Z, 4)),
           ``astype(float32)``, transpose to (4, X, Y, Z), zero-pad to 160^3, default_collate

Grids come from ``bench_store.benchmark_grids`` (synthetic rooms' analytic ground truth,
cached); ``--scenes`` ids cycle over ``--rooms`` distinct rooms (files are separate, so
every sample is read and decoded; all of it sits in the OS page cache, as a training
set that fits in RAM would). Timing: one warm-up batch per loader, then ``--epochs``
passes. No pin_memory (this machine has no GPU). Goal: trainer >= 20 grids/s with 2 workers
and >= 3x npz.
Besides wall-clock grids/s, the CPU seconds per grid (main process + workers) are
recorded: on a shared, oversubscribed machine they say what the cores would deliver
unloaded (``cpu_bound_grids_per_s`` = grids per CPU second x min(cpu_count, max(workers, 1)):
an estimate, not a measurement).

    .venv/bin/python benchmarks/bench_loader.py [--quick] [--out bench_out/bench_loader.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import GRID_CACHE, REPO_ROOT, benchmark_grids  # noqa: E402

from grid_store import GridStore  # noqa: E402

log = logging.getLogger("bench_loader")


class NpzGridDataset(Dataset):
    """NeRF-MAE's loading of ``rgbsigma`` .npz files, returning GridDataset's samples."""

    def __init__(self, files: list[Path], size: int = 160):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        with np.load(self.files[index]) as data:
            rgbsigma = data["rgbsigma"].astype(np.float32)  # (X, Y, Z, 4)
        rgba = torch.from_numpy(rgbsigma).permute(3, 0, 1, 2)  # (4, X, Y, Z) view
        x, y, z = rgba.shape[1:]
        padded = torch.nn.functional.pad(
            rgba, (0, self.size - z, 0, self.size - y, 0, self.size - x)
        )
        valid = torch.zeros((self.size,) * 3, dtype=torch.bool)
        valid[:x, :y, :z] = True
        return {"rgba": padded, "valid": valid, "scene_id": self.files[index].stem}


def npz_batches(dataset: Dataset, workers: int, batch: int) -> Iterator[dict]:
    """NeRF-MAE's loading, epoch after epoch (persistent workers: its best case)."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    while True:
        yield from loader


def stacking_collate(samples: list[dict]) -> dict:
    """What each task's collate did before the engine used ``collate_grids``: stack (copy)."""
    return {"rgba": torch.stack([s["rgba"] for s in samples]),
            "valid": torch.stack([s["valid"] for s in samples]),
            "scene_id": [s["scene_id"] for s in samples]}  # fmt: skip


def trainer_batches(store_url: str, out_dir: str, workers: int, batch: int,
                    collate=None) -> Iterator[dict]:  # fmt: skip
    """The micro-batches a pretraining run of the engine trains on, as it builds them (with
    ``collate``, as it did with that collate instead)."""
    from model.tasks.pretrain import MAETask, PretrainConfig
    from model.training.distributed import DistributedContext
    from model.training.trainer import Trainer

    config = PretrainConfig(store_url=store_url, out_dir=out_dir, preset="tiny", resolution=160,
                            batch_size=batch, num_workers=workers, val_fraction=0.0,
                            device="cpu")  # fmt: skip
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"))
    trainer = Trainer(config, MAETask(config, ctx), ctx)
    if collate is not None:
        trainer.train_loader.collate_fn = collate
    for micro_batches in trainer.batches():
        yield from micro_batches


def workers_cpu() -> float:
    """CPU seconds of this process's children: the ended ones (the trainer starts new
    workers every epoch) and the live ones."""
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = sum(sum(c.cpu_times()[:2]) for c in psutil.Process().children())
    return ended.ru_utime + ended.ru_stime + live


def grids_per_second(batches: Iterator[dict], steps: int, workers: int) -> dict:
    """Time ``steps`` batches after a warm-up one (worker start, first reads)."""
    first = next(batches)
    assert first["rgba"].shape[1:] == (4, 160, 160, 160) and first["rgba"].dtype == torch.float32
    del first
    grids, start, cpu_start = 0, time.perf_counter(), time.process_time()
    workers_start = workers_cpu()
    for _ in range(steps):
        grids += next(batches)["rgba"].shape[0]  # (B, 4, 160, 160, 160)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start + workers_cpu() - workers_start
    batches.close()
    return {
        "grids": grids,
        "seconds": seconds,
        "grids_per_s": grids / seconds,
        "cpu_s_per_grid": cpu / grids,
        # What the CPU work alone allows on this machine's cores when nothing else runs.
        "cpu_bound_grids_per_s": grids / cpu * min(os.cpu_count() or 1, max(workers, 1)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=4, help="distinct grids")
    parser.add_argument("--scenes", type=int, default=32, help="scene ids (cycling over rooms)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--grids", type=Path, default=None, help="folder of contract-1 .npz grids")
    parser.add_argument("--quick", action="store_true", help="1 room, 8 scenes, 1 epoch")
    parser.add_argument("--before", action="store_true",
                        help="also the trainer's batches with the stacking collate the tasks "
                             "had before (path 'stacked')")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_out" / "bench_loader.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.rooms, args.scenes, args.epochs = 1, 8, 1
    grids = list(benchmark_grids(args.rooms, 160, GRID_CACHE, args.grids).values())

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = GridStore(Path(tmp) / "grids.zarr")
        files = []
        for i in range(args.scenes):
            # rgba only: the .npz path carries no labels, so neither side loads any.
            grid = grids[i % len(grids)].replace(semantic=None, boxes=None, box_labels=None)
            store.write_grid(f"scene_{i:04d}", grid)
            files.append(Path(tmp) / f"scene_{i:04d}.npz")
            np.savez_compressed(
                files[-1], rgbsigma=np.moveaxis(grid.rgba.astype(np.float32), 0, -1)
            )
        steps = args.epochs * args.scenes // args.batch
        for workers in args.workers:  # the two paths alternate, so drift hits both alike
            sources = {
                "trainer": trainer_batches(store.url, str(Path(tmp) / "run"), workers,
                                           args.batch),
                "npz": npz_batches(NpzGridDataset(files), workers, args.batch),
            }  # fmt: skip
            if args.before:
                sources["stacked"] = trainer_batches(store.url, str(Path(tmp) / "run"), workers,
                                                     args.batch, stacking_collate)  # fmt: skip
            for name, batches in sources.items():
                row = {"path": name, "workers": workers, "batch": args.batch,
                       **grids_per_second(batches, steps, workers)}  # fmt: skip
                log.info("%s workers=%d: %.1f grids/s", name, workers, row["grids_per_s"])
                results.append(row)

    best = {p: max(r["grids_per_s"] for r in results if r["path"] == p) for p in ("trainer", "npz")}
    two = [r["grids_per_s"] for r in results if r["path"] == "trainer" and r["workers"] == 2]
    summary = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "distinct_grids": len(grids),
        "shapes": [list(g.shape) for g in grids],
        "scenes": args.scenes,
        "best_trainer_grids_per_s": best["trainer"],
        "trainer_2_workers_grids_per_s": two[0] if two else None,
        "best_npz_grids_per_s": best["npz"],
        "speedup_best_vs_best": best["trainer"] / best["npz"],
        "goals": {"trainer with 2 workers (#21)": ">= 20 grids/s", "vs npz (#4)": ">= 3x"},
    }
    summary["meets_goal_21"] = bool(two) and two[0] >= 20
    summary["meets_goal_4"] = summary["speedup_best_vs_best"] >= 3

    print(
        f"{'path':<7} {'workers':>7} {'batch':>5} {'grids':>6} {'seconds':>8} {'grids/s':>8} "
        f"{'cpu s/grid':>10} {'cpu-bound grids/s':>17}"
    )
    for r in results:
        print(
            f"{r['path']:<7} {r['workers']:>7} {r['batch']:>5} {r['grids']:>6} "
            f"{r['seconds']:>8.2f} {r['grids_per_s']:>8.1f} {r['cpu_s_per_grid']:>10.3f} "
            f"{r['cpu_bound_grids_per_s']:>17.1f}"
        )
    print(
        f"best trainer {best['trainer']:.1f} grids/s vs best npz {best['npz']:.1f} grids/s "
        f"({summary['speedup_best_vs_best']:.1f}x); trainer with 2 workers >= 20 grids/s: "
        f"{summary['meets_goal_21']}; >= 3x npz: {summary['meets_goal_4']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

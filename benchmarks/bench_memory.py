"""Peak memory of real training runs against the trainer's estimate (model.training.memory).

Each row is one run of the engine exactly as users start it (``model.tasks.train``: store
reading, loaders, model, steps, a validation, checkpoints) in a fresh process on a store of
three synthetic rooms (exact ground truth with labels and boxes) at the row's resolution,
two optimiser steps. While it runs, the sum of the proportional set sizes (PSS) of the run's
process and its DataLoader workers is sampled every 50 ms: shared-memory batches count once,
as the kernel (and a cgroup) counts them. The estimate is the one the trainer logged in
``config.json`` before allocating anything.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--out bench_out/bench_memory.json]

``--fit`` prints the runtime, activation factor and workspace floats per voxel that best fit
the rows (least squares on measured minus the exact parts), the figures behind the module's
constants.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
log = logging.getLogger("bench_memory")

ROWS = [
    # task, preset, resolution, batch, workers, extra config
    ("pretrain", "tiny", 32, 1, 0, {}),
    ("pretrain", "tiny", 64, 2, 0, {}),
    ("pretrain", "tiny", 96, 2, 0, {}),
    ("pretrain", "swin_t", 64, 1, 0, {}),
    ("pretrain", "swin_s", 32, 2, 0, {}),
    ("pretrain", "swin_s", 64, 1, 0, {}),
    ("pretrain", "swin_s", 64, 2, 0, {}),
    ("pretrain", "swin_s", 96, 1, 0, {}),
    ("pretrain", "tiny", 64, 2, 2, {}),
    ("semantics", "tiny", 64, 2, 0, {}),
    ("semantics", "swin_s", 64, 1, 0, {}),
    ("semantics", "swin_s", 96, 1, 0, {}),
    ("superres", "tiny", 32, 2, 0, {"target": 48}),
    ("detect", "tiny", 64, 2, 0, {"detector_overrides": {"channels": 64}}),
    ("detect", "swin_s", 64, 1, 0, {}),
]
QUICK = [0, 1, 9, 12, 13]


def write_store(root: Path, resolution: int) -> str:
    """Three synthetic rooms at ``resolution`` (labels and boxes included), cached."""
    from grid_store import GridStore
    from pipeline.synthetic.ground_truth import sample_ground_truth
    from pipeline.synthetic.room import make_room

    url = root / f"rooms_{resolution}.zarr"
    if not url.exists():
        store = GridStore(str(url))
        for seed in range(3):
            grid = sample_ground_truth(make_room(seed), resolution).with_empty_space(0.01)
            store.write_grid(f"room{seed}", grid)
    return str(url)


def run_one(spec: dict) -> None:
    """The child process: one training run of ``spec`` (then exits)."""
    from model.tasks import make_config, train

    train(make_config(spec.pop("task"), **spec))


def pss_tree(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(spec: dict) -> dict:
    """Start a run of ``spec`` and sample its process tree's PSS until it ends."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, __file__, "--run-one", json.dumps(spec)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    peak, watched = 0, psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, pss_tree(watched))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"run failed: {spec}\n{err[-3000:]}")
    memory = json.loads((Path(spec["out_dir"]) / "config.json").read_text())["resolved"]["memory"]
    return {"measured_peak": peak, "estimate": memory, "seconds": time.perf_counter() - started}


def fit(rows: list[dict]) -> dict:
    """Least squares over the rows without workers: measured - (parameters + optimizer +
    batches) = runtime + factor x saved activations + floats x 4 bytes x batch x S^3."""
    rows = [r for r in rows if r["workers"] == 0]
    exact = np.array([r["estimate"]["parameters"] + r["estimate"]["optimizer"]
                      + r["estimate"]["batches"] for r in rows], float)  # fmt: skip
    saved = np.array([r["estimate"]["saved_activations"] for r in rows], float)
    voxels = np.array([4.0 * r["batch"] * r["resolution"] ** 3 for r in rows])
    measured = np.array([r["measured_peak"] for r in rows], float)
    design = np.stack([np.ones_like(saved), saved, voxels], 1)
    (runtime, factor, floats), *_ = np.linalg.lstsq(design, measured - exact, rcond=None)
    return {"runtime_gib": runtime / GIB, "activation_factor": factor,
            "workspace_floats_per_voxel": floats}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="five small rows")
    parser.add_argument("--fit", action="store_true", help="fit the estimate's constants")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_out" / "bench_memory.json")
    args = parser.parse_args(argv)
    if args.run_one:
        run_one(json.loads(args.run_one))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = [ROWS[i] for i in QUICK] if args.quick else ROWS
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, (task, preset, resolution, batch, workers, extra) in enumerate(rows):
            extra = dict(extra)
            spec = {
                "task": task, "store_url": write_store(root, resolution),
                "out_dir": str(root / f"run{i}"), "preset": preset, "resolution": resolution,
                "batch_size": batch, "epochs": 2, "max_steps": 2, "num_workers": workers,
                "val_scenes": ["room2"], "device": "cpu", "augment": False, "log_every": 1,
            }  # fmt: skip
            if task != "pretrain":
                spec["scratch"] = True
            if "target" in extra:
                spec["target_store_url"] = write_store(root, extra.pop("target"))
            spec.update(extra)
            row = {"task": task, "preset": preset, "resolution": resolution, "batch": batch,
                   "workers": workers, **measure(spec)}  # fmt: skip
            log.info("%s %s %d^3 batch %d workers %d: measured %.2f GiB, estimated %.2f GiB",
                     task, preset, resolution, batch, workers, row["measured_peak"] / GIB,
                     row["estimate"]["total"] / GIB)  # fmt: skip
            results.append(row)

    print(f"{'task':<10} {'preset':<7} {'S':>4} {'batch':>5} {'workers':>7} "
          f"{'measured GiB':>12} {'estimate GiB':>12} {'est/meas':>8}")  # fmt: skip
    for r in results:
        m, e = r["measured_peak"] / GIB, r["estimate"]["total"] / GIB
        print(f"{r['task']:<10} {r['preset']:<7} {r['resolution']:>4} {r['batch']:>5} "
              f"{r['workers']:>7} {m:>12.2f} {e:>12.2f} {e / m:>8.2f}")  # fmt: skip
    ratios = [r["estimate"]["total"] / r["measured_peak"] for r in results]
    summary = {"cpu_count": os.cpu_count(), "rows": len(results),
               "estimate_over_measured_min": min(ratios),
               "estimate_over_measured_max": max(ratios)}  # fmt: skip
    if args.fit:
        summary["fit"] = fit(results)
        found = summary["fit"]
        print(f"fit: runtime {found['runtime_gib']:.3f} GiB, activation factor "
              f"{found['activation_factor']:.3f}, workspace "
              f"{found['workspace_floats_per_voxel']:.0f} floats per voxel")  # fmt: skip
    print(f"estimate / measured: {min(ratios):.2f} .. {max(ratios):.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

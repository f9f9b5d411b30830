"""Held-out PSNR against training wall time on Blender lego (200x200, every 8th view held out).

Trains once with a wall-time budget (default 600 s); at each mark (default 60, 120, 300,
600 s of training, evaluation excluded) it measures held-out PSNR on a fixed random subset
of held-out pixels (``--check-rays``), and at the end PSNR/SSIM over the full held-out views.
Prints a table, writes JSON (``--out``) and a PNG curve beside it.

    .venv/bin/python benchmarks/bench_nerf_lego.py [--budget 600] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from nerf_training.scene import load_scene
from nerf_training.trainer import NerfTrainer, TrainerConfig

LEGO = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nerf_synthetic" / "lego_200"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=LEGO)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--marks", type=float, nargs="+", default=[60, 120, 300, 600])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--check-rays", type=int, default=16384)
    parser.add_argument("--backend", default="auto")
    parser.add_argument(
        "--finest-resolution",
        type=int,
        default=None,
        help="hash grid's finest level (default: matched to the images, 256 for lego_200)",
    )
    parser.add_argument("--quick", action="store_true", help="30 s smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_nerf_lego.json"))
    args = parser.parse_args()
    if args.quick:
        args.budget, args.marks = 30.0, [15, 30]
    marks = sorted(m for m in args.marks if m <= args.budget) or [args.budget]

    load_before = os.getloadavg()  # the machine is shared: record how busy it was
    scene = load_scene(args.scene)
    config = TrainerConfig(
        finest_resolution=args.finest_resolution,
        max_steps=None,
        time_budget_s=args.budget,
        num_threads=args.threads,
        check_rays=args.check_rays,
        backend=args.backend,
        progress=False,
    )
    trainer = NerfTrainer(scene, config)
    rows = []
    for mark in marks:
        trainer.train(until_s=mark)
        t0 = time.perf_counter()
        rows.append(
            {
                "train_s": round(trainer.elapsed_s, 1),
                "steps": trainer.step,
                "psnr_holdout_pixels": round(trainer.quick_holdout_psnr(), 2),
                "rays_per_batch": trainer.n_rays,
                "occupied_fraction": round(trainer.grid.occupied_fraction(), 3),
                "eval_s": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1], flush=True)
    t0 = time.perf_counter()
    final = trainer.evaluate(render_dir=args.out.parent / "lego_renders")
    final["eval_s"] = round(time.perf_counter() - t0, 1)

    print(
        f"\nlego_200, budget {args.budget:.0f} s, backend {trainer.field_config.backend}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"{'train s':>8} {'steps':>6} {'PSNR (held-out px)':>19} {'rays':>6} {'occ':>6}")
    for r in rows:
        print(
            f"{r['train_s']:8.1f} {r['steps']:6d} {r['psnr_holdout_pixels']:19.2f} "
            f"{r['rays_per_batch']:6d} {r['occupied_fraction']:6.3f}"
        )
    print(
        f"final full held-out views: PSNR {final['psnr_holdout']:.2f} dB, "
        f"SSIM {final['ssim_holdout']:.3f} ({final['n_holdout_views']} views)"
    )
    load_after = os.getloadavg()
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "scene": str(args.scene),
        "budget_s": args.budget,
        "curve": rows,
        "final": final,
        "backend": trainer.field_config.backend,
        "threads": torch.get_num_threads(),
        "field": str(trainer.field_config),
        "machine": platform.processor() or "cpu",
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    args.out.write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["train_s"] for r in rows], [r["psnr_holdout_pixels"] for r in rows], "o-")
    ax.axhline(26, ls="--", c="gray", lw=0.8)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title("lego_200, torch backend" if trainer.field_config.backend == "torch" else "lego")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()

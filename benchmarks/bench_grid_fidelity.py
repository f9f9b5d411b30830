"""Do extracted grids look like the rooms they came from? NeRF grids against exact ground truth.

For each synthetic room (fixed seeds) and each capture mode (RGB only, RGB-D), a NeRF is
trained with a CPU time budget, its grid extracted on the ground truth's lattice, and the
two compared with :func:`pipeline.fidelity.grid_fidelity` (occupancy IoU at alpha > 0.5
after putting opacity on the ground truth's step, haze = non-empty voxels where the room is
empty, colour PSNR on voxels occupied in both), beside the NeRF's held-out render PSNR and
depth error. The room's own analytic field, extracted the same way, is the ceiling: what a
perfect NeRF would score. Prints a table and writes JSON (``--out``).

    .venv/bin/python benchmarks/bench_grid_fidelity.py [--seeds 0 1] [--budget 300] \\
        [--image-size 64] [--views 50] [--modes rgb rgbd] [--resolution 64] \\
        [--truth-resolution 160] [--loops 1] [--nerf-option distortion_weight=0.01] \\
        [--field-option sh_degree=2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from grid_store import RadianceGrid
from nerf_training import TrainerConfig
from nerf_training.field import cpu_field_config
from nerf_training.occupancy import OccupancyGrid
from nerf_training.scene import load_scene
from nerf_training.trainer import NerfTrainer
from pipeline.extract import extract_grid
from pipeline.fidelity import grid_fidelity
from pipeline.synthetic import CameraPathConfig, generate_scene, make_room


def camera_origins(scene: Path) -> np.ndarray:
    meta = json.loads((scene / "transforms.json").read_text())
    return np.array([f["transform_matrix"] for f in meta["frames"]])[:, :3, 3]


def occupancy_masked(grid: RadianceGrid, occupancy: OccupancyGrid) -> RadianceGrid:
    """``grid`` with every voxel in a cell that the run's occupancy grid marks empty zeroed:
    the training's own empty-space estimate used as the mask instead of ``empty_below``."""
    points = grid.points().reshape(-1, 3)  # (X*Y*Z, 3)
    keep = occupancy.occupied(torch.from_numpy(points)).numpy().reshape(grid.shape)
    return grid.replace(rgba=(grid.rgba * keep[None]).astype(grid.rgba.dtype))


def train_and_compare(
    scene: Path, truth: RadianceGrid, config: TrainerConfig, resolution: int, curve: list[float]
) -> tuple[list[dict], RadianceGrid]:
    """Train one NeRF, pausing at each ``curve`` second to extract and compare its grid.

    The pauses are snapshots of the one run and its one learning-rate schedule (set by the
    time budget), not shorter runs; extraction does not count as training time. The last
    row is the finished run, with the full held-out evaluation; its grid is returned too.
    """
    trainer = NerfTrainer(load_scene(scene), config)
    origins = trainer.scene.camera_origins(trainer.scene.train_idx).numpy()
    rows = []
    for until in [*sorted(t for t in curve if t < config.time_budget_s), None]:
        trainer.train(until_s=until)
        trainer.field.eval()
        grid = extract_grid(trainer.field, resolution, camera_origins=origins)
        masked = grid_fidelity(occupancy_masked(grid, trainer.grid), truth)
        row = {
            "seconds": trainer.elapsed_s, "steps": trainer.step, **grid_fidelity(grid, truth),
            "occupancy_mask": {k: masked[k] for k in ("iou", "haze", "colour_psnr")},
        }  # fmt: skip
        if until is not None:
            row["render_psnr_quick"] = trainer.quick_holdout_psnr()
        else:
            metrics = trainer.evaluate()
            row.update({
                "render_psnr": metrics["psnr_holdout"],
                "depth_abs_rel": metrics.get("depth_abs_rel_holdout"),
                "depth_rmse": metrics.get("depth_rmse_holdout"),
            })  # fmt: skip
        rows.append(row)
    return rows, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget", type=float, default=300.0, help="NeRF training seconds")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=64, help="grid samples, longest side")
    parser.add_argument(
        "--truth-resolution", type=int, default=160, help="ground-truth grid samples, longest side"
    )
    parser.add_argument("--modes", nargs="+", default=["rgb", "rgbd"], choices=("rgb", "rgbd"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--nerf-option", action="append", default=[], metavar="KEY=JSON",
        help="TrainerConfig field for every run, e.g. free_space_weight=0.3",
    )  # fmt: skip
    parser.add_argument(
        "--field-option", action="append", default=[], metavar="KEY=JSON",
        help="FieldConfig field on top of the CPU default, e.g. sh_degree=2",
    )  # fmt: skip
    parser.add_argument(
        "--loops", type=int, default=None,
        help="camera loops of the capture: the first N of the default path's (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--curve", type=float, nargs="*", default=[], metavar="SECONDS",
        help="also compare snapshots of each run after these training seconds",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="keep scenes and runs here")
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_grid_fidelity.json"))
    args = parser.parse_args()
    options = {k: json.loads(v) for k, _, v in (o.partition("=") for o in args.nerf_option)}
    field_options = {k: json.loads(v) for k, _, v in (o.partition("=") for o in args.field_option)}
    if field_options:
        options["field"] = dataclasses.replace(cpu_field_config(), **field_options)
    cameras = CameraPathConfig()
    cameras = dataclasses.replace(cameras, loops=cameras.loops[: args.loops or len(cameras.loops)])

    work = args.work or Path(tempfile.mkdtemp(prefix="fidelity-"))
    load_before = os.getloadavg()
    rows = []
    pictured: dict[str, RadianceGrid] = {}  # the last seed's grids, drawn at the end
    for seed in args.seeds:
        scene = generate_scene(
            work / f"room_{seed}", seed=seed, n_views=args.views, image_size=args.image_size,
            grid_resolution=args.truth_resolution, camera_config=cameras,
        )  # fmt: skip
        truth = RadianceGrid.load_npz(scene / "ground_truth" / "grid.npz")
        ceiling = extract_grid(
            make_room(seed), args.resolution, camera_origins=camera_origins(scene)
        )
        rows.append({"seed": seed, "mode": "analytic field", **grid_fidelity(ceiling, truth)})
        pictured = {"ground truth": truth, "analytic field": ceiling}
        for mode in args.modes:
            config = TrainerConfig(
                max_steps=None, time_budget_s=args.budget, use_depth=mode == "rgbd",
                num_threads=args.threads, progress=False, **options,
            )  # fmt: skip
            run_rows, pictured[mode] = train_and_compare(
                scene, truth, config, args.resolution, args.curve
            )
            for row in run_rows:
                rows.append({"seed": seed, "mode": mode, **row})
                print_row(rows[-1])

    print()
    header = f"{'seed':>4} {'mode':<15} {'IoU':>6} {'surf F':>6} {'haze':>6} {'at surf':>7} "
    header += f"{'colour':>7} "
    header += f"{'miss in':>7} "
    header += f"{'render':>7} {'d absrel':>8} {'d rmse':>7} {'steps':>6} {'s':>5} "
    print(header + f"{'occ. IoU':>8} {'occ. haze':>9}")
    for row in rows:
        print_row(row)
    result = {
        "benchmark": "grid_fidelity",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    picture = draw_slices(pictured, args.out.with_suffix(".png"), f"seed {args.seeds[-1]}")
    print(f"\nwrote {args.out} and {picture}")


def draw_slices(grids: dict[str, RadianceGrid], path: Path, title: str) -> Path:
    """Opacity of each grid (on the ground truth's voxel step) in two horizontal slices, at a
    third and at two thirds of the room's height, side by side, with one colour bar: a haze
    is grey, walls and furniture are white."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.fidelity import alpha_on_step

    truth = grids["ground truth"]
    # Constrained layout makes room for the colour bar right of the panels.
    fig, axes = plt.subplots(2, len(grids), figsize=(2.8 * len(grids) + 1.0, 5.6),
                             squeeze=False, layout="constrained")  # fmt: skip
    for col, (name, grid) in enumerate(grids.items()):
        alpha = alpha_on_step(grid.alpha.astype(np.float64), grid.delta, truth.delta)
        for row, fraction in enumerate((1 / 3, 2 / 3)):
            k = int(round(fraction * (grid.shape[2] - 1)))
            ax = axes[row, col]
            image = ax.imshow(alpha[:, :, k].T, origin="lower", cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            height = grid.bbox_min[2] + k * grid.voxel_size
            where = f"z = {height:.2f} world units"
            ax.set_title(f"{name}\n{where}" if row == 0 else where, fontsize=9)
    bar = fig.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label(f"opacity for a step of {truth.delta:g} (the ground truth's)", fontsize=9)
    fig.suptitle(f"opacity slices, {title}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_row(row: dict) -> None:
    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) and value == value else "-"

    mask = row.get("occupancy_mask", {})
    render = row.get("render_psnr", row.get("render_psnr_quick"))
    print(
        f"{row['seed']:>4} {row['mode']:<15} {num(row['iou'], '6.3f')} "
        f"{num(row.get('surface_fscore'), '6.3f')} {num(100 * row['haze'], '5.1f')}% "
        f"{num(row['haze_at_surfaces'], '7.2f')} "
        f"{num(row['colour_psnr'], '7.2f')} {num(row.get('misses_inside'), '7.2f')} "
        f"{num(render, '7.2f')} {num(row.get('depth_abs_rel'), '8.3f')} "
        f"{num(row.get('depth_rmse'), '7.3f')} {num(row.get('steps'), '6d')} "
        f"{num(row.get('seconds'), '5.0f')} "
        f"{num(mask.get('iou'), '8.3f')} {num(100 * mask.get('haze', np.nan), '8.1f')}%"
    )


if __name__ == "__main__":
    main()

"""Size on disk of real grids: the float16 + zstd Zarr store vs raw float16 vs NeRF-MAE's .npz.

Grids: synthetic rooms sampled at 160 on their longest side. By default each room's
ground truth grid, ``pipeline.synthetic.sample_ground_truth(make_room(seed), 160)``
(what ``generate_scene`` writes as ``ground_truth/grid.npz``, without rendering the
images), or where that is missing the room's analytic field evaluated at
``grid_points``; the grids are cached as contract-1 ``.npz`` under ``bench_out/grids``
because that takes ~30-60 s a room on this machine. ``--grids DIR`` instead uses
existing contract-1 ``.npz`` files, searched recursively (e.g. the
``<scene>/ground_truth/grid.npz`` of ``nerfmae synth``, or grids extracted from a NeRF).

Compared per grid:
  store   bytes of the scene's ``rgba`` chunk files in a local GridStore (float16,
          Blosc-zstd level 5 with byte shuffle)
  raw16   4 * X * Y * Z * 2 bytes (float16, uncompressed)
  npz     ``np.savez_compressed(rgbsigma=(X, Y, Z, 4) float32)``: NeRF-MAE/NeRF-RPN's
          format (zlib); the 4th channel is alpha here, as in the released Hypersim data.
Goal: store <= raw16 / 3.

    .venv/bin/python benchmarks/bench_store.py [--rooms 4] [--quick] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from grid_store import GridStore, RadianceGrid, alpha_from_density, grid_points, grid_shape_for_box

log = logging.getLogger("bench_store")
REPO_ROOT = Path(__file__).resolve().parents[1]
GRID_CACHE = REPO_ROOT / "bench_out" / "grids"


def analytic_room_grid(seed: int, resolution: int) -> RadianceGrid:
    """The synthetic room's ground truth field sampled on the contract-1 lattice."""
    import torch

    from pipeline.synthetic.room import make_room

    room = make_room(seed)
    shape, voxel, bbox_max = grid_shape_for_box(room.aabb[0], room.aabb[1], resolution)
    points = torch.from_numpy(grid_points(room.aabb[0], voxel, shape).reshape(-1, 3))  # (N, 3)
    sigma = room.field.density(points).numpy()  # (N,)
    rgb = room.field.color(points, torch.zeros_like(points)).numpy()  # (N, 3), view-independent
    alpha = alpha_from_density(sigma, voxel)
    rgba = np.concatenate([rgb, alpha[:, None]], axis=1).T.reshape(4, *shape)  # (4, X, Y, Z)
    return RadianceGrid(
        rgba=np.clip(rgba, 0, 1).astype(np.float32),
        bbox_min=room.aabb[0],
        bbox_max=bbox_max,
        voxel_size=voxel,
        delta=voxel,
        meta={"source": f"synthetic room {seed} (analytic field)"},
    )


def ground_truth_room_grid(seed: int, resolution: int) -> RadianceGrid:
    """The generator's own ground truth grid of room ``seed`` (with semantic and boxes)."""
    from pipeline.synthetic import make_room, sample_ground_truth

    return sample_ground_truth(make_room(seed), resolution)


def benchmark_grids(count: int, resolution: int, cache_dir: Path, grids_dir: Path | None) -> dict:
    """``{name: RadianceGrid}``: ``count`` grids from ``grids_dir`` or cached analytic rooms."""
    if grids_dir is not None:
        files = sorted(grids_dir.rglob("*.npz"))[:count]
        if not files:
            raise FileNotFoundError(f"{grids_dir}: no .npz grids found")
        return {f"{f.parent.parent.name}_{f.stem}": RadianceGrid.load_npz(f) for f in files}
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        import pipeline.synthetic.ground_truth  # noqa: F401

        sample, kind = ground_truth_room_grid, "gt"
    except ImportError:  # an older checkout without the generator's ground truth module
        sample, kind = analytic_room_grid, "analytic"
    grids = {}
    for seed in range(count):
        path = cache_dir / f"room_{seed}_r{resolution}_{kind}.npz"
        if not path.exists():
            start = time.perf_counter()
            sample(seed, resolution).save_npz(path)
            log.info("sampled room %d in %.1f s -> %s", seed, time.perf_counter() - start, path)
        grids[f"room_{seed}"] = RadianceGrid.load_npz(path)
    return grids


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def nerf_mae_npz_bytes(grid: RadianceGrid, path: Path) -> int:
    rgbsigma = np.moveaxis(grid.rgba.astype(np.float32), 0, -1)  # (X, Y, Z, 4)
    np.savez_compressed(
        path,
        rgbsigma=rgbsigma,
        resolution=np.array(grid.shape),
        bbox_min=grid.bbox_min,
        bbox_max=grid.bbox_max,
    )
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=4, help="number of grids to measure")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--grids", type=Path, default=None, help="folder of contract-1 .npz grids")
    parser.add_argument("--quick", action="store_true", help="1 room (smoke run)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_out" / "bench_store.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count = 1 if args.quick else args.rooms
    grids = benchmark_grids(count, args.resolution, GRID_CACHE, args.grids)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "grids.zarr"
        store = GridStore(store_path)
        for name, grid in grids.items():
            start = time.perf_counter()
            store.write_grid(name, grid)
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            store.read_grid(name)
            read_s = time.perf_counter() - start
            rows.append(
                {
                    "grid": name,
                    "shape": list(grid.shape),
                    "alpha_occupancy": float((grid.alpha > 0.01).mean()),
                    "store_bytes": tree_bytes(store_path / "scenes" / name / "rgba"),
                    "raw_float16_bytes": int(np.prod(grid.rgba.shape)) * 2,
                    "npz_float32_zlib_bytes": nerf_mae_npz_bytes(grid, Path(tmp) / f"{name}.npz"),
                    "write_s": write_s,
                    "read_s": read_s,
                }
            )
        shutil.rmtree(store_path)

    total = {
        k: sum(r[k] for r in rows)
        for k in ("store_bytes", "raw_float16_bytes", "npz_float32_zlib_bytes")
    }
    summary = {
        "grids": len(rows),
        "source": f"--grids {args.grids}"
        if args.grids
        else "synthetic rooms (cached in bench_out/grids)",
        "store_over_raw16": total["store_bytes"] / total["raw_float16_bytes"],
        "store_over_npz": total["store_bytes"] / total["npz_float32_zlib_bytes"],
        "goal_store_over_raw16": 1 / 3,
        **total,
    }
    summary["meets_goal"] = summary["store_over_raw16"] <= 1 / 3

    header = (
        f"{'grid':<10} {'shape':<15} {'occ':>5} {'store MB':>9} {'raw16 MB':>9} {'npz MB':>8} "
        f"{'store/raw16':>11} {'write s':>8} {'read s':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['grid']:<10} {'x'.join(map(str, r['shape'])):<15} {r['alpha_occupancy']:>5.2f} "
            f"{r['store_bytes'] / 1e6:>9.2f} {r['raw_float16_bytes'] / 1e6:>9.2f} "
            f"{r['npz_float32_zlib_bytes'] / 1e6:>8.2f} "
            f"{r['store_bytes'] / r['raw_float16_bytes']:>11.3f} "
            f"{r['write_s']:>8.2f} {r['read_s']:>7.2f}"
        )
    print(
        f"total: store/raw16 = {summary['store_over_raw16']:.3f} (goal <= 0.333), "
        f"store/npz = {summary['store_over_npz']:.3f}, meets goal: {summary['meets_goal']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

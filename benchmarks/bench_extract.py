"""Grid extraction: total time against the bare field evaluation, and peak memory.

1. **Overhead**: ``extract_grid`` at 160^3 (box, lattice, chunked density + colour over
   K directions, alpha, averaging, copy into the output) against a tight loop that only
   calls ``field.density`` and ``field.color`` on the same points in the same chunk size
   with the same K directions (points precomputed outside the timer). Goal: <= 1.2x.
2. **Memory**: in a fresh subprocess per resolution, the peak RSS rise during
   extraction (sampled every 2 ms) and the tracemalloc peak (numpy allocations), minus
   the output array itself: bounded by the chunk size, not the resolution.

The field is a trained NeRF when ``--run`` names a run folder, else an ``NGPField`` with
random weights (``nerf_training.field.cpu_field_config``): its cost per point is that of
a trained one of the same shape. The table says which.

    .venv/bin/python benchmarks/bench_extract.py                  # 160^3, 2 directions
    .venv/bin/python benchmarks/bench_extract.py --run runs/lego  # a trained field
    .venv/bin/python benchmarks/bench_extract.py --quick          # smoke run (48^3)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grid_store.grid import grid_points, grid_shape_for_box  # noqa: E402
from pipeline.directions import fibonacci_directions  # noqa: E402
from pipeline.extract import extract_grid  # noqa: E402
from pipeline.field import GeometryRadianceField  # noqa: E402


def load_field(run: str | None):
    """``(field, description)``: a trained run's field, or a seeded random NGPField."""
    if run:
        from nerf_training import load_run

        trained = load_run(run)
        metrics = trained.metrics
        return (
            trained.field,
            f"trained run {run} ({metrics.get('backend')}, {metrics.get('steps')} steps)",
        )
    from nerf_training.field import NGPField, cpu_field_config

    torch.manual_seed(0)
    field = NGPField(cpu_field_config(), torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    return field.eval(), "NGPField with random weights (cpu_field_config, torch backend)"


class FreeField:
    """A field that costs (almost) nothing: timing it isolates the sampler's own work."""

    def __init__(self, aabb: torch.Tensor):
        self.aabb = aabb

    def density(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N,)
        return x[:, 0]

    def color(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N, 3)
        return d


def box_of(field) -> tuple[np.ndarray, np.ndarray]:
    aabb = field.aabb.detach().cpu().double().numpy()
    return aabb[0], aabb[1]


def time_extract(field, resolution: int, n_dirs: int, chunk: int) -> float:
    start = time.perf_counter()
    extract_grid(field, resolution, directions="fibonacci", n_directions=n_dirs, chunk_points=chunk)
    return time.perf_counter() - start


def time_bare(field, resolution: int, n_dirs: int, chunk: int) -> float:
    """Only the field calls extraction has to make, in one tight loop."""
    lo, hi = box_of(field)
    shape, voxel, _ = grid_shape_for_box(lo, hi, resolution)
    points = torch.from_numpy(grid_points(lo, voxel, shape).reshape(-1, 3))  # (N, 3)
    dirs = torch.from_numpy(fibonacci_directions(n_dirs))  # (K, 3)
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(points), chunk):
            x = points[s : s + chunk]
            # The same calls extraction makes: one encoding per point where the field
            # offers the geometry split, else density + colour per direction.
            if isinstance(field, GeometryRadianceField):
                _, geometry = field.density_and_geometry(x)
                for d in dirs:
                    field.color_from_geometry(geometry, d.expand(len(x), 3))
            else:
                field.density(x)
                for d in dirs:
                    field.color(x, d.expand(len(x), 3))
    return time.perf_counter() - start


def memory_child(run: str | None, resolution: int, n_dirs: int, chunk: int) -> dict:
    """Runs in a fresh process: peak RSS / tracemalloc rise during one extraction."""
    import psutil

    field, _ = load_field(run)
    warm = max(8, round(chunk ** (1 / 3)) + 1)  # one full chunk: the allocator's steady state
    extract_grid(field, warm, directions="fibonacci", n_directions=n_dirs, chunk_points=chunk)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    grid = extract_grid(
        field, resolution, directions="fibonacci", n_directions=n_dirs, chunk_points=chunk
    )
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    done.set()
    sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    output = int(np.prod(grid.rgba.shape)) * 4
    return {
        "resolution": resolution,
        "shape": list(grid.shape),
        "output_mib": output / 2**20,
        "rss_rise_mib": (peak[0] - base) / 2**20,
        "rss_rise_minus_output_mib": (peak[0] - base - output) / 2**20,
        "tracemalloc_peak_mib": traced_peak / 2**20,
        "tracemalloc_peak_minus_output_mib": (traced_peak - output) / 2**20,
    }


def measure_memory(args, resolution: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        str(resolution),
        "--n-dirs",
        str(args.mem_dirs),
        "--chunk",
        str(args.chunk),
    ] + (["--run", args.run] if args.run else [])
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", default=None, help="trained NeRF run folder (default: random NGPField)"
    )
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--n-dirs", type=int, default=2, help="colour directions (Fibonacci set)")
    parser.add_argument("--chunk", type=int, default=1 << 16, help="points per field call")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed runs of each (median reported)"
    )
    parser.add_argument("--mem-resolutions", type=int, nargs=2, default=(80, 160))
    parser.add_argument("--mem-dirs", type=int, default=1, help="directions in the memory runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: 48^3, memory at 24 and 48")
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_extract.json"))
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child is not None:
        print(json.dumps(memory_child(args.run, args.memory_child, args.n_dirs, args.chunk)))
        return 0
    if args.quick:
        args.resolution, args.mem_resolutions = 48, (24, 48)

    field, description = load_field(args.run)
    warm = max(8, round(args.chunk ** (1 / 3)) + 1)  # at least one full chunk: allocator, caches
    time_bare(field, warm, args.n_dirs, args.chunk)
    time_extract(field, warm, args.n_dirs, args.chunk)
    bare, extract = [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        bare.append(time_bare(field, args.resolution, args.n_dirs, args.chunk))
        extract.append(time_extract(field, args.resolution, args.n_dirs, args.chunk))
    t_bare, t_extract = statistics.median(bare), statistics.median(extract)
    t_sampler = time_extract(
        FreeField(field.aabb.detach().cpu()), args.resolution, args.n_dirs, args.chunk
    )
    n_points = int(np.prod(grid_shape_for_box(*box_of(field), args.resolution)[0]))
    memory = [measure_memory(args, r) for r in args.mem_resolutions]

    result = {
        "field": description,
        "resolution": args.resolution,
        "n_points": n_points,
        "n_dirs": args.n_dirs,
        "chunk_points": args.chunk,
        "bare_s": bare,
        "extract_s": extract,
        "ratio": t_extract / t_bare,
        "sampler_only_s": t_sampler,
        "ratio_from_sampler_overhead": (t_bare + t_sampler) / t_bare,
        "goal_ratio": 1.2,
        "memory": memory,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "load_avg_1min": os.getloadavg()[0],
    }
    print(f"field: {description}")
    print(f"{'':<28}{'seconds':>10}{'Mpts/s':>10}")
    for name, t in (("bare field evaluation", t_bare), ("extract_grid", t_extract)):
        print(f"{name:<28}{t:>10.2f}{n_points / t / 1e6:>10.3f}")
    print(f"{'extract_grid, free field':<28}{t_sampler:>10.2f}{n_points / t_sampler / 1e6:>10.3f}")
    at = f"at {args.resolution}^3, {args.n_dirs} dirs"
    print(f"ratio extract / bare {at}: {result['ratio']:.3f} (goal <= 1.2)")
    overhead = result["ratio_from_sampler_overhead"]
    print(f"ratio (bare + sampler-only) / bare: {overhead:.3f} (insensitive to load drift)")
    print(
        f"\npeak memory, {args.mem_dirs} direction(s), chunk {args.chunk} points, fresh processes:"
    )
    header = ("resolution", "shape", "output MiB", "RSS rise", "- output", "tracemalloc")
    print(f"{header[0]:<12}{header[1]:<16}" + "".join(f"{h:>12}" for h in header[2:]))
    for m in memory:
        shape = "x".join(map(str, m["shape"]))
        print(
            f"{m['resolution']:<12}{shape:<16}{m['output_mib']:>12.1f}{m['rss_rise_mib']:>12.1f}"
            f"{m['rss_rise_minus_output_mib']:>12.1f}{m['tracemalloc_peak_mib']:>12.1f}"
        )
    print(f"(load average at the end: {result['load_avg_1min']:.2f} on {os.cpu_count()} cores)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

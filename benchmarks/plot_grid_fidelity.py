"""Grid fidelity against training time, from the JSON of ``bench_grid_fidelity.py --curve``.

One panel per measure (occupancy IoU, haze, colour PSNR, held-out render PSNR), one line
per (capture, seed, mode), the rooms' analytic-field ceiling dashed::

    .venv/bin/python benchmarks/plot_grid_fidelity.py bench_out/bench_grid_fidelity.json \\
        [more.json ...] --out benchmarks/figures/grid_fidelity_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("iou", "occupancy IoU (alpha > 0.5)", 1.0),
    ("haze", "haze (% of empty voxels)", 100.0),
    ("colour_psnr", "colour PSNR, occupied (dB)", 1.0),
    ("render", "held-out render PSNR (dB)", 1.0),
)
COLOURS = {"rgb": "tab:red", "rgbd": "tab:blue"}


def curves(result: dict) -> dict[tuple, list[dict]]:
    """Rows of one benchmark run grouped by (capture, seed, mode), in training order."""
    args = result["args"]
    capture = f"{args['views']} views {args['image_size']}px"
    grouped: dict[tuple, list[dict]] = {}
    for row in result["rows"]:
        grouped.setdefault((capture, row["seed"], row["mode"]), []).append(row)
    return grouped


def value(row: dict, key: str) -> float | None:
    if key == "render":
        return row.get("render_psnr", row.get("render_psnr_quick"))
    return row.get(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("bench_out/grid_fidelity_curve.png"))
    args = parser.parse_args()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    styles = ["-", "--", ":", "-."]
    for i, path in enumerate(args.results):
        for (capture, seed, mode), rows in curves(json.loads(path.read_text())).items():
            for ax, (key, _, scale) in zip(axes, PANELS, strict=True):
                if mode == "analytic field":
                    ceiling = value(rows[0], key)
                    if ceiling is not None:
                        ax.axhline(ceiling * scale, color="grey", lw=0.8, ls="--")
                    continue
                points = [(r["seconds"], value(r, key)) for r in rows if value(r, key) is not None]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs, [y * scale for y in ys], marker="o", ms=3, ls=styles[i % len(styles)],
                    color=COLOURS.get(mode, "black"), alpha=0.5 + 0.5 * (seed % 2 == 0),
                    label=f"{mode}, seed {seed}, {capture}",
                )  # fmt: skip
    for ax, (_, title, _) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training seconds (CPU)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Extracted grid vs ground truth along training (dashed grey: analytic field)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""A one-page PNG for a human to check a synthetic scene: a few views and a floor plan.

The plan is the ground-truth grid seen from above (the colour of the highest sample
inside a wall, the floor or an object), with each object's oriented box drawn in its class colour
and named, so one glance tells whether the images, the grid and the boxes agree.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from grid_store.grid import RadianceGrid
from pipeline.synthetic.furniture import CLASS_ID, SEMANTIC_CLASSES

TILE = 160  # pixels per view tile and for the plan's longer side


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, fixed colour per class id."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def floor_plan(grid: RadianceGrid) -> Image.Image:
    """Top view of the grid (x right, y up), boxes outlined, ``TILE`` px on its long side."""
    # labels, not alpha: samples in the density ramp under the ceiling are opaque too
    occupied = (grid.semantic > 0) & (grid.semantic != CLASS_ID["ceiling"])  # (X, Y, Z)
    z_top = grid.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)  # highest occupied sample
    x, y = np.meshgrid(np.arange(grid.shape[0]), np.arange(grid.shape[1]), indexing="ij")
    rgb = grid.rgb[:, x, y, z_top].astype(np.float32)  # (3, X, Y)
    rgb *= occupied.any(axis=2)
    image = (
        (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(2, 1, 0)[::-1]
    )  # (Y, X, 3) y up
    scale = TILE / max(grid.shape[:2])
    size = (max(1, round(grid.shape[0] * scale)), max(1, round(grid.shape[1] * scale)))
    plan = Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(plan)

    def to_pixel(xy: np.ndarray) -> list[tuple[float, float]]:
        ij = (xy - grid.bbox_min[:2]) / grid.voxel_size * scale
        return [(float(i), float(size[1] - j)) for i, j in ij]

    for box, label in zip(grid.boxes, grid.box_labels, strict=True):
        cx, cy, _, w, l, _, yaw = (float(v) for v in box)
        rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
        corners = np.array([[-w, -l], [w, -l], [w, l], [-w, l]]) / 2 @ rot.T + [cx, cy]
        colour = class_colour(int(label))
        draw.polygon(to_pixel(corners), outline=colour)
        draw.text(to_pixel(np.array([[cx, cy]]))[0], SEMANTIC_CLASSES[int(label)], fill=colour)
    return plan


def write_contact_sheet(
    path: str | Path, images: np.ndarray, grid: RadianceGrid, n_views: int = 8, title: str = ""
) -> Path:
    """Write ``n_views`` evenly spaced views of ``images (V, H, W, 3)`` and the plan to a PNG."""
    path = Path(path)
    picks = np.unique(
        np.linspace(0, len(images) - 1, min(n_views, len(images))).round().astype(int)
    )
    columns = 4
    rows = -(-(len(picks) + 1) // columns)
    header = 14
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + header)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    tiles = [
        (f"view {i}", Image.fromarray(images[i]).resize((TILE, TILE), Image.NEAREST)) for i in picks
    ]
    tiles.append((f"plan {title}".strip(), floor_plan(grid)))
    for n, (caption, tile) in enumerate(tiles):
        left, top = (n % columns) * TILE, (n // columns) * (TILE + header)
        draw.text((left + 3, top + 1), caption, fill=(230, 230, 230))
        sheet.paste(tile, (left, top + header))
    sheet.save(path)
    return path

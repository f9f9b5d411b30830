"""Semantic classes and the furniture templates that build each class from boxes.

A template turns a random generator into an object: a list of axis-aligned boxes in
the object's own frame (origin at the centre of its footprint on the floor, ``x`` =
width, ``y`` = depth with the back at ``+y``, ``z`` up), each tagged with a material.
The room generator then yaws and places the whole object. The classes differ in
proportions (a bed is long and low, a bookshelf tall and shallow, a lamp a thin pole
with a shade) so that detection and segmentation heads have something to tell apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SEMANTIC_CLASSES: tuple[str, ...] = (
    "none",
    "wall",
    "floor",
    "ceiling",
    "bed",
    "table",
    "chair",
    "sofa",
    "cabinet",
    "bookshelf",
    "lamp",
)
"""Class names indexed by id: ``SEMANTIC_CLASSES[label]`` is the name, 0 = free space."""

CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
STRUCTURE_CLASSES: tuple[str, ...] = ("wall", "floor", "ceiling")
FURNITURE_CLASSES: tuple[str, ...] = tuple(
    c for c in SEMANTIC_CLASSES if c not in ("none", *STRUCTURE_CLASSES)
)

MATERIALS: tuple[str, ...] = ("wood", "fabric", "linen", "metal", "paint", "floor", "ceiling")
FURNITURE_MATERIALS: tuple[str, ...] = ("wood", "fabric", "linen", "metal", "paint")
"""The materials furniture is made of; ``RoomConfig(texture_policy="independent")`` draws
each object's materials from these."""


@dataclass(frozen=True)
class Part:
    """One box of an object, in the object's frame."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    material: str


@dataclass(frozen=True)
class FurnitureTemplate:
    """How one class is built and where it likes to stand."""

    name: str
    build: Callable[[np.random.Generator], list[Part]]
    against_wall: bool
    """Placed with its back (``+y``) to a wall, yawed to the wall (plus a little jitter)."""
    max_per_room: int


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, material: str) -> Part:
    return Part(
        centre=((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2),
        half=((x1 - x0) / 2, (y1 - y0) / 2, (z1 - z0) / 2),
        material=material,
    )


def _four_legs(w: float, d: float, h: float, leg: float, inset: float, material: str) -> list[Part]:
    xs = (-w / 2 + inset, w / 2 - inset - leg)
    ys = (-d / 2 + inset, d / 2 - inset - leg)
    return [_box(x, x + leg, y, y + leg, 0.0, h, material) for x in xs for y in ys]


def build_bed(rng: np.random.Generator) -> list[Part]:
    w, d = rng.uniform(1.3, 1.8), rng.uniform(1.9, 2.1)
    frame_h, mattress_h = rng.uniform(0.25, 0.35), rng.uniform(0.15, 0.25)
    head_h = rng.uniform(0.9, 1.15)
    return [
        _box(-w / 2, w / 2, -d / 2, d / 2, 0.0, frame_h, "wood"),
        _box(
            -w / 2 + 0.03,
            w / 2 - 0.03,
            -d / 2 + 0.03,
            d / 2 - 0.08,
            frame_h,
            frame_h + mattress_h,
            "linen",
        ),
        _box(-w / 2, w / 2, d / 2 - 0.08, d / 2, 0.0, head_h, "wood"),
    ]


def build_table(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.7, 0.95), rng.uniform(0.72, 0.78)
    top = rng.uniform(0.04, 0.06)
    return [_box(-w / 2, w / 2, -d / 2, d / 2, h - top, h, "wood")] + _four_legs(
        w, d, h - top, leg=0.06, inset=0.04, material="wood"
    )


def build_chair(rng: np.random.Generator) -> list[Part]:
    s, seat_h, back_h = rng.uniform(0.42, 0.5), rng.uniform(0.43, 0.48), rng.uniform(0.4, 0.5)
    seat_t = 0.06
    return [
        _box(-s / 2, s / 2, -s / 2, s / 2, seat_h - seat_t, seat_h, "fabric"),
        _box(-s / 2, s / 2, s / 2 - 0.06, s / 2, seat_h, seat_h + back_h, "wood"),
    ] + _four_legs(s, s, seat_h - seat_t, leg=0.045, inset=0.0, material="wood")


def build_sofa(rng: np.random.Generator) -> list[Part]:
    w, d = rng.uniform(1.6, 2.3), rng.uniform(0.8, 0.95)
    seat_h, back_h, arm_h = rng.uniform(0.38, 0.45), rng.uniform(0.75, 0.9), rng.uniform(0.55, 0.65)
    arm, back = 0.18, 0.2
    return [
        _box(-w / 2 + arm, w / 2 - arm, -d / 2, d / 2 - back, 0.0, seat_h, "fabric"),
        _box(-w / 2, w / 2, d / 2 - back, d / 2, 0.0, back_h, "fabric"),
        _box(-w / 2, -w / 2 + arm, -d / 2, d / 2 - back, 0.0, arm_h, "fabric"),
        _box(w / 2 - arm, w / 2, -d / 2, d / 2 - back, 0.0, arm_h, "fabric"),
    ]


def build_cabinet(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.7, 1.1)
    plinth = 0.08
    return [
        _box(-w / 2 + 0.04, w / 2 - 0.04, -d / 2 + 0.04, d / 2, 0.0, plinth, "metal"),
        _box(-w / 2, w / 2, -d / 2, d / 2, plinth, h - 0.03, "paint"),
        _box(-w / 2, w / 2, -d / 2, d / 2, h - 0.03, h, "wood"),
    ]


def build_bookshelf(rng: np.random.Generator) -> list[Part]:
    w, d, h = rng.uniform(0.7, 1.1), rng.uniform(0.28, 0.38), rng.uniform(1.6, 2.0)
    side, board = 0.03, 0.03
    parts = [
        _box(-w / 2, -w / 2 + side, -d / 2, d / 2, 0.0, h, "wood"),
        _box(w / 2 - side, w / 2, -d / 2, d / 2, 0.0, h, "wood"),
        _box(-w / 2 + side, w / 2 - side, d / 2 - 0.02, d / 2, 0.0, h, "wood"),
    ]
    n_boards = int(rng.integers(4, 7))
    for z in np.linspace(0.0, h - board, n_boards):
        parts.append(_box(-w / 2 + side, w / 2 - side, -d / 2, d / 2 - 0.02, z, z + board, "wood"))
    return parts


def build_lamp(rng: np.random.Generator) -> list[Part]:
    h, shade = rng.uniform(1.4, 1.7), rng.uniform(0.32, 0.45)
    shade_h = rng.uniform(0.25, 0.35)
    return [
        _box(-0.15, 0.15, -0.15, 0.15, 0.0, 0.04, "metal"),
        _box(-0.0175, 0.0175, -0.0175, 0.0175, 0.04, h - shade_h, "metal"),
        _box(-shade / 2, shade / 2, -shade / 2, shade / 2, h - shade_h, h, "linen"),
    ]


FURNITURE: dict[str, FurnitureTemplate] = {
    t.name: t
    for t in (
        FurnitureTemplate("bed", build_bed, against_wall=True, max_per_room=1),
        FurnitureTemplate("table", build_table, against_wall=False, max_per_room=2),
        FurnitureTemplate("chair", build_chair, against_wall=False, max_per_room=4),
        FurnitureTemplate("sofa", build_sofa, against_wall=True, max_per_room=1),
        FurnitureTemplate("cabinet", build_cabinet, against_wall=True, max_per_room=2),
        FurnitureTemplate("bookshelf", build_bookshelf, against_wall=True, max_per_room=2),
        FurnitureTemplate("lamp", build_lamp, against_wall=True, max_per_room=2),
    )
}

"""A procedural indoor room: walls, floor, ceiling and non-overlapping furniture.

The room's interior is the box ``[-X/2, X/2] x [-Y/2, Y/2] x [0, Z]`` (world z up,
floor at ``z = 0``), closed by six slabs (floor, ceiling, four walls) so every ray from
inside ends on a surface. The scene box (``aabb``, what NeRFs train in and grids are
sampled over) is the interior grown by a few centimetres, so the wall surfaces and
their density ramps lie inside it and the grid's outermost voxels hold wall.

Furniture comes from :mod:`pipeline.synthetic.furniture`. Objects that belong against
a wall (beds, sofas, cabinets, bookshelves, lamps) stand with their back to one;
tables and chairs stand anywhere with any yaw (chairs prefer to face a table). Every
tall object stands at a wall, which keeps the middle of the room free at eye height
for the camera path.

By default every class has a fixed material recipe (a bed's frame is wood, a sofa is
fabric), so colour alone gives most labels away; ``RoomConfig.texture_policy =
"independent"`` makes class and material independent, and ``RoomConfig.min_part_size``
thickens the thin parts (legs, poles, shelf boards) that a coarse grid would break up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pipeline.synthetic.analytic_field import BoxParts, BoxUnionField, FieldConfig
from pipeline.synthetic.furniture import (
    CLASS_ID,
    FURNITURE,
    FURNITURE_MATERIALS,
    MATERIALS,
    FurnitureTemplate,
    Part,
)
from pipeline.synthetic.textures import make_texture


@dataclass(frozen=True)
class RoomConfig:
    """Ranges the procedural room is drawn from (metres, radians)."""

    width_range: tuple[float, float] = (3.0, 6.0)
    """Interior extent along x."""
    depth_range: tuple[float, float] = (3.0, 6.0)
    """Interior extent along y."""
    height_range: tuple[float, float] = (2.5, 3.0)
    """Floor to ceiling."""
    objects_range: tuple[int, int] = (3, 8)
    """Fewest and most furniture objects to try to place (both ends included)."""
    objects_per_square_metre: float = 0.3
    """Furniture density: bigger rooms get more objects (plus or minus 1.5, then clipped)."""
    wall_thickness: float = 0.15
    """Thickness of the floor, ceiling and wall slabs."""
    aabb_margin: float = 0.06
    """The scene box is the interior grown by this much on every side."""
    clearance: float = 0.1
    """Minimum gap between the footprints of two objects."""
    wall_gap: float = 0.02
    """Gap between a wall and the back of an object standing against it."""
    wall_yaw_jitter: float = 0.08
    """Objects against a wall are yawed to it plus up to this much either way."""
    placement_attempts: int = 40
    """Random positions tried per object before it is given up."""
    class_weights: dict[str, float] = field(
        default_factory=lambda: {
            "bed": 1.0,
            "table": 1.2,
            "chair": 1.5,
            "sofa": 1.0,
            "cabinet": 1.0,
            "bookshelf": 1.0,
            "lamp": 0.8,
        }
    )
    """Relative frequency of each furniture class."""
    optics: FieldConfig = field(default_factory=FieldConfig)
    """Optical constants of the analytic field (ramp width, opacity, baked light)."""
    texture_policy: str = "by_class"
    """``"by_class"``: each class's fixed material recipe (a bed's frame is always wood).
    ``"independent"``: every material an object uses is replaced by one drawn uniformly from
    ``FURNITURE_MATERIALS`` (parts that shared a material still share one texture), and the
    floor's, ceiling's and walls' materials are drawn from ``MATERIALS``, so class and
    material are independent and labels have to be read from shape. The draws come from a
    stream of their own, so a seed gives the same geometry and camera path under both."""
    min_part_size: float = 0.0
    """Metres: every furniture part is at least this thick along each of its axes (grown
    about its centre; a part is never pushed below the floor). About 1.5 voxels of the
    intended grid keeps legs, lamp poles and shelf boards whole after voxelisation: 0.12
    (1.25 voxels of 64^3 over a 6 m room) left no part of 40 rooms without a 64^3 sample,
    where at 0 over a third of the furniture parts had none. 0 keeps the templates' sizes."""

    def __post_init__(self) -> None:
        if self.texture_policy not in TEXTURE_POLICIES:
            raise ValueError(
                f"RoomConfig.texture_policy must be one of {TEXTURE_POLICIES}, "
                f"got {self.texture_policy!r}"
            )
        if not (math.isfinite(self.min_part_size) and self.min_part_size >= 0):
            raise ValueError(
                f"RoomConfig.min_part_size must be a finite number >= 0, got {self.min_part_size}"
            )

    def provenance(self) -> dict:
        """The config as a dict for hashing; options added later are left out while at their
        defaults, so default rooms keep the hashes they were stored with."""
        record = asdict(self)
        for name, default in _LATER_DEFAULTS.items():
            if record[name] == default:
                del record[name]
        return record


TEXTURE_POLICIES: tuple[str, ...] = ("by_class", "independent")
_LATER_DEFAULTS = {"texture_policy": "by_class", "min_part_size": 0.0}


@dataclass(frozen=True)
class PlacedObject:
    name: str
    parts: list[Part]
    position: np.ndarray  # (2,) world x, y of the object origin
    yaw: float
    footprint: np.ndarray  # (4, 2) world corners, for the overlap test


@dataclass(frozen=True)
class SyntheticRoom:
    """One generated room: its analytic field and its ground-truth annotations."""

    seed: int
    field: BoxUnionField
    """The radiance field (contract 3) images and the ground-truth grid are made from."""
    interior: np.ndarray  # (2, 3) the room's free interior, min and max corner
    aabb: np.ndarray  # (2, 3) the scene box (interior + margin)
    boxes: np.ndarray  # (N, 7) float32 (cx, cy, cz, w, l, h, yaw), w along the box's own x
    box_labels: np.ndarray  # (N,) int64 class ids (SEMANTIC_CLASSES)
    materials: tuple[str, ...]
    """The material (``MATERIALS``) whose texture each part wears, one per row of ``parts``."""
    config: RoomConfig
    """What the room was drawn with (recorded, with the seed, in the grid's config_hash)."""

    @property
    def parts(self) -> BoxParts:
        return self.field.parts

    def semantic_at(self, x: np.ndarray) -> np.ndarray:
        """``(N, 3)`` world points -> ``(N,)`` uint8 class of the part holding each (0 = free)."""
        labels = self.field.label(torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(-1, 3)))
        return labels.numpy().astype(np.uint8)

    def clearance_at(self, x: np.ndarray) -> np.ndarray:
        """``(N, 3)`` -> ``(N,)`` distance to the nearest surface (negative inside)."""
        return self.field.sdf(
            torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(-1, 3))
        ).numpy()


def _rotation2d(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


def _thicken(parts: list[Part], minimum: float) -> list[Part]:
    """``parts`` with every extent raised to at least ``minimum``, grown about the centre but
    never below the floor (a thin board lying on it grows upward)."""
    if minimum <= 0:
        return parts
    thick = []
    for part in parts:
        half = np.maximum(part.half, minimum / 2)
        centre = np.array(part.centre, dtype=np.float64)
        bottom = part.centre[2] - part.half[2]
        centre[2] = max(centre[2], min(bottom, 0.0) + half[2])
        thick.append(Part(tuple(centre.tolist()), tuple(half.tolist()), part.material))
    return thick


def _footprint(parts: list[Part], pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame bounds ``(lo, hi)`` of all parts, each ``(3,)``, xy grown by ``pad``."""
    lo = np.min([np.subtract(p.centre, p.half) for p in parts], axis=0)
    hi = np.max([np.add(p.centre, p.half) for p in parts], axis=0)
    return lo - [pad, pad, 0.0], hi + [pad, pad, 0.0]


def _corners(lo: np.ndarray, hi: np.ndarray, yaw: float, position: np.ndarray) -> np.ndarray:
    local = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    return local @ _rotation2d(yaw).T + position  # (4, 2)


def _rectangles_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex quads ``(4, 2)``."""
    for quad in (a, b):
        for i in range(4):
            edge = quad[(i + 1) % 4] - quad[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _propose(
    template: FurnitureTemplate,
    parts: list[Part],
    placed: list[PlacedObject],
    half_xy: np.ndarray,
    cfg: RoomConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float] | None:
    """A random ``(position, yaw)`` for an object, or None if this attempt does not fit."""
    lo, hi = _footprint(parts)
    tables = [p for p in placed if p.name == "table"]
    if template.name == "chair" and tables and rng.uniform() < 0.7:
        table = tables[int(rng.integers(len(tables)))]
        t_lo, t_hi = _footprint(table.parts)
        side = rng.choice([-1.0, 1.0])
        offset_local = np.array(
            [
                rng.uniform(t_lo[0] * 0.6, t_hi[0] * 0.6),
                side * (max(abs(t_lo[1]), t_hi[1]) + 0.15 + (hi[1] - lo[1]) / 2),
            ]
        )
        position = table.position + _rotation2d(table.yaw) @ offset_local
        # the chair's front (-y) faces the table
        yaw = table.yaw + (0.0 if side > 0 else np.pi) + rng.uniform(-0.25, 0.25)
    elif template.against_wall:
        wall = int(rng.integers(4))
        normal = np.array([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]][wall])
        yaw = [0.0, np.pi, -np.pi / 2, np.pi / 2][wall] + rng.uniform(-1, 1) * cfg.wall_yaw_jitter
        corners = _corners(lo, hi, yaw, np.zeros(2))
        tangent = np.array([-normal[1], normal[0]])
        along = corners @ tangent
        half_t = abs(tangent) @ half_xy
        span = (-half_t - along.min() + cfg.wall_gap, half_t - along.max() - cfg.wall_gap)
        if span[0] > span[1]:
            return None
        depth = abs(normal) @ half_xy - (corners @ normal).max() - cfg.wall_gap
        position = depth * normal + rng.uniform(*span) * tangent
    else:
        yaw = rng.uniform(-np.pi, np.pi)
        corners = _corners(lo, hi, yaw, np.zeros(2))
        low = -half_xy - corners.min(0) + cfg.wall_gap
        high = half_xy - corners.max(0) - cfg.wall_gap
        if np.any(low > high):
            return None
        position = rng.uniform(low, high)
    corners = _corners(lo, hi, yaw, position)
    if np.any(np.abs(corners) > half_xy - cfg.wall_gap + 1e-9):
        return None
    pad_lo, pad_hi = _footprint(parts, pad=cfg.clearance)
    padded = _corners(pad_lo, pad_hi, yaw, position)
    if any(_rectangles_overlap(padded, p.footprint) for p in placed):
        return None
    return position, float(np.arctan2(np.sin(yaw), np.cos(yaw)))


def _place_furniture(
    half_xy: np.ndarray, cfg: RoomConfig, rng: np.random.Generator
) -> list[PlacedObject]:
    area = 4 * half_xy[0] * half_xy[1]
    wanted = area * cfg.objects_per_square_metre + rng.uniform(-1.5, 1.5)
    target = int(np.clip(round(wanted), *cfg.objects_range))
    names = sorted(cfg.class_weights)
    weights = np.array([cfg.class_weights[n] for n in names], dtype=np.float64)
    placed: list[PlacedObject] = []
    counts = dict.fromkeys(names, 0)
    for _ in range(4 * target):
        if len(placed) == target:
            break
        allowed = np.array([counts[n] < FURNITURE[n].max_per_room for n in names])
        if not allowed.any():
            break
        p = weights * allowed
        template = FURNITURE[names[int(rng.choice(len(names), p=p / p.sum()))]]
        parts = _thicken(template.build(rng), cfg.min_part_size)
        for _ in range(cfg.placement_attempts):
            proposal = _propose(template, parts, placed, half_xy, cfg, rng)
            if proposal is not None:
                position, yaw = proposal
                lo, hi = _footprint(parts)
                placed.append(
                    PlacedObject(
                        template.name, parts, position, yaw, _corners(lo, hi, yaw, position)
                    )
                )
                counts[template.name] += 1
                break
    return placed


def _structure(half_xy: np.ndarray, height: float, t: float) -> list[tuple[str, Part]]:
    """Floor, ceiling and four wall slabs, in world coordinates (their own frame is the world's).

    The slabs touch without overlapping (the x walls run past the y walls' ends), so
    every point inside the shell belongs to exactly one of them.
    """
    hx, hy = half_xy
    return [
        ("floor", Part((0.0, 0.0, -t / 2), (hx + t, hy + t, t / 2), "floor")),
        ("ceiling", Part((0.0, 0.0, height + t / 2), (hx + t, hy + t, t / 2), "ceiling")),
        ("wall", Part((-hx - t / 2, 0.0, height / 2), (t / 2, hy + t, height / 2), "paint")),
        ("wall", Part((hx + t / 2, 0.0, height / 2), (t / 2, hy + t, height / 2), "paint")),
        ("wall", Part((0.0, -hy - t / 2, height / 2), (hx, t / 2, height / 2), "paint")),
        ("wall", Part((0.0, hy + t / 2, height / 2), (hx, t / 2, height / 2), "paint")),
    ]


def make_room(seed: int, config: RoomConfig | None = None) -> SyntheticRoom:
    """Draw a room from ``seed``: the same seed always gives the same room."""
    cfg = config or RoomConfig()
    rng = np.random.default_rng([int(seed), 0])
    half_xy = np.array([rng.uniform(*cfg.width_range), rng.uniform(*cfg.depth_range)]) / 2
    height = float(rng.uniform(*cfg.height_range))

    independent = cfg.texture_policy == "independent"
    # its own stream, so that the policy changes the room's appearance and nothing else
    appearance = np.random.default_rng([int(seed), 3])

    def texture(material: str, pool: tuple[str, ...], recolour: bool) -> tuple[str, np.ndarray]:
        """``(material, texture row)``: ``material``'s, or with ``recolour`` one drawn from
        ``pool`` (from the appearance stream)."""
        if not recolour:
            return material, make_texture(material, rng).flat()
        material = pool[int(appearance.integers(len(pool)))]
        return material, make_texture(material, appearance).flat()

    rows: dict[str, list] = {
        k: [] for k in ("centre", "half", "yaw", "label", "instance", "texture_offset", "texture")
    }
    materials: list[str] = []

    def add(
        part: Part,
        centre: np.ndarray,
        yaw: float,
        label: int,
        instance: int,
        drawn: tuple[str, np.ndarray],
    ) -> None:
        rows["centre"].append(centre)
        rows["half"].append(part.half)
        rows["yaw"].append(yaw)
        rows["label"].append(label)
        rows["instance"].append(instance)
        rows["texture_offset"].append(part.centre)
        rows["texture"].append(drawn[1])
        materials.append(drawn[0])

    structure = _structure(half_xy, height, cfg.wall_thickness)

    def structure_textures(recolour: bool) -> list[tuple[str, np.ndarray]]:
        wall = texture("paint", MATERIALS, recolour)  # the four walls share one
        return [
            wall if name == "wall" else texture(part.material, MATERIALS, recolour)
            for name, part in structure
        ]

    # drawn under either policy: furniture placement draws from ``rng`` after these
    textures = structure_textures(recolour=False)
    if independent:
        textures = structure_textures(recolour=True)
    for (name, part), drawn in zip(structure, textures, strict=True):
        add(part, np.asarray(part.centre), 0.0, CLASS_ID[name], -1, drawn)

    boxes, labels = [], []
    for index, obj in enumerate(_place_furniture(half_xy, cfg, rng)):
        rot = _rotation2d(obj.yaw)
        # parts that share a material keep sharing one texture, so objects stay coherent
        object_textures = {
            m: texture(m, FURNITURE_MATERIALS, independent)
            for m in sorted({p.material for p in obj.parts})
        }
        for part in obj.parts:
            xy = obj.position + rot @ np.asarray(part.centre[:2])
            add(
                part,
                np.array([xy[0], xy[1], part.centre[2]]),
                obj.yaw,
                CLASS_ID[obj.name],
                index,
                object_textures[part.material],
            )
        lo, hi = _footprint(obj.parts)
        centre_xy = obj.position + rot @ ((lo[:2] + hi[:2]) / 2)
        boxes.append([centre_xy[0], centre_xy[1], (lo[2] + hi[2]) / 2, *(hi - lo), obj.yaw])
        labels.append(CLASS_ID[obj.name])

    parts = BoxParts(
        **{
            k: np.asarray(v, dtype=np.int64 if k in ("label", "instance") else np.float64)
            for k, v in rows.items()
        }
    )
    interior = np.array([[-half_xy[0], -half_xy[1], 0.0], [half_xy[0], half_xy[1], height]])
    aabb = interior + np.array([[-1.0], [1.0]]) * cfg.aabb_margin
    return SyntheticRoom(
        seed=int(seed),
        field=BoxUnionField(parts, aabb, cfg.optics),
        interior=interior,
        aabb=aabb,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 7),
        box_labels=np.asarray(labels, dtype=np.int64),
        materials=tuple(materials),
        config=cfg,
    )

"""3D files of a scene for a viewer (Open3D, MeshLab, CloudCompare): its occupied voxels as a
coloured PLY point cloud and its boxes as PLY line sets, all in world units; and the
detection output format, ``boxes.json``.

Everything here is in the world frame of contract 1: sample ``[i, j, k]`` of a grid sits at
``bbox_min + (i, j, k) * voxel_size``, and a box is ``(cx, cy, cz, w, l, h, yaw)`` in world
units (:mod:`grid_store.boxes`). Ground-truth boxes are green, predictions red, the colours
of :mod:`model.pictures.boxes`.

``boxes.json`` (written by ``nerfmae detect``, read by ``nerfmae export-3d --boxes``)::

    {"scene_id": "room_0", "units": "world",
     "box_format": ["cx", "cy", "cz", "w", "l", "h", "yaw"],
     "detections": [{"box": [7 floats], "score": 0.93, "label": 3, "class": "chair"}, ...]}

``label`` (the box class: an index into the store's ``semantic_classes`` for the synthetic
rooms) may be null (a class-agnostic detector) or left out; ``class`` is its name where the
detector's run recorded class names.

Open3D is imported inside the functions that write PLY files, so reading and writing
``boxes.json`` does not load it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from grid_store.boxes import BOX_EDGES, BOX_FIELDS, as_boxes, box_corners


def _hex_rgb(code: str) -> tuple[float, float, float]:
    code = code.lstrip("#")
    return tuple(int(code[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


# The colours of model.pictures.boxes (GT_COLOUR "#00c000", PRED_COLOUR "#ff2020"),
# without importing matplotlib.
GT_COLOUR = _hex_rgb("#00c000")
PRED_COLOUR = _hex_rgb("#ff2020")

BOXES_JSON_UNITS = "world"

# Open3D refuses to write a geometry without points; these are the headers it writes, with
# no elements, so an empty export is still a file every PLY reader opens.
_EMPTY_POINTS_PLY = (
    "ply\nformat ascii 1.0\ncomment Created by nerfmae (no points)\nelement vertex 0\n"
    "property double x\nproperty double y\nproperty double z\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
)
_EMPTY_LINES_PLY = (
    "ply\nformat ascii 1.0\ncomment Created by nerfmae (no boxes)\nelement vertex 0\n"
    "property double x\nproperty double y\nproperty double z\nelement edge 0\n"
    "property int vertex1\nproperty int vertex2\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
)


# --------------------------------------------------------------------------- points
def occupied_points(
    rgba: np.ndarray,
    bbox_min: np.ndarray,
    voxel_size: float,
    alpha_threshold: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """The samples of a grid with ``alpha >= alpha_threshold``, as world points and colours.

    The rule of :meth:`grid_store.RadianceGrid.with_empty_space`: a sample below the
    threshold is empty space.

    Args:
        rgba: ``(4, X, Y, Z)`` colour and alpha (any float dtype).
        bbox_min: ``(3,)`` world position of sample ``[0, 0, 0]``.
        voxel_size: the lattice spacing in world units.
        alpha_threshold: in ``[0, 1]``; 0 keeps every sample.

    Returns:
        ``points`` ``(P, 3)`` float64 world positions and ``colours`` ``(P, 3)`` float64 in
        ``[0, 1]``, in C order of ``(i, j, k)``.
    """
    rgba = np.asarray(rgba)
    if rgba.ndim != 4 or rgba.shape[0] != 4:
        raise ValueError(f"rgba: expected (4, X, Y, Z), got {rgba.shape}")
    origin = np.asarray(bbox_min, dtype=np.float64).reshape(-1)
    if origin.shape != (3,) or not np.isfinite(origin).all():
        raise ValueError(f"bbox_min: expected 3 finite floats, got {np.asarray(bbox_min)}")
    voxel_size = float(voxel_size)
    if not (math.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel_size: must be finite and > 0, got {voxel_size}")
    alpha_threshold = float(alpha_threshold)
    if not 0.0 <= alpha_threshold <= 1.0:
        raise ValueError(f"alpha_threshold: must be in [0, 1], got {alpha_threshold}")
    alpha = rgba[3].astype(np.float32)
    index = np.argwhere(alpha >= alpha_threshold)  # (P, 3), C order
    points = origin + index.astype(np.float64) * voxel_size
    colours = rgba[:3, index[:, 0], index[:, 1], index[:, 2]].T.astype(np.float64)
    return points, np.clip(colours, 0.0, 1.0)


def _ply_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise ValueError(f"{path}: expected a .ply file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_point_cloud(path: str | os.PathLike, points: np.ndarray, colours: np.ndarray) -> Path:
    """Write ``(P, 3)`` points with ``(P, 3)`` colours in ``[0, 1]`` as a binary PLY (colours
    stored as 8-bit); no points gives a valid PLY with none. Returns the path."""
    import open3d as o3d

    pts = np.asarray(points, dtype=np.float64)
    cols = np.asarray(colours, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points: expected (P, 3), got {pts.shape}")
    if cols.shape != pts.shape:
        raise ValueError(f"colours: expected {pts.shape} like the points, got {cols.shape}")
    if not (np.isfinite(pts).all() and np.isfinite(cols).all()):
        raise ValueError("points/colours: non-finite values")
    path = _ply_path(path)
    if len(pts) == 0:
        path.write_text(_EMPTY_POINTS_PLY)
        return path
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(pts)
    cloud.colors = o3d.utility.Vector3dVector(np.clip(cols, 0.0, 1.0))
    if not o3d.io.write_point_cloud(str(path), cloud):
        raise OSError(f"{path}: Open3D could not write the point cloud")
    return path


# --------------------------------------------------------------------------- boxes
def _box_colours(colours: Any, n: int) -> np.ndarray:
    """One ``(3,)`` colour or ``(n, 3)`` colours -> ``(n, 3)`` float64 in ``[0, 1]``."""
    c = np.asarray(colours, dtype=np.float64)
    if c.shape == (3,):
        c = np.broadcast_to(c, (n, 3))
    if c.shape != (n, 3):
        raise ValueError(f"colours: expected (3,) or ({n}, 3), got {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise ValueError("colours: must be finite and in [0, 1]")
    return np.array(c)


def box_line_set(boxes: np.ndarray, colours: Any = GT_COLOUR):
    """``(N, 7)`` world boxes -> an ``open3d.geometry.LineSet`` of ``8 N`` points (each box's
    :func:`grid_store.boxes.box_corners`, box after box) and ``12 N`` lines
    (:data:`grid_store.boxes.BOX_EDGES`), each line of its box's colour.

    ``colours``: one ``(3,)`` colour for all boxes or ``(N, 3)``, in ``[0, 1]``.
    """
    import open3d as o3d

    b = as_boxes(boxes)
    cols = _box_colours(colours, len(b))
    lines = o3d.geometry.LineSet()
    if not len(b):
        return lines
    corners = box_corners(b).reshape(-1, 3)  # (8N, 3)
    edges = (BOX_EDGES[None] + 8 * np.arange(len(b))[:, None, None]).reshape(-1, 2)  # (12N, 2)
    lines.points = o3d.utility.Vector3dVector(corners)
    lines.lines = o3d.utility.Vector2iVector(edges.astype(np.int32))
    lines.colors = o3d.utility.Vector3dVector(np.repeat(cols, len(BOX_EDGES), axis=0))
    return lines


def write_boxes(path: str | os.PathLike, boxes: np.ndarray, colour: Any = GT_COLOUR) -> Path:
    """Write ``(N, 7)`` world boxes as a PLY line set (:func:`box_line_set`); no boxes gives a
    valid PLY with none. Returns the path."""
    import open3d as o3d

    lines = box_line_set(boxes, colour)
    path = _ply_path(path)
    if not len(lines.lines):
        path.write_text(_EMPTY_LINES_PLY)
        return path
    if not o3d.io.write_line_set(str(path), lines):
        raise OSError(f"{path}: Open3D could not write the line set")
    return path


def ply_element_counts(path: str | os.PathLike) -> dict[str, int]:
    """The element counts in a PLY file's header, e.g. ``{"vertex": 16, "edge": 24}`` (a box
    line set holds 8 vertices and 12 edges per box); reads the header only."""
    path = Path(path)
    counts: dict[str, int] = {}
    with path.open("rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        for raw in f:
            line = raw.decode("ascii", errors="replace").split()
            if line[:1] == ["end_header"]:
                return counts
            if line[:1] == ["element"] and len(line) == 3:
                counts[line[1]] = int(line[2])
    raise ValueError(f"{path}: PLY header has no end_header")


# --------------------------------------------------------------------------- boxes.json
def _finite_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where}: non-finite value {value!r}")
    return float(value)


def _parse_boxes_json(
    path: str | os.PathLike,
) -> tuple[str, np.ndarray, np.ndarray, list[int | None] | None]:
    """``(scene_id, boxes, scores, labels)`` of a ``boxes.json``, checked."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    for key in ("scene_id", "units", "box_format", "detections"):
        if key not in doc:
            raise ValueError(f"{path}: missing key {key!r}")
    scene_id = doc["scene_id"]
    if not isinstance(scene_id, str) or not scene_id:
        raise ValueError(f"{path}: 'scene_id' must be a non-empty string, got {scene_id!r}")
    if doc["units"] != BOXES_JSON_UNITS:
        raise ValueError(
            f"{path}: 'units' must be {BOXES_JSON_UNITS!r} (boxes in world units), "
            f"got {doc['units']!r}"
        )
    if doc["box_format"] != list(BOX_FIELDS):
        raise ValueError(
            f"{path}: 'box_format' must be {list(BOX_FIELDS)}, got {doc['box_format']!r}"
        )
    detections = doc["detections"]
    if not isinstance(detections, list):
        raise ValueError(f"{path}: 'detections' must be a list, got {type(detections).__name__}")
    boxes = np.zeros((len(detections), 7))
    scores = np.zeros(len(detections))
    labels: list[int | None] = []
    for i, det in enumerate(detections):
        where = f"{path}: detections[{i}]"
        if not isinstance(det, dict):
            raise ValueError(f"{where}: expected an object, got {det!r}")
        for key in ("box", "score"):
            if key not in det:
                raise ValueError(f"{where}: missing key {key!r}")
        box = det["box"]
        if not isinstance(box, list) or len(box) != 7:
            n = len(box) if isinstance(box, list) else type(box).__name__
            raise ValueError(f"{where}.box: expected 7 numbers {list(BOX_FIELDS)}, got {n}")
        boxes[i] = [_finite_number(v, f"{where}.box[{j}]") for j, v in enumerate(box)]
        if (boxes[i, 3:6] < 0).any():
            raise ValueError(f"{where}.box: negative extent (w, l, h) {boxes[i, 3:6].tolist()}")
        scores[i] = _finite_number(det["score"], f"{where}.score")
        label = det.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise ValueError(f"{where}.label: expected an integer or null, got {label!r}")
        labels.append(label)
    return scene_id, boxes, scores, (labels if any(v is not None for v in labels) else None)


def read_boxes_json(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, list[int | None] | None]:
    """Read a ``boxes.json`` (the module's docstring has the format).

    Returns ``boxes`` ``(N, 7)`` float64 in world units, ``scores`` ``(N,)`` float64 and
    ``labels``: a list of N ints (or None where a detection has none), or None when no
    detection has a label. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` naming the file and the field for anything malformed.
    """
    _, boxes, scores, labels = _parse_boxes_json(path)
    return boxes, scores, labels


def write_boxes_json(
    path: str | os.PathLike,
    scene_id: str,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: Any = None,
    class_names: Any = None,
) -> Path:
    """Write detections as a ``boxes.json``; returns the path (its folder is created).

    Args:
        scene_id: the scene the boxes are in.
        boxes: ``(N, 7)`` in world units.
        scores: ``(N,)`` finite.
        labels: None, or N integers (None entries allowed).
        class_names: names by label: each labelled detection also gets ``"class"``.
    """
    if not isinstance(scene_id, str) or not scene_id:
        raise ValueError(f"scene_id: must be a non-empty string, got {scene_id!r}")
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape != (len(b),):
        raise ValueError(f"scores: expected ({len(b)},) like the boxes, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores: non-finite values")
    if labels is None:
        labs: list[int | None] = [None] * len(b)
    else:
        labs = list(labels)
        if len(labs) != len(b):
            raise ValueError(f"labels: expected {len(b)} like the boxes, got {len(labs)}")
        for i, v in enumerate(labs):
            if v is None:
                continue
            if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
                raise ValueError(f"labels[{i}]: expected an integer or None, got {v!r}")
            labs[i] = int(v)
    doc = {
        "scene_id": scene_id,
        "units": BOXES_JSON_UNITS,
        "box_format": list(BOX_FIELDS),
        "detections": [
            {"box": [float(v) for v in box], "score": float(score), "label": label,
             **({"class": str(class_names[label])} if class_names is not None
                and label is not None and 0 <= label < len(class_names) else {})}
            for box, score, label in zip(b, s, labs, strict=True)
        ],
    }  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- a scene
def export_scene(
    store_url: str | os.PathLike,
    scene_id: str,
    out_dir: str | os.PathLike,
    boxes_json: str | os.PathLike | None = None,
    alpha_threshold: float = 0.01,
    score_threshold: float = 0.0,
) -> dict[str, Path]:
    """Write one store scene as PLY files in ``out_dir``; returns them by kind.

    - ``"points"``: ``<scene>_points.ply``, the samples with ``alpha >= alpha_threshold``
      (:func:`occupied_points`) in their colours;
    - ``"gt_boxes"``: ``<scene>_gt_boxes.ply``, the scene's stored boxes in green, when the
      scene stores boxes;
    - ``"pred_boxes"``: ``<scene>_pred_boxes.ply``, the detections of ``boxes_json`` scoring
      at least ``score_threshold``, in red, when a ``boxes.json`` is given (its
      ``scene_id`` must be this scene).

    Prints nothing. Raises ``ValueError`` for a bad threshold or ``boxes.json``, and
    :class:`grid_store.SceneNotFoundError` (a ``KeyError``) for a scene the store lacks.
    """
    from grid_store import GridStore

    if not math.isfinite(float(score_threshold)):
        raise ValueError(f"score_threshold: must be finite, got {score_threshold}")
    pred = None
    if boxes_json is not None:  # read it first: a bad file fails before anything is written
        json_scene, boxes, scores, _ = _parse_boxes_json(boxes_json)
        if json_scene != scene_id:
            raise ValueError(
                f"{boxes_json}: 'scene_id' is {json_scene!r}, but the scene exported is "
                f"{scene_id!r}"
            )
        pred = boxes[scores >= score_threshold]
    grid = GridStore(store_url, mode="r").read_grid(scene_id)
    points, colours = occupied_points(grid.rgba, grid.bbox_min, grid.voxel_size, alpha_threshold)

    out = Path(out_dir)
    written = {"points": write_point_cloud(out / f"{scene_id}_points.ply", points, colours)}
    if grid.boxes is not None:
        written["gt_boxes"] = write_boxes(out / f"{scene_id}_gt_boxes.ply", grid.boxes, GT_COLOUR)
    if pred is not None:
        written["pred_boxes"] = write_boxes(out / f"{scene_id}_pred_boxes.ply", pred, PRED_COLOUR)
    return written


__all__ = [
    "GT_COLOUR",
    "PRED_COLOUR",
    "box_line_set",
    "export_scene",
    "occupied_points",
    "ply_element_counts",
    "read_boxes_json",
    "write_boxes",
    "write_boxes_json",
    "write_point_cloud",
]

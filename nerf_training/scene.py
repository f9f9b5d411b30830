"""Reading a scene folder into a validated :class:`Scene` (posed images, cameras, box, split).

Two on-disk formats are read (DESIGN contract 4):

- **nerfstudio / instant-ngp** ``transforms.json``: intrinsics ``fl_x, fl_y, cx, cy,
  w, h`` (or ``camera_angle_x``/``camera_angle_y``), globally or per frame (a frame's
  own value wins); ``camera_model`` OPENCV, PINHOLE or SIMPLE_PINHOLE with distortion
  ``k1, k2, p1, p2``; the box from ``aabb`` or instant-ngp's ``aabb_scale``/``scale``/
  ``offset``; the split from nerfstudio's ``train_filenames``/``val_filenames``/
  ``test_filenames`` when present.
- **Blender** ``transforms_{train,val,test}.json`` with ``camera_angle_x``: train
  frames train, the test split (else val) is held out.

Without split information every 8th view (indices 0, 8, 16, ...) is held out.

World frame: poses are used exactly as the json gives them, so the trained field,
the extracted grid and any ground truth share the frame of ``transforms.json``
(DESIGN contract 1). instant-ngp's ``scale``/``offset`` (it maps positions by
``p * scale + offset`` into its unit cube) are applied the other way round: they map
instant-ngp's box back into this world frame, which describes the same region as
scaling the poses into instant-ngp's frame would.

Everything is validated before :func:`load_scene` returns; a bad scene raises
:class:`SceneLoadError` naming the file and the field or frame at fault.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from nerf_training.cameras import Cameras
from nerf_training.depth import DEFAULT_DEPTH_UNIT_SCALE, downscale_depth, read_depth_map
from nerf_training.images import (
    ImageHeader,
    composite_onto,
    decode_image,
    downscale_area,
    read_header,
)

logger = logging.getLogger(__name__)

SUPPORTED_CAMERA_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
HOLDOUT_EVERY = 8
# Blender synthetic objects (lego, chair, ...) fit in [-1.5, 1.5]^3: the box nerfacc
# uses for them, and the one instant-ngp ends up with for these scenes (aabb_scale 1
# at its default scale 0.33 is +-1.52 world units).
BLENDER_DEFAULT_HALF_EXTENT = 1.5
# instant-ngp's defaults when a transforms.json does not give them (nerf_loader.cpp).
NGP_DEFAULT_SCALE = 0.33
NGP_DEFAULT_OFFSET = (0.5, 0.5, 0.5)
NGP_DEFAULT_AABB_SCALE = 1.0
# Poses come from float32 text; anything further off than this is not a rotation.
RIGID_TOLERANCE = 1e-3
_INTRINSIC_KEYS = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y", "cx", "cy", "w", "h")
_UNSUPPORTED_DISTORTION_KEYS = ("k3", "k4", "k5", "k6")
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class SceneLoadError(ValueError):
    """A scene folder cannot be read; the message names the file and the field or frame."""


@dataclass
class Scene:
    """One scene's posed images, ready for training (images stay uint8 until sampled)."""

    root: Path
    """The scene folder."""
    images: torch.Tensor
    """``(N, H, W, C)`` uint8, C = 4 when the frames carry alpha (composited at train time)."""
    cameras: Cameras
    """The ``N`` cameras, intrinsics at the loaded resolution."""
    aabb: torch.Tensor
    """``(2, 3)`` float32 min and max corner of the world box the NeRF lives in."""
    train_idx: torch.Tensor
    """``(Ntrain,)`` int64 indices of the training views."""
    holdout_idx: torch.Tensor
    """``(Nholdout,)`` int64 indices of the held-out views (may be empty for 1 view)."""
    frame_names: list[str]
    """Each frame's ``file_path`` as the json gives it (normalised POSIX path)."""
    has_alpha: bool
    """True when ``images`` has 4 channels (RGBA)."""
    aabb_source: str = ""
    """Where ``aabb`` came from, in words (recorded next to outputs)."""
    source_format: str = ""
    """``"transforms"`` (nerfstudio / instant-ngp) or ``"blender"``."""
    depths: torch.Tensor | None = None
    """``(N, H, W)`` float32 z-depth in scene units (0: no measurement) when every frame
    names a ``depth_file_path`` (:mod:`nerf_training.depth`); None without depth."""

    def camera_origins(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, 3)`` world positions of the cameras ``idx`` (all when None)."""
        c2w = self.cameras.c2w if idx is None else self.cameras.c2w[idx]
        return c2w[:, :3, 3]


@dataclass
class _Frame:
    """One frame as parsed from json, before its image is read."""

    where: str
    """``<json>: frames[i] (<file_path>)``: how errors name this frame."""
    name: str
    path: Path
    c2w: np.ndarray  # (4, 4) float64
    fl_x: float | None
    fl_y: float | None
    angle_x: float | None
    angle_y: float | None
    cx: float | None
    cy: float | None
    w: int | None
    h: int | None
    distortion: tuple[float, float, float, float]
    depth_path: Path | None = None


@dataclass
class _Parsed:
    """A scene's json content, before any image is opened."""

    frames: list[_Frame]
    train_idx: list[int]
    holdout_idx: list[int]
    meta: dict
    """The json whose top-level fields give the box (Blender: the train json)."""
    meta_path: Path


def load_scene(
    scene_dir: str | os.PathLike,
    downscale: int = 1,
    background: tuple[float, float, float] | None = None,
) -> Scene:
    """Read and validate a scene folder.

    ``downscale``: integer factor; images are area-averaged and intrinsics divided by it.
    ``background``: RGB in [0, 1] to composite RGBA frames onto now (the images then have
    3 channels); None keeps alpha so the trainer can composite (e.g. random backgrounds).
    """
    root = Path(scene_dir)
    if not root.is_dir():
        raise SceneLoadError(f"{root}: scene folder does not exist")
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise SceneLoadError(f"{root}: downscale must be an integer >= 1, got {downscale!r}")
    background = _check_background(root, background)

    if (root / "transforms.json").is_file():
        parsed, source_format = _read_transforms(root), "transforms"
    elif (root / "transforms_train.json").is_file():
        parsed, source_format = _read_blender(root), "blender"
    else:
        raise SceneLoadError(
            f"{root}: no transforms.json (nerfstudio / instant-ngp) or "
            "transforms_train.json (Blender) in the scene folder"
        )

    frames, train_idx, holdout_idx = parsed.frames, parsed.train_idx, parsed.holdout_idx
    c2w = np.stack([f.c2w for f in frames])  # (N, 4, 4)
    aabb, aabb_source = _scene_box(parsed.meta, parsed.meta_path, c2w, source_format)
    headers = _check_image_headers(frames, downscale)
    width, height = headers[0].width // downscale, headers[0].height // downscale
    cameras = _cameras(frames, headers[0], downscale, c2w, width, height)
    channels = 4 if any(h.has_alpha for h in headers) else 3
    images = _decode_all(frames, channels, downscale, (height, width))  # (N, H, W, C)
    if background is not None and channels == 4:
        images = np.stack([composite_onto(im, background) for im in images])
        channels = 3
    depths = _read_depths(frames, parsed, headers[0], downscale)

    logger.info(
        "loaded %s: %d frames (%d train, %d held out), %dx%d%s, aabb from %s",
        root,
        len(frames),
        len(train_idx),
        len(holdout_idx),
        width,
        height,
        " with depth" if depths is not None else "",
        aabb_source,
    )
    return Scene(
        root=root,
        images=torch.from_numpy(images),
        cameras=cameras,
        aabb=torch.tensor(aabb, dtype=torch.float32),
        train_idx=torch.as_tensor(train_idx, dtype=torch.int64),
        holdout_idx=torch.as_tensor(holdout_idx, dtype=torch.int64),
        frame_names=[f.name for f in frames],
        has_alpha=channels == 4,
        aabb_source=aabb_source,
        source_format=source_format,
        depths=None if depths is None else torch.from_numpy(depths),
    )


def _read_depths(
    frames: Sequence[_Frame], parsed: _Parsed, header: ImageHeader, downscale: int
) -> np.ndarray | None:
    """``(N, H, W)`` float32 depth when the frames name depth maps (all or none of them)."""
    with_depth = [f for f in frames if f.depth_path is not None]
    if not with_depth:
        return None
    if len(with_depth) != len(frames):
        missing = next(f for f in frames if f.depth_path is None)
        raise SceneLoadError(
            f"{missing.where}: no field 'depth_file_path' while {len(with_depth)} other frames "
            "have one; depth must be given for every frame or for none"
        )
    unit = parsed.meta.get("depth_unit_scale_factor", DEFAULT_DEPTH_UNIT_SCALE)
    unit = _number(unit, str(parsed.meta_path), "depth_unit_scale_factor")
    if unit <= 0:
        raise SceneLoadError(
            f"{parsed.meta_path}: field 'depth_unit_scale_factor' must be positive, got {unit}"
        )
    maps = []
    for f in frames:
        try:
            depth = read_depth_map(f.depth_path, unit, (header.width, header.height), f.where)
        except ValueError as e:
            raise SceneLoadError(str(e)) from e
        maps.append(downscale_depth(depth, downscale))
    return np.stack(maps)


# ---------------------------------------------------------------- formats and splits


def _read_transforms(root: Path) -> _Parsed:
    path = root / "transforms.json"
    meta = _read_json(path)
    frames = _parse_frames(path, meta)
    split = _split_from_filenames(path, meta, [f.name for f in frames])
    train_idx, holdout_idx = split if split is not None else every_nth_split(len(frames))
    return _Parsed(frames, train_idx, holdout_idx, meta, path)


def _read_blender(root: Path) -> _Parsed:
    train_path = root / "transforms_train.json"
    meta = _read_json(train_path)
    frames = _parse_frames(train_path, meta)
    held_path = next(
        (
            root / f"transforms_{s}.json"
            for s in ("test", "val")
            if (root / f"transforms_{s}.json").is_file()
        ),
        None,
    )
    if held_path is None:
        train_idx, holdout_idx = every_nth_split(len(frames))
    else:
        held = _parse_frames(held_path, _read_json(held_path))
        train_idx = list(range(len(frames)))
        holdout_idx = list(range(len(frames), len(frames) + len(held)))
        frames = frames + held
    return _Parsed(frames, train_idx, holdout_idx, meta, train_path)


def every_nth_split(n: int, every: int = HOLDOUT_EVERY) -> tuple[list[int], list[int]]:
    """Deterministic split: views 0, every, 2 * every, ... are held out, the rest train.

    A single view is kept for training (nothing to hold out).
    """
    if n == 1:
        logger.warning("scene has a single view: nothing is held out")
        return [0], []
    holdout = list(range(0, n, every))
    return [i for i in range(n) if i % every], holdout


def _split_from_filenames(
    path: Path, meta: dict, names: list[str]
) -> tuple[list[int], list[int]] | None:
    """nerfstudio's explicit split lists, or None when the json has none."""
    if not any(k in meta for k in ("train_filenames", "val_filenames", "test_filenames")):
        return None
    index = {name: i for i, name in enumerate(names)}

    def resolve(key: str) -> list[int]:
        entries = meta[key]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise SceneLoadError(f"{path}: field '{key}' must be a list of file paths")
        missing = [e for e in entries if _normalise(e) not in index]
        if missing:
            raise SceneLoadError(
                f"{path}: field '{key}' lists {missing[0]!r}, which no frame's file_path names"
            )
        return [index[_normalise(e)] for e in entries]

    held_key = next((k for k in ("test_filenames", "val_filenames") if k in meta), None)
    holdout = resolve(held_key) if held_key else []
    if "train_filenames" in meta:
        train = resolve("train_filenames")
    else:
        held = set(holdout)
        train = [i for i in range(len(names)) if i not in held]
    if not held_key:
        chosen = set(train)
        holdout = [i for i in range(len(names)) if i not in chosen]
    if not train:
        raise SceneLoadError(f"{path}: the split fields leave no training frame")
    return train, holdout


# ---------------------------------------------------------------- json and frames


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SceneLoadError(f"{path}: cannot read file ({e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SceneLoadError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from e
    if not isinstance(data, dict):
        raise SceneLoadError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _normalise(file_path: str) -> str:
    return PurePosixPath(file_path.replace("\\", "/")).as_posix()


def _parse_frames(path: Path, meta: dict) -> list[_Frame]:
    raw_frames = meta.get("frames")
    if not isinstance(raw_frames, list):
        raise SceneLoadError(f"{path}: field 'frames' is missing or not a list")
    if not raw_frames:
        raise SceneLoadError(f"{path}: field 'frames' is empty (no views)")
    return [_parse_frame(path, i, raw, meta) for i, raw in enumerate(raw_frames)]


def _parse_frame(path: Path, i: int, raw: Any, meta: dict) -> _Frame:
    where = f"{path}: frames[{i}]"
    if not isinstance(raw, dict):
        raise SceneLoadError(f"{where} must be a JSON object")
    file_path = raw.get("file_path")
    if not isinstance(file_path, str) or not file_path:
        raise SceneLoadError(f"{where}: field 'file_path' is missing or not a string")
    where = f"{where} ({file_path})"

    def get(key: str) -> Any:  # a frame's own value wins over the global one
        return raw[key] if key in raw else meta.get(key)

    model = get("camera_model")
    if model is not None and model not in SUPPORTED_CAMERA_MODELS:
        raise SceneLoadError(
            f"{where}: field 'camera_model' is {model!r}; supported: "
            f"{', '.join(SUPPORTED_CAMERA_MODELS)}"
        )
    if get("is_fisheye"):
        raise SceneLoadError(f"{where}: field 'is_fisheye' is set; fisheye is not supported")
    for key in _UNSUPPORTED_DISTORTION_KEYS:
        if get(key) is not None and _number(get(key), where, key) != 0.0:
            raise SceneLoadError(
                f"{where}: field '{key}' is non-zero; only k1, k2, p1, p2 (OPENCV) are supported"
            )
    values = {k: _optional_number(get(k), where, k) for k in _INTRINSIC_KEYS}
    for key in ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y", "w", "h"):
        if values[key] is not None and values[key] <= 0:
            raise SceneLoadError(f"{where}: field '{key}' must be positive, got {values[key]}")
    for key in ("w", "h"):
        if values[key] is not None and values[key] != int(values[key]):
            raise SceneLoadError(f"{where}: field '{key}' must be a whole number of pixels")
    if values["fl_x"] is None and values["camera_angle_x"] is None:
        raise SceneLoadError(f"{where}: no focal length: needs field 'fl_x' or 'camera_angle_x'")
    if model == "SIMPLE_PINHOLE" and values["fl_y"] is None:
        values["fl_y"] = values["fl_x"]
    distortion = tuple(_number(get(k) or 0.0, where, k) for k in ("k1", "k2", "p1", "p2"))

    image_path = Path(file_path)
    if not image_path.is_absolute():
        image_path = path.parent / image_path
    depth_path = raw.get("depth_file_path")
    if depth_path is not None:
        if not isinstance(depth_path, str) or not depth_path:
            raise SceneLoadError(f"{where}: field 'depth_file_path' is not a non-empty string")
        depth_path = Path(depth_path)
        if not depth_path.is_absolute():
            depth_path = path.parent / depth_path
    return _Frame(
        depth_path=depth_path,
        where=where,
        name=_normalise(file_path),
        path=image_path,
        c2w=_rigid_matrix(raw.get("transform_matrix"), where),
        fl_x=values["fl_x"],
        fl_y=values["fl_y"],
        angle_x=values["camera_angle_x"],
        angle_y=values["camera_angle_y"],
        cx=values["cx"],
        cy=values["cy"],
        w=None if values["w"] is None else int(values["w"]),
        h=None if values["h"] is None else int(values["h"]),
        distortion=distortion,
    )


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SceneLoadError(f"{where}: field '{key}' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SceneLoadError(f"{where}: field '{key}' is {value} (NaN/Inf)")
    return float(value)


def _optional_number(value: Any, where: str, key: str) -> float | None:
    return None if value is None else _number(value, where, key)


def _rigid_matrix(matrix: Any, where: str) -> np.ndarray:
    """The frame's ``transform_matrix`` as ``(4, 4)`` float64, checked to be a rigid motion."""
    field = f"{where}: field 'transform_matrix'"
    if matrix is None:
        raise SceneLoadError(f"{field} is missing")
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SceneLoadError(f"{field} is not a numeric matrix ({e})") from e
    if m.shape != (4, 4):
        raise SceneLoadError(f"{field} must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise SceneLoadError(f"{field} contains NaN or Inf")
    if np.abs(m[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > RIGID_TOLERANCE:
        raise SceneLoadError(f"{field}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    rotation = m[:3, :3]
    off_orthonormal = np.abs(rotation.T @ rotation - np.eye(3)).max()
    if off_orthonormal > RIGID_TOLERANCE:
        raise SceneLoadError(
            f"{field} is not a rigid transform: rotation is not orthonormal "
            f"(max |R^T R - I| = {off_orthonormal:.3g}; scaled or sheared?)"
        )
    det = np.linalg.det(rotation)
    if abs(det - 1.0) > RIGID_TOLERANCE:
        raise SceneLoadError(
            f"{field} is not a rigid transform: rotation has determinant {det:.4g} "
            "(a reflection), expected +1"
        )
    return m


# ---------------------------------------------------------------- box


def _scene_box(meta: dict, path: Path, c2w: np.ndarray, source_format: str):
    """``(2, 3)`` world box and a sentence saying where it came from."""
    if "aabb" in meta:
        try:
            box = np.asarray(meta["aabb"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise SceneLoadError(f"{path}: field 'aabb' is not a numeric [[min], [max]]") from e
        if box.shape != (2, 3) or not np.all(np.isfinite(box)) or np.any(box[0] >= box[1]):
            raise SceneLoadError(
                f"{path}: field 'aabb' must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with "
                f"finite min < max, got {meta['aabb']!r}"
            )
        return box, f"{path.name} field 'aabb'"
    if any(k in meta for k in ("aabb_scale", "scale", "offset")):
        return _ngp_box(meta, path)
    if source_format == "blender":
        h = BLENDER_DEFAULT_HALF_EXTENT
        return (
            np.array([[-h] * 3, [h] * 3]),
            f"Blender default [-{h}, {h}]^3 (no 'aabb' in {path.name})",
        )
    return _camera_box(c2w, path)


def _ngp_box(meta: dict, path: Path):
    """instant-ngp's training box, mapped back from its unit-cube frame into world units.

    instant-ngp places positions at ``p * scale + offset`` and trains inside the cube
    ``0.5 +- aabb_scale / 2``; the world box is that cube mapped back.
    """
    where = str(path)
    aabb_scale = _number(meta.get("aabb_scale", NGP_DEFAULT_AABB_SCALE), where, "aabb_scale")
    scale = _number(meta.get("scale", NGP_DEFAULT_SCALE), where, "scale")
    offset = meta.get("offset", list(NGP_DEFAULT_OFFSET))
    if not isinstance(offset, list) or len(offset) != 3:
        raise SceneLoadError(f"{path}: field 'offset' must be 3 numbers, got {offset!r}")
    offset = np.array([_number(o, where, "offset") for o in offset])
    for key, value in (("aabb_scale", aabb_scale), ("scale", scale)):
        if value <= 0:
            raise SceneLoadError(f"{path}: field '{key}' must be positive, got {value}")
    lo = (0.5 - 0.5 * aabb_scale - offset) / scale
    hi = (0.5 + 0.5 * aabb_scale - offset) / scale
    return (
        np.stack([lo, hi]),
        f"instant-ngp aabb_scale={aabb_scale:g}, scale={scale:g}, offset={offset.tolist()}",
    )


def _camera_box(c2w: np.ndarray, path: Path):
    """Fallback: the cube around the camera centres (fits captures that circle an object)."""
    centres = c2w[:, :3, 3]  # (N, 3)
    lo, hi = centres.min(axis=0), centres.max(axis=0)
    half = float((hi - lo).max()) / 2.0
    if half <= 1e-9:
        raise SceneLoadError(
            f"{path}: no 'aabb' or 'aabb_scale' field and the camera centres do not span a "
            "region to infer one from; add 'aabb': [[xmin, ymin, zmin], [xmax, ymax, zmax]]"
        )
    centre = (lo + hi) / 2.0
    logger.warning(
        "%s gives no 'aabb' or 'aabb_scale': using the cube around the camera centres, "
        "which suits object captures; add 'aabb' for rooms",
        path,
    )
    return np.stack([centre - half, centre + half]), "cube around the camera centres"


# ---------------------------------------------------------------- images and intrinsics


def _check_image_headers(frames: Sequence[_Frame], downscale: int) -> list[ImageHeader]:
    """Every image exists, is readable and has the size the json and the other frames say."""
    headers = []
    for frame in frames:
        path = frame.path = _existing_image(frame)
        try:
            header = read_header(path)
        except _IMAGE_ERRORS as e:
            raise SceneLoadError(f"{path}: cannot read image ({e}); named by {frame.where}") from e
        for key, declared, actual in (("w", frame.w, header.width), ("h", frame.h, header.height)):
            if declared is not None and declared != actual:
                raise SceneLoadError(
                    f"{frame.where}: field '{key}' is {declared} but {path} is "
                    f"{header.width}x{header.height}"
                )
        if headers and (header.width, header.height) != (headers[0].width, headers[0].height):
            first = headers[0]
            raise SceneLoadError(
                f"{path}: image is {header.width}x{header.height} but {first.path} is "
                f"{first.width}x{first.height}; all frames must share one size ({frame.where})"
            )
        headers.append(header)
    first = headers[0]
    if downscale > min(first.width, first.height):
        raise SceneLoadError(
            f"{first.path}: downscale {downscale} is larger than the image "
            f"({first.width}x{first.height})"
        )
    return headers


def _existing_image(frame: _Frame) -> Path:
    # Blender's file_path usually omits the extension.
    candidates = [frame.path]
    if not frame.path.suffix or not frame.path.exists():
        candidates.append(frame.path.with_name(frame.path.name + ".png"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise SceneLoadError(f"{frame.where}: field 'file_path': image file not found (tried {tried})")


def _cameras(
    frames: Sequence[_Frame],
    header: ImageHeader,
    downscale: int,
    c2w: np.ndarray,
    width: int,
    height: int,
) -> Cameras:
    full_w, full_h = header.width, header.height
    rows = []
    for f in frames:
        fx = f.fl_x if f.fl_x is not None else 0.5 * full_w / math.tan(0.5 * f.angle_x)
        if f.fl_y is not None:
            fy = f.fl_y
        elif f.angle_y is not None:
            fy = 0.5 * full_h / math.tan(0.5 * f.angle_y)
        else:
            fy = fx
        cx = f.cx if f.cx is not None else full_w / 2.0
        cy = f.cy if f.cy is not None else full_h / 2.0
        if not all(math.isfinite(v) and v > 0 for v in (fx, fy)):
            raise SceneLoadError(f"{f.where}: focal length is not a positive finite number")
        rows.append((fx, fy, cx, cy))
    intrinsics = torch.tensor(rows, dtype=torch.float64) / downscale  # (N, 4)
    fx, fy, cx, cy = intrinsics.to(torch.float32).unbind(-1)
    return Cameras(
        c2w=torch.from_numpy(c2w).to(torch.float32),
        fx=fx.contiguous(),
        fy=fy.contiguous(),
        cx=cx.contiguous(),
        cy=cy.contiguous(),
        width=width,
        height=height,
        distortion=torch.tensor([f.distortion for f in frames], dtype=torch.float32),
    )


def _decode_all(
    frames: Sequence[_Frame], channels: int, downscale: int, size: tuple[int, int]
) -> np.ndarray:
    """``(N, H, W, channels)`` uint8, decoded in a thread pool (PIL releases the GIL)."""
    height, width = size
    images = np.empty((len(frames), height, width, channels), dtype=np.uint8)

    def load(i: int) -> None:
        images[i] = downscale_area(decode_image(frames[i].path, channels), downscale)

    workers = min(8, os.cpu_count() or 1, len(frames))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(load, i) for i in range(len(frames))]
    for frame, future in zip(frames, futures, strict=True):
        error = future.exception()
        if error is None:
            continue
        if isinstance(error, _IMAGE_ERRORS):
            raise SceneLoadError(
                f"{frame.path}: cannot decode image ({error}); named by {frame.where}"
            ) from error
        raise error
    return images


def _check_background(
    root: Path, background: tuple[float, float, float] | None
) -> tuple[float, float, float] | None:
    if background is None:
        return None
    try:
        values = tuple(float(v) for v in background)
    except (TypeError, ValueError) as e:
        raise SceneLoadError(f"{root}: background must be 3 numbers in [0, 1]") from e
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise SceneLoadError(f"{root}: background must be 3 numbers in [0, 1], got {background!r}")
    return values

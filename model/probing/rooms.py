"""The rooms a probe reads: grids, labels, and the voxels each probe looks at, fixed once.

Rooms are read as training reads them (:class:`grid_store.dataset.GridDataset`, zero-padded
at the high end to the ``S^3`` cube, no augmentation) from a store that holds semantic labels
and boxes. What a probe samples is chosen here, once per room, from the room's name and a
seed, so that every checkpoint is scored on exactly the same voxels and boxes:

- **semantic training voxels** (:func:`stratified_voxels`): per class present in the room
  (void excluded), ``per_class`` of its valid voxels at random, or all of them when it has
  fewer. Walls are capped; a chair's few dozen voxels all come in, so rare furniture classes
  are in the training set at all.
- **object voxels** (:func:`box_voxels`): per stored box, the valid voxels whose centre lies
  inside the rotated box. A box with none (thinner than a voxel, or outside the cube) is
  left out, with a warning.

Dense semantic evaluation reads every labelled valid voxel of a test room
(:meth:`ProbeRooms.labelled`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from grid_store import GridStore
from grid_store.boxes import box_corners, points_in_boxes
from grid_store.dataset import GridDataset, collate_grids
from model.metrics.semantic import VOID
from model.probing.interpolation import pooling_matrix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    """Which voxels the semantic probe trains on."""

    per_class: int = 128
    """Training voxels per class per room (all of a class's voxels when it has fewer)."""
    seed: int = 0
    """With the scene id, the seed of each room's choice."""


def stratified_voxels(
    semantic: Tensor, valid: Tensor, per_class: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Per non-void class of ``semantic`` ``(S, S, S)`` within ``valid``, ``min(per_class,
    count)`` of its voxels drawn without replacement, in class order.

    Returns ``(P, 3)`` int64 voxel indices and ``(P,)`` float64 weights: how many of the room's
    voxels each chosen one stands for (``count / chosen`` of its class), with which scores on
    the sample estimate scores on every voxel of the room.
    """
    labels = torch.where(valid, semantic.long(), VOID)
    chosen, weights = [], []
    for c in labels.unique().tolist():
        if c == VOID:
            continue
        voxels = (labels == c).nonzero()  # (n, 3)
        count = len(voxels)
        if count > per_class:
            voxels = voxels[torch.from_numpy(rng.choice(count, per_class, replace=False))]
        chosen.append(voxels)
        weights.append(torch.full((len(voxels),), count / len(voxels), dtype=torch.float64))
    if not chosen:
        return torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    return torch.cat(chosen), torch.cat(weights)


def box_voxels(boxes: Tensor, valid: Tensor) -> list[Tensor]:
    """Per box ``(cx, cy, cz, w, l, h, yaw)`` in voxel coordinates (voxel ``i`` covers
    ``[i, i + 1]``), the ``(M_n, 3)`` int64 indices of the ``valid`` ``(S, S, S)`` voxels whose
    centre lies inside it or on its surface."""
    size = valid.shape
    found = []
    for box in boxes.double().numpy().reshape(-1, 7):
        corners = box_corners(box[None])[0]  # (8, 3): the rotated box's axis-aligned hull
        lo = np.clip(np.floor(corners.min(0)).astype(int), 0, size)
        hi = np.clip(np.ceil(corners.max(0)).astype(int), 0, size)
        grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)),
                           indexing="ij")  # fmt: skip
        candidates = np.stack(grid, -1).reshape(-1, 3)
        inside = points_in_boxes(candidates + 0.5, box[None])[0]
        voxels = torch.from_numpy(candidates[inside]).long()
        found.append(voxels[valid[voxels[:, 0], voxels[:, 1], voxels[:, 2]]])
    return found


@dataclass
class ProbeRooms:
    """Rooms of one split, held in memory, with the voxels each probe reads.

    ``rgba`` ``(R, 4, S, S, S)``, ``valid`` ``(R, S, S, S)`` bool and ``semantic``
    ``(R, S, S, S)`` uint8 as :class:`GridDataset` serves them; per room ``points`` ``(P_r, 3)``
    (semantic training voxels) and their ``point_weights`` ``(P_r,)``
    (:func:`stratified_voxels`), ``boxes`` ``(N_r, 7)`` (voxel coordinates), ``box_labels``
    ``(N_r,)`` and ``box_voxels`` (``N_r`` tensors ``(M, 3)``), boxes without a voxel removed.
    """

    store_url: str
    scene_ids: list[str]
    alpha_step: float | None
    rgba: Tensor
    valid: Tensor
    semantic: Tensor
    points: list[Tensor]
    point_weights: list[Tensor]
    boxes: list[Tensor]
    box_labels: list[Tensor]
    box_voxels: list[list[Tensor]]
    class_names: list[str] | None
    _pooling: dict[tuple[int, tuple[int, ...]], Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.scene_ids)

    @property
    def size(self) -> int:
        return int(self.rgba.shape[-1])

    def labelled(self, room: int) -> Tensor:
        """``(L, 3)`` int64 indices of every valid, non-void voxel of room ``room``."""
        return ((self.semantic[room] != VOID) & self.valid[room]).nonzero()

    def pooling(self, room: int, cells: Sequence[int]) -> Tensor:
        """Room ``room``'s box :func:`pooling_matrix` for maps of ``cells`` (computed once)."""
        key = (room, tuple(int(n) for n in cells))
        if key not in self._pooling:
            self._pooling[key] = pooling_matrix(self.box_voxels[room], self.size, key[1])
        return self._pooling[key]


def _class_names(store: GridStore, scene_ids: Sequence[str]) -> list[str] | None:
    names = {tuple(store.scene_attrs(s).get("semantic_classes") or ()) for s in scene_ids}
    names.discard(())
    if len(names) > 1:
        raise ValueError(f"{store.url}: semantic_classes differ between scenes: "
                         f"{sorted(names)[:2]}")  # fmt: skip
    return list(names.pop()) if names else None


def load_rooms(
    store_url: str,
    scene_ids: Sequence[str],
    size: int,
    alpha_step: float | None = None,
    sampling: SamplingConfig | None = None,
) -> ProbeRooms:
    """Read ``scene_ids`` at ``size^3`` (alpha re-expressed for ``alpha_step``, see
    :class:`GridDataset`) and choose their probe voxels. Every scene must store semantic
    labels and boxes."""
    sampling = sampling or SamplingConfig()
    if not scene_ids:
        raise ValueError(f"{store_url}: no scenes to probe")
    dataset = GridDataset(store_url, list(scene_ids), size=size, alpha_step=alpha_step)
    samples = dataset.__getitems__(list(range(len(dataset))))
    for key, what in (("semantic", "semantic labels"), ("boxes", "boxes")):
        missing = [s["scene_id"] for s in samples if key not in s]
        if missing:
            raise ValueError(f"{store_url}: scene(s) {missing[:4]} store no {what}; the probes "
                             "need a labelled store")  # fmt: skip
    batch = collate_grids(samples)
    points, weights, voxel_sets, boxes, labels = [], [], [], [], []
    for r, scene in enumerate(scene_ids):
        rng = np.random.default_rng([sampling.seed, zlib.crc32(scene.encode())])
        chosen, weight = stratified_voxels(batch["semantic"][r], batch["valid"][r],
                                           sampling.per_class, rng)  # fmt: skip
        points.append(chosen)
        weights.append(weight)
        sets = box_voxels(batch["boxes"][r], batch["valid"][r])
        keep = torch.tensor([len(v) > 0 for v in sets], dtype=torch.bool)
        if not keep.all():
            logger.warning("%s: %d box(es) hold no valid voxel centre; left out",
                           scene, int((~keep).sum()))  # fmt: skip
        voxel_sets.append([v for v, k in zip(sets, keep.tolist(), strict=True) if k])
        boxes.append(batch["boxes"][r][keep])
        labels.append(batch["box_labels"][r][keep])
    return ProbeRooms(
        store_url=str(store_url), scene_ids=list(scene_ids), alpha_step=alpha_step,
        rgba=batch["rgba"], valid=batch["valid"], semantic=batch["semantic"], points=points,
        point_weights=weights, boxes=boxes, box_labels=labels, box_voxels=voxel_sets,
        class_names=_class_names(GridStore(store_url, mode="r"), scene_ids),
    )  # fmt: skip

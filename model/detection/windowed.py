"""Detection over a room larger than the detector's cube (:mod:`model.inference.windows`).

Each ``S^3`` window is detected on its own (``run``: the task's forward, loss and decoding,
or inference alone); a window keeps the detections whose centre lies in its core, shifted
into room coordinates, and rotated NMS at the detector's threshold merges the windows'
lists (an object cut by a window face can still be found by two neighbours with centres on
either side of a cut). The ground truth a window is scored against is the room's boxes
whose centre lies inside it, as :class:`grid_store.dataset.GridDataset` crops them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from model.detection.geometry import rotated_nms
from model.detection.inference import Detections
from model.inference.windows import Window, batched, room_windows

WindowRun = Callable[
    [Tensor, Tensor, list[Tensor] | None, list[Tensor] | None],
    tuple[list[Detections], dict[str, Tensor] | None],
]
"""``(rgba (n, 4, S, S, S), valid (n, S, S, S), boxes, labels) -> (detections per window,
loss terms averaged over the n windows or None)``; ``boxes`` / ``labels``: one ``(N_i, 7)``
/ ``(N_i,)`` per window in its own voxel coordinates, or ``None`` at inference."""


def window_ground_truth(
    boxes: Tensor, labels: Tensor | None, window: Window, size: int
) -> tuple[Tensor, Tensor | None]:
    """The room's boxes ``(N, 7)`` (and labels) whose centre lies in ``window``, in its
    coordinates."""
    start = boxes.new_tensor(window.start)
    centres = boxes[:, :3]
    keep = ((centres >= start) & (centres < start + size)).all(dim=1)
    shifted = boxes[keep].clone()
    shifted[:, :3] -= start
    return shifted, None if labels is None else labels[keep]


@torch.no_grad()
def detect_in_windows(
    run: WindowRun,
    rgba: Tensor,
    valid: Tensor,
    extent: tuple[int, int, int],
    size: int,
    overlap: int,
    nms_thresh: float,
    top_n: int,
    boxes: Tensor | None = None,
    labels: Tensor | None = None,
    window_batch: int = 4,
) -> tuple[Detections, dict[str, Tensor] | None]:
    """One room's detections in its voxel coordinates, best first, and the loss terms
    averaged over its windows (``None`` without ``boxes``).

    Args:
        rgba: ``(4, X, Y, Z)`` the padded room; ``valid`` ``(X, Y, Z)`` its real region,
            whose size is ``extent``.
        boxes: ``(N, 7)`` the room's boxes in its voxel coordinates (``labels`` ``(N,)``).
    """
    found_boxes, found_scores, found_labels = [], [], []
    sums: dict[str, Tensor] = {}
    windows = room_windows(extent, size, overlap)
    for group in batched(windows, window_batch):
        regions = [w.slices(size) for w in group]
        crops = torch.stack([rgba[(slice(None), *r)] for r in regions])  # (n, 4, S, S, S)
        crop_valid = torch.stack([valid[r] for r in regions])  # (n, S, S, S)
        truth = ([window_ground_truth(boxes, labels, w, size) for w in group]
                 if boxes is not None else None)  # fmt: skip
        detections, terms = run(
            crops, crop_valid, [t[0] for t in truth] if truth else None,
            [t[1] for t in truth] if truth and labels is not None else None,
        )  # fmt: skip
        for name, value in (terms or {}).items():
            sums[name] = sums.get(name, 0.0) + value.detach() * len(group)
        for window, found in zip(group, detections, strict=True):
            room_boxes = found.boxes.clone()
            room_boxes[:, :3] += room_boxes.new_tensor(window.start)
            keep = window.in_core(room_boxes[:, :3])
            found_boxes.append(room_boxes[keep])
            found_scores.append(found.scores[keep])
            found_labels.append(found.labels[keep])
    all_boxes = torch.cat(found_boxes)
    all_scores = torch.cat(found_scores)
    kept = rotated_nms(all_boxes, all_scores, nms_thresh)[:top_n]
    merged = Detections(all_boxes[kept], all_scores[kept], torch.cat(found_labels)[kept])
    means = {name: total / len(windows) for name, total in sums.items()} if sums else None
    return merged, means


__all__ = ["WindowRun", "detect_in_windows", "window_ground_truth"]

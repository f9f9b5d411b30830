"""Detection metrics for yawed 3D boxes: VOC average precision and proposal recall.

The protocol is NeRF-RPN's (``eval.py``), with the 3D rotated IoU of
:func:`model.detection.geometry.pairwise_rotated_iou`:

**Average precision** (``ap25``, ``ap50``, ...): class-agnostic. The detections of all scenes
are ranked together by score; walking down the ranking, each one is matched with the VOC
rule of :func:`match_detections` against the ground truth (GT) of its own scene, giving a
precision/recall curve whose VOC all-point area is the AP (:func:`average_precision`).
Every GT box of every scene counts in the recall's denominator, and the detections of a
scene without GT are all false positives. A high-scoring false positive in one scene so
lowers the precision of every detection ranked below it, in any scene. All detections
passed to :meth:`DetectionEvaluator.add` take part: apply any score threshold or top-k
before adding. NeRF-RPN selects checkpoints by ``ap50``.

**Recall** (``recall25@300``, ``recall50@1000``, ...): for each scene the top ``k``
proposals by score are assigned one-to-one to the GT boxes by :func:`gt_coverage` (greedy
on IoU, independent of score order); a GT box is recalled at threshold ``t`` when its
assigned IoU is ``>= t``. Counts are pooled over scenes: recall = recalled GT / all GT.
(NeRF-RPN's code leaves the GT of scenes without any proposal out of the denominator; here
every GT box counts, so a scene with no proposals lowers the recall, as it should.)

**Average recall** (``average_recall``): the mean of the recall over the IoU thresholds
0.25, 0.30, ..., 0.95 (:data:`AVERAGE_RECALL_THRESHOLDS`) at the *largest* top-k of
``recall_top`` (2500 by default).

**Per-class AP** (``per_class_ap50``, ...): when the evaluator has class names and labels are
passed, a class's AP is computed among the detections labelled with that class against the
GT of that class only (the same VOC matching, restricted to the class), ranked over all
scenes; a class without any GT box has AP ``None``.

Threshold names are ``round(100 * t)``: ``ap25`` for 0.25, ``recall50@1000`` for 0.5 and
top 1000. Every AP and recall is ``None`` when there is no GT at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from model.detection.geometry import pairwise_rotated_iou

AVERAGE_RECALL_THRESHOLDS: tuple[float, ...] = tuple(round(0.25 + 0.05 * i, 2) for i in range(15))
"""IoU thresholds 0.25:0.05:0.95 of the average recall (15 values)."""

IouFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(M, 7)`` predictions, ``(N, 7)`` GT -> ``(M, N)`` IoU."""


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _name(threshold: float) -> str:
    return str(round(100 * threshold))


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP of a precision/recall curve: ``(D,)``, ``(D,)`` -> float.

    ``recall`` and ``precision`` are the values after each of the ``D`` ranked detections
    (recall non-decreasing). The curve is extended with ``(0, 0)`` in front and ``(1, 0)``
    at the end, the precision is replaced by its envelope (the running maximum from the
    right, so it is non-increasing), and the AP is the sum over the points where the recall
    changes of ``(r[i + 1] - r[i]) * p_envelope[i + 1]``. No detections give 0.
    """
    recall = _to_numpy(recall).astype(np.float64).reshape(-1)
    precision = _to_numpy(precision).astype(np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(
            f"recall {recall.shape} and precision {precision.shape} must have the same shape"
        )
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def match_detections(iou: np.ndarray | torch.Tensor, threshold: float) -> np.ndarray:
    """VOC matching of detections to GT: ``(M, N)`` IoU -> ``(M,)`` bool true positives.

    The rows must be in decreasing score order. Exactly the PASCAL VOC rule (``voc_eval``,
    also NeRF-RPN's AP): each detection looks at its best GT, the argmax of its row over
    *all* ``N`` GT boxes (the first on ties), taken or not. It is a true positive when that
    IoU is strictly above ``threshold`` and the GT is not yet taken, which takes it;
    otherwise it is a false positive: a second detection on a taken GT is a false positive
    even when another, free GT also overlaps it by more than ``threshold``. ``N == 0``
    makes every detection a false positive.
    """
    iou = _to_numpy(iou).astype(np.float64, copy=False)
    if iou.ndim != 2:
        raise ValueError(f"iou must be (M, N), got {iou.shape}")
    m, n = iou.shape
    tp = np.zeros(m, dtype=bool)
    if m == 0 or n == 0:
        return tp
    best = iou.argmax(1)
    qualifies = np.nonzero(iou[np.arange(m), best] > threshold)[0]
    # a GT goes to the first qualifying detection whose best GT it is; later ones are FPs
    _, first = np.unique(best[qualifies], return_index=True)
    tp[qualifies[first]] = True
    return tp


def gt_coverage(iou: np.ndarray | torch.Tensor) -> np.ndarray:
    """One-to-one coverage of GT by proposals: ``(M, N)`` IoU -> ``(N,)`` IoU per GT box.

    Detectron's proposal-recall assignment, as in NeRF-RPN: repeatedly take the pair with
    the largest IoU among unassigned proposals and GT boxes (first in row-major order on
    ties), give the GT that IoU, and retire both. GT boxes left without a proposal with
    positive IoU get 0. Score order does not matter; pass the top-k rows to get recall@k.
    """
    iou = _to_numpy(iou).astype(np.float64)
    if iou.ndim != 2:
        raise ValueError(f"iou must be (M, N), got {iou.shape}")
    cover = np.zeros(iou.shape[1])
    iou = iou[(iou > 0).any(1)]  # proposals touching no GT never matter
    n = iou.shape[1]
    for _ in range(min(iou.shape)):
        i, j = divmod(int(iou.argmax()), n)
        if not iou[i, j] > 0:
            break
        cover[j] = iou[i, j]
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return cover


def _ap_of_ranking(tp: np.ndarray, num_gt: int) -> float | None:
    """``(D,)`` true-positive flags in ranking order, GT count -> VOC AP (None: no GT)."""
    if num_gt == 0:
        return None
    tps = np.cumsum(tp)
    precision = tps / np.arange(1, len(tp) + 1)
    return average_precision(tps / num_gt, precision)


@dataclass
class _Scene:
    """What one scene leaves behind (detections in decreasing score order)."""

    scores: np.ndarray  # (M,) float64, descending
    tp: np.ndarray  # (T, M) bool: class-agnostic VOC match per AP threshold
    num_gt: int
    recalled: np.ndarray  # (K, R) int64: GT with coverage >= recall threshold r in top k
    labels: np.ndarray | None = None  # (M,) int64 class indices
    tp_class: np.ndarray | None = None  # (T, M) bool: VOC match within the class
    gt_per_class: np.ndarray | None = None  # (C,) int64


class DetectionEvaluator:
    """Accumulates detections scene by scene; :meth:`compute` gives the metrics above.

    Args:
        iou_thresholds: IoU thresholds of the AP and recall keys (add 0.75 for ``ap75``).
        recall_top: the per-scene top-k proposal counts of the recall keys; the largest is
            the one of ``average_recall``.
        classes: class names; class ``i`` is label ``i``. With them and labels passed to
            every :meth:`add`, :meth:`compute` adds per-class APs.
        iou_fn: ``(M, 7)``, ``(N, 7)`` float64 tensors -> ``(M, N)`` IoU.

    Memory per scene is ``O(M)`` for ``M`` detections (scores and match flags) plus a small
    table of recall counts; boxes and IoU matrices are not kept.

    Distributed evaluation: every rank fills its own evaluator, then e.g.
    ``torch.distributed.all_gather_object(states, evaluator.state_dict())`` and on one rank
    ``total = DetectionEvaluator.from_state_dict(states[0])`` followed by
    ``total.merge(s)`` for the other states. :meth:`merge` takes an evaluator or a state
    dict; the result does not depend on the order of merges (scenes are ranked by
    ``scene_id`` on score ties). A scene id may appear only once overall (drop the padding
    duplicates of a ``DistributedSampler``).
    """

    def __init__(
        self,
        iou_thresholds: Sequence[float] = (0.25, 0.5),
        recall_top: Sequence[int] = (300, 1000, 2500),
        classes: Sequence[str] | None = None,
        iou_fn: IouFn = pairwise_rotated_iou,
    ) -> None:
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.recall_top = tuple(int(k) for k in recall_top)
        self.classes = None if classes is None else tuple(str(c) for c in classes)
        self.iou_fn = iou_fn
        if not self.iou_thresholds or not all(0 < t <= 1 for t in self.iou_thresholds):
            raise ValueError(f"iou_thresholds must be in (0, 1], got {self.iou_thresholds}")
        if len({_name(t) for t in self.iou_thresholds}) != len(self.iou_thresholds):
            raise ValueError(f"iou_thresholds {self.iou_thresholds} give clashing names")
        if not self.recall_top or min(self.recall_top) < 1:
            raise ValueError(f"recall_top must be positive counts, got {self.recall_top}")
        if len(set(self.recall_top)) != len(self.recall_top):
            raise ValueError(f"recall_top has duplicates: {self.recall_top}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes}")
        # recall thresholds: those of the keys and those of the average recall
        self._recall_thresholds = np.array(
            sorted({round(t, 6) for t in self.iou_thresholds + AVERAGE_RECALL_THRESHOLDS})
        )
        self._scenes: dict[str, _Scene] = {}
        self._labelled: bool | None = None  # None until the first scene

    # ------------------------------------------------------------------ accumulation

    def __len__(self) -> int:
        return len(self._scenes)

    def add(
        self,
        scene_id: str,
        pred_boxes: torch.Tensor | np.ndarray,
        pred_scores: torch.Tensor | np.ndarray,
        gt_boxes: torch.Tensor | np.ndarray,
        pred_labels: torch.Tensor | np.ndarray | None = None,
        gt_labels: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Evaluate one scene: ``(M, 7)`` boxes with ``(M,)`` scores against ``(N, 7)`` GT.

        ``M`` or ``N`` may be 0 (an empty array of any shape counts as no boxes). Labels,
        ``(M,)`` and ``(N,)`` integer class indices, are used only when the evaluator has
        ``classes``; then either every scene passes both or none does. The IoU matrix is
        computed once here with ``iou_fn`` (in float64, on the device of ``pred_boxes``).
        """
        if not isinstance(scene_id, str):
            raise TypeError(f"scene_id must be a str, got {type(scene_id).__name__}")
        if scene_id in self._scenes:
            raise ValueError(f"scene {scene_id!r} was already added")
        pred = _boxes(pred_boxes, "pred_boxes")
        gt = _boxes(gt_boxes, "gt_boxes").to(pred.device)
        m, n = pred.shape[0], gt.shape[0]
        scores = _to_numpy(pred_scores).astype(np.float64).reshape(-1)
        if scores.shape != (m,):
            raise ValueError(f"pred_scores {scores.shape} must be ({m},) for {m} boxes")

        labels = gt_lab = None
        if self.classes is not None:
            if (pred_labels is None) != (gt_labels is None):
                raise ValueError("pass both pred_labels and gt_labels, or neither")
            labelled = pred_labels is not None
            if self._labelled is not None and labelled != self._labelled:
                raise ValueError("either every scene passes labels or none does")
            if labelled:
                labels = self._labels(pred_labels, m, "pred_labels")
                gt_lab = self._labels(gt_labels, n, "gt_labels")

        order = np.argsort(-scores, kind="stable")
        scores = scores[order]
        iou = self._iou(pred, gt)[order]  # (M, N), rows by decreasing score
        tp = np.stack([match_detections(iou, t) for t in self.iou_thresholds])  # (T, M)

        recalled = np.zeros((len(self.recall_top), len(self._recall_thresholds)), np.int64)
        for ki, k in enumerate(self.recall_top):
            cover = gt_coverage(iou[:k])  # (N,)
            recalled[ki] = (cover[None] >= self._recall_thresholds[:, None]).sum(1)

        scene = _Scene(scores=scores, tp=tp, num_gt=n, recalled=recalled)
        if labels is not None and gt_lab is not None and self.classes is not None:
            labels = labels[order]
            tp_class = np.zeros_like(tp)
            for c in np.union1d(labels, gt_lab):
                rows, cols = labels == c, gt_lab == c
                sub = iou[rows][:, cols]
                for ti, t in enumerate(self.iou_thresholds):
                    tp_class[ti, rows] = match_detections(sub, t)
            scene.labels = labels
            scene.tp_class = tp_class
            scene.gt_per_class = np.bincount(gt_lab, minlength=len(self.classes))
        self._scenes[scene_id] = scene
        if self.classes is not None:
            self._labelled = labels is not None

    def _labels(self, x: Any, count: int, name: str) -> np.ndarray:
        assert self.classes is not None
        lab = _to_numpy(x).reshape(-1)
        if lab.size and not np.issubdtype(lab.dtype, np.integer):
            if not np.all(lab == np.round(lab)):
                raise ValueError(f"{name} must be integer class indices")
        lab = lab.astype(np.int64)
        if lab.shape != (count,):
            raise ValueError(f"{name} {lab.shape} must be ({count},)")
        if lab.size and (lab.min() < 0 or lab.max() >= len(self.classes)):
            raise ValueError(f"{name} must be in [0, {len(self.classes)}), got {lab}")
        return lab

    def _iou(self, pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
        m, n = pred.shape[0], gt.shape[0]
        if m == 0 or n == 0:
            return np.zeros((m, n))
        iou = _to_numpy(self.iou_fn(pred, gt)).astype(np.float64)
        if iou.shape != (m, n):
            raise ValueError(f"iou_fn gave {iou.shape}, expected ({m}, {n})")
        return iou

    # ------------------------------------------------------------------ results

    def compute(self) -> dict[str, Any]:
        """The metrics of all scenes added (and merged) so far.

        Keys: ``ap{t}`` per IoU threshold; ``recall{t}@{k}`` per IoU threshold and top-k;
        ``average_recall`` (IoU 0.25:0.05:0.95 at the largest top-k); ``num_scenes``,
        ``num_gt``, ``num_detections`` (ints); with ``classes`` and labels,
        ``per_class_ap{t}``: class name -> AP or ``None`` (no GT of that class). APs and
        recalls are floats, ``None`` when there is no GT box at all.
        """
        scenes = [self._scenes[key] for key in sorted(self._scenes)]
        num_gt = sum(s.num_gt for s in scenes)
        scores = np.concatenate([s.scores for s in scenes]) if scenes else np.zeros(0)
        rank = np.argsort(-scores, kind="stable")
        out: dict[str, Any] = {}

        def ranked(field: str, ti: int) -> np.ndarray:
            flags = [getattr(s, field)[ti] for s in scenes]
            return np.concatenate(flags)[rank] if scenes else np.zeros(0, dtype=bool)

        for ti, t in enumerate(self.iou_thresholds):
            out[f"ap{_name(t)}"] = _ap_of_ranking(ranked("tp", ti), num_gt)

        recalled = sum(
            (s.recalled for s in scenes),
            np.zeros((len(self.recall_top), len(self._recall_thresholds)), np.int64),
        )
        column = {round(t, 6): i for i, t in enumerate(self._recall_thresholds)}
        for t in self.iou_thresholds:
            for ki, k in enumerate(self.recall_top):
                hits = recalled[ki, column[round(t, 6)]]
                out[f"recall{_name(t)}@{k}"] = float(hits / num_gt) if num_gt else None
        top = int(np.argmax(self.recall_top))
        ar_cols = [column[round(t, 6)] for t in AVERAGE_RECALL_THRESHOLDS]
        out["average_recall"] = float(recalled[top, ar_cols].mean() / num_gt) if num_gt else None

        out["num_scenes"] = len(scenes)
        out["num_gt"] = int(num_gt)
        out["num_detections"] = int(len(scores))

        if self.classes is not None and self._labelled is not False:
            labels = (
                np.concatenate([s.labels for s in scenes])[rank]
                if scenes
                else np.zeros(0, np.int64)
            )
            gt_per_class = sum(
                (s.gt_per_class for s in scenes), np.zeros(len(self.classes), np.int64)
            )
            for ti, t in enumerate(self.iou_thresholds):
                tp = ranked("tp_class", ti)
                out[f"per_class_ap{_name(t)}"] = {
                    name: _ap_of_ranking(tp[labels == c], int(gt_per_class[c]))
                    for c, name in enumerate(self.classes)
                }
        return out

    # ------------------------------------------------------------------ combining

    def _config(self) -> dict[str, Any]:
        return {
            "iou_thresholds": list(self.iou_thresholds),
            "recall_top": list(self.recall_top),
            "classes": None if self.classes is None else list(self.classes),
        }

    def state_dict(self) -> dict[str, Any]:
        """A picklable snapshot (plain lists, ints and numpy arrays; no boxes, no iou_fn):
        ``{"config": {...}, "labelled": bool | None, "scenes": {scene_id: {field: ...}}}``."""
        return {
            "config": self._config(),
            "labelled": self._labelled,
            "scenes": {
                key: {f.name: getattr(s, f.name) for f in fields(_Scene)}
                for key, s in self._scenes.items()
            },
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], iou_fn: IouFn = pairwise_rotated_iou
    ) -> DetectionEvaluator:
        """A new evaluator with the configuration and scenes of ``state``."""
        config = state["config"]
        out = cls(config["iou_thresholds"], config["recall_top"], config["classes"], iou_fn)
        return out.merge(state)

    def merge(self, other: DetectionEvaluator | Mapping[str, Any]) -> DetectionEvaluator:
        """Add the scenes of another evaluator or of a :meth:`state_dict`; returns ``self``.

        The configurations (thresholds, top-k, classes) must be equal, scene ids disjoint,
        and with classes both sides must agree on whether labels were passed.
        """
        state = other.state_dict() if isinstance(other, DetectionEvaluator) else other
        if state["config"] != self._config():
            raise ValueError(f"cannot merge {state['config']} into {self._config()}")
        clash = sorted(set(state["scenes"]) & set(self._scenes))
        if clash:
            raise ValueError(f"scenes in both evaluators: {clash[:5]}")
        labelled = state["labelled"]
        if labelled is not None and self._labelled is not None and labelled != self._labelled:
            raise ValueError("one evaluator has labels and the other has not")
        for key, scene in state["scenes"].items():
            self._scenes[key] = _Scene(**scene)
        if self._labelled is None:
            self._labelled = labelled
        return self


def _boxes(x: Any, name: str) -> torch.Tensor:
    """Boxes as a float64 tensor ``(K, 7)`` (on the tensor's device; numpy on the CPU)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().to(torch.float64)
    if t.numel() == 0:
        return t.reshape(0, 7)
    if t.ndim != 2 or t.shape[1] != 7:
        raise ValueError(f"{name} must be (K, 7) (cx, cy, cz, w, l, h, yaw), got {tuple(t.shape)}")
    return t


__all__ = [
    "AVERAGE_RECALL_THRESHOLDS",
    "DetectionEvaluator",
    "average_precision",
    "gt_coverage",
    "match_detections",
]

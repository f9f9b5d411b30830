"""Semantic voxel labelling: class weights from label frequencies, and mIoU / mAcc / allAcc.

Labels are ``0 .. K-1`` with 0 = void (free space or unlabelled), as in NeRF-MAE's voxel
semantics (facts section 6.2). Void voxels and padding are never scored.

Metrics are accumulated in one confusion matrix over the whole validation set (rows: true
class, columns: predicted class, void targets left out), then:

- **IoU** of class c: ``TP / (TP + FP + FN)``; **accuracy** of class c: ``TP / (TP + FN)``.
- **mIoU** and **mAcc**: their means over the classes *present* in the targets (1..K-1
  with at least one voxel). The reference averages over all classes 1..K-1, where a class
  absent from a validation set scores 0 and drags the mean down; here it is left out, and
  which classes were averaged is reported with the figures.
- **allAcc**: correctly labelled voxels over all scored voxels (a prediction of void on a
  labelled voxel is wrong).

Class weights for the cross-entropy: the reference's weight files were never published, so
they are computed from the training split's label counts with ENet's bounded inverse log
frequency ``w_c = 1 / ln(1.02 + p_c)`` (Paszke et al. 2016): rare classes weigh more, but at
most ``1 / ln(1.02) = 50.5`` times, where inverse frequency would give the walls a weight
thousands of times below a lamp's and make training unstable. Void and classes absent from
the training split get weight 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

VOID = 0
"""The label that means "no class": ignored by the loss and the metrics."""


def label_counts(
    labels: torch.Tensor, num_classes: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``(K,)`` int64 voxel count per class of ``labels`` (any shape), within ``valid``."""
    labels = labels.reshape(-1).long()
    if valid is not None:
        labels = labels[valid.reshape(-1)]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}], "
            f"found {int(labels.min())}..{int(labels.max())}"
        )
    return torch.bincount(labels, minlength=num_classes)


def class_weights(counts: torch.Tensor, c: float = 1.02) -> torch.Tensor:
    """``(K,)`` float32 cross-entropy weights from per-class voxel counts (see module doc).

    ``p_c`` is the class's share of the labelled (non-void) voxels; void and classes with no
    voxel get 0.
    """
    counts = counts.double()
    labelled = counts.clone()
    labelled[VOID] = 0
    total = labelled.sum()
    if total == 0:
        raise ValueError("class_weights: the training split has no labelled (non-void) voxel")
    weights = 1.0 / torch.log(c + labelled / total)
    weights[labelled == 0] = 0.0
    return weights.float()


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``(K, K)`` int64 counts, ``[true, predicted]``, over voxels with a non-void target.

    Args:
        pred: predicted labels, any shape, values in ``[0, K)``.
        target: true labels, the same shape.
        valid: optional bool mask of the same shape (False: padding, never scored).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    scored = target != VOID
    if valid is not None:
        scored &= valid
    t = target[scored].long()
    p = pred[scored].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def scores_from_confusion(confusion: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """mIoU, mAcc, allAcc and per-class IoU / accuracy from a ``(K, K)`` confusion matrix.

    Returns a JSON-ready dict; ``miou`` / ``macc`` are NaN when no class is present.
    """
    confusion = confusion.double()
    k = confusion.shape[0]
    tp = confusion.diagonal()
    true = confusion.sum(1)  # voxels of each class
    predicted = confusion.sum(0)
    present = [c for c in range(1, k) if true[c] > 0]
    names = class_names or [str(c) for c in range(k)]
    iou = {names[c]: float(tp[c] / (true[c] + predicted[c] - tp[c])) for c in present}
    acc = {names[c]: float(tp[c] / true[c]) for c in present}
    total = float(true.sum())
    return {
        "miou": sum(iou.values()) / len(iou) if iou else math.nan,
        "macc": sum(acc.values()) / len(acc) if acc else math.nan,
        "allacc": float(tp.sum()) / total if total else math.nan,
        "per_class_iou": iou,
        "per_class_acc": acc,
        "classes_present": [names[c] for c in present],
        "voxels": int(total),
    }


@dataclass
class SemanticMetrics:
    """Accumulates one confusion matrix over batches; :meth:`compute` gives the scores."""

    num_classes: int
    class_names: list[str] | None = None
    confusion: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """``logits`` ``(B, K, X, Y, Z)``, ``target`` ``(B, X, Y, Z)``, ``valid`` likewise."""
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes, the metric {self.num_classes}"
            )
        pred = logits.argmax(1)
        self.confusion += confusion_matrix(
            pred.cpu(), target.cpu(), self.num_classes, None if valid is None else valid.cpu()
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"confusion": self.confusion.clone()}

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        """Add another accumulator's confusion counts (another rank's share)."""
        self.confusion += state["confusion"].to(self.confusion.device)

    def compute(self) -> dict:
        return scores_from_confusion(self.confusion, self.class_names)

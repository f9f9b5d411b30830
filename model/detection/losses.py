"""The FCOS detector's losses (facts section 6.1): sigmoid focal loss on objectness (or on
each class's logit, one-hot, with ``num_classes > 1``), the
rotated 3D IoU loss weighted by centerness, and centerness BCE.

``total = focal / num_pos + reg_weight * sum(c_i (1 - IoU_i)) / sum(c_i) + BCE(ctr) / num_pos``
with ``c_i`` the centerness targets of the positives. Only locations outside the padding
are scored. ``num_pos`` is this micro-batch's (clamped at 1), not reduced over ranks as
the reference does: with a rank's batch of several rooms the difference is noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.detection.geometry import decode_obb, rotated_iou
from model.detection.targets import FCOSTargets, LevelLayout
from model.networks.detector import HeadOutput, flatten_levels

LOSS_TERMS = ("loss", "loss_cls", "loss_reg", "loss_ctr")


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Elementwise focal loss (Lin et al. 2017) of logits against 0/1 targets (same shape).

    ``-alpha_t (1 - p_t)^gamma log(p_t)`` with ``p_t = p`` at positives, ``1 - p`` at
    negatives, ``alpha_t = alpha`` at positives, ``1 - alpha`` at negatives (``alpha < 0``:
    no weighting), as torchvision's ``sigmoid_focal_loss(reduction="none")``.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def weighted_iou_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``sum(w (1 - IoU(pred, target))) / sum(w)`` of ``(P, 7)`` boxes, ``(P,)`` weights
    (0 with a gradient when there are no positives)."""
    if len(pred) == 0 or float(weight.sum()) <= 0:
        return pred.sum() * 0.0
    iou = rotated_iou(pred.float(), target.float())
    return (weight * (1 - iou)).sum() / weight.sum()


def decode_predictions(layout: LevelLayout, deltas: Tensor) -> Tensor:
    """``(P, 8)`` predicted deltas in stride units at ``layout`` rows -> ``(P, 7)`` boxes.

    ``layout`` here holds only the rows of the deltas (see :func:`select_layout`)."""
    scaled = torch.cat([deltas[:, :6] * layout.strides[:, None], deltas[:, 6:]], 1)
    return decode_obb(layout.locations, scaled)


def select_layout(layout: LevelLayout, index: Tensor) -> LevelLayout:
    """The rows ``index`` of a layout."""
    return LevelLayout(layout.locations[index], layout.strides[index], layout.levels[index])


def fcos_losses(
    output: HeadOutput,
    layout: LevelLayout,
    targets: FCOSTargets,
    boxes: list[Tensor],
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    reg_weight: float = 1.0,
) -> dict[str, Tensor]:
    """The loss terms of one batch (keys :data:`LOSS_TERMS`); ``boxes`` are the grids'
    ground truth ``(N_b, 7)`` in voxel coordinates, as given to the assignment."""
    logits = flatten_levels(output.logits).float()  # (B, L, K)
    deltas = flatten_levels(output.deltas).float()  # (B, L, 8)
    ctr_logits = flatten_levels(output.centerness)[..., 0].float()  # (B, L)
    scored = targets.location_valid
    positive = targets.matched >= 0
    num_pos = positive.sum().clamp(min=1).float()

    # one-hot over the K logits (K = 1: objectness); negatives are all-zero rows
    b_idx, l_idx = positive.nonzero(as_tuple=True)
    one_hot = torch.zeros_like(logits)
    one_hot[b_idx, l_idx, targets.classes[b_idx, l_idx]] = 1.0
    focal = sigmoid_focal_loss(logits[scored], one_hot[scored], focal_alpha, focal_gamma)
    loss_cls = focal.sum() / num_pos

    if len(b_idx):
        pred = decode_predictions(select_layout(layout, l_idx), deltas[b_idx, l_idx])
        gt = torch.stack([boxes[b][m].to(pred) for b, m in
                          zip(b_idx.tolist(), targets.matched[b_idx, l_idx].tolist(),
                              strict=True)])  # fmt: skip
        ctr_target = targets.centerness[b_idx, l_idx]
        loss_reg = weighted_iou_loss(pred, gt, ctr_target)
        loss_ctr = F.binary_cross_entropy_with_logits(
            ctr_logits[b_idx, l_idx], ctr_target, reduction="sum"
        ) / num_pos
    else:
        loss_reg = deltas.sum() * 0.0
        loss_ctr = ctr_logits.sum() * 0.0
    total = loss_cls + reg_weight * loss_reg + loss_ctr
    return {"loss": total, "loss_cls": loss_cls, "loss_reg": loss_reg, "loss_ctr": loss_ctr}


__all__ = [
    "LOSS_TERMS",
    "decode_predictions",
    "fcos_losses",
    "select_layout",
    "sigmoid_focal_loss",
    "weighted_iou_loss",
]

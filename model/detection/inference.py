"""From head outputs to boxes (facts section 6.1): per level, locations outside the padding
whose objectness probability (with classes: the best class's) exceeds ``pre_nms_thresh``,
scored ``sqrt(p_obj x p_ctr)``,
the best ``pre_nms_top_n`` of them decoded; then rotated NMS at ``nms_thresh`` over all
levels and the best ``post_nms_top_n`` kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.detection.geometry import rotated_nms
from model.detection.losses import decode_predictions, select_layout
from model.detection.targets import LevelLayout
from model.networks.detector import DetectorConfig, HeadOutput, flatten_levels


@dataclass
class Detections:
    """One grid's detections, best first: ``boxes`` ``(K, 7)`` voxel coordinates,
    ``scores`` ``(K,)`` and ``labels`` ``(K,)`` long (all 0 for a class-agnostic head)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


@torch.no_grad()
def detect(
    output: HeadOutput, layout: LevelLayout, location_valid: Tensor, config: DetectorConfig
) -> list[Detections]:
    """Detections of every grid of a batch; ``location_valid`` ``(B, L)`` bool."""
    # a location's class is its most probable one (class-agnostic NMS, as NeRF-RPN's)
    probs, labels = torch.sigmoid(flatten_levels(output.logits).float()).max(-1)  # (B, L)
    ctr = torch.sigmoid(flatten_levels(output.centerness)[..., 0].float())  # (B, L)
    deltas = flatten_levels(output.deltas).float()  # (B, L, 8)
    results = []
    for b in range(probs.shape[0]):
        boxes, scores, classes = [], [], []
        for level in range(len(output.logits)):
            keep = location_valid[b] & (layout.levels == level) & (probs[b] > config.pre_nms_thresh)
            index = keep.nonzero()[:, 0]
            score = (probs[b, index] * ctr[b, index]).sqrt()
            if len(index) > config.pre_nms_top_n:
                top = score.topk(config.pre_nms_top_n).indices
                index, score = index[top], score[top]
            boxes.append(decode_predictions(select_layout(layout, index), deltas[b, index]))
            scores.append(score)
            classes.append(labels[b, index])
        boxes_b, scores_b = torch.cat(boxes), torch.cat(scores)
        kept = rotated_nms(boxes_b, scores_b, config.nms_thresh)[: config.post_nms_top_n]
        results.append(Detections(boxes_b[kept], scores_b[kept], torch.cat(classes)[kept]))
    return results


__all__ = ["Detections", "detect"]

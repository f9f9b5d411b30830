"""The token probe: a voxel's class read linearly from the token it belongs to, with one linear
map per position of the voxel inside the token's patch.

The semantic probe (:mod:`.semantic`) reads every voxel with one linear map of features
interpolated at its centre. An encoder's finest stage holds one token per ``s^3`` patch (``s``
its stride), and whatever the token knows of its patch's voxels it holds in one vector: which
voxel of the patch is wall and which is a chair's leg is a different function of that vector
for each position in the patch. A network's decoder computes those functions; one map shared by
every voxel cannot. This probe is the linear decoder of a token (MAE's and SimMIM's per-token
linear head, here for classes): voxel ``v`` at offset ``o = v mod s`` in its patch scores
``W_o f(v) + b_o``, where ``f(v)`` concatenates, over the maps, the features of the cell that
contains ``v`` (no interpolation). Each of the ``s^3`` maps is its own multinomial logistic
regression; all share one L2 strength, chosen on held-out training rooms by the dense mIoU of
their combined predictions.

Training rows are every labelled valid voxel of the training rooms (``s^3`` maps need far more
rows than the semantic probe's stratified sample), each weighted by the inverse of its class's
count so that every class weighs the same in the loss, as the stratified sample makes them
weigh in :mod:`.semantic`. It is scored as the semantic probe is: every labelled valid voxel of
the test rooms, one confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from model.metrics.semantic import confusion_matrix
from model.probing.linear import (
    L2_GRID,
    Scorer,
    balanced_accuracy,
    choose_strength,
    fold_standardising,
    logistic_params,
    standardising_moments,
)
from model.probing.rooms import ProbeRooms


def finest_stride(maps: Sequence[Tensor], size: int) -> int:
    """The stride (voxels per cell edge) of the finest of the maps ``(C_i, D_i, H_i, W_i)`` of
    an ``size^3`` cube: the patch edge of its tokens."""
    cells = max(max(m.shape[1:]) for m in maps)
    if size % cells:
        raise ValueError(f"a map of {cells} cells a side does not tile a {size}^3 cube")
    return size // cells


def patch_offsets(points: Tensor, stride: int) -> Tensor:
    """``(P, 3)`` voxel indices -> ``(P,)`` int64 index of each voxel's position inside its
    ``stride^3`` patch, ``(i mod s) s^2 + (j mod s) s + (k mod s)``."""
    local = points.long() % stride
    return (local[:, 0] * stride + local[:, 1]) * stride + local[:, 2]


def token_rows(maps: Sequence[Tensor], points: Tensor, size: int) -> Tensor:
    """``(P, sum C_i)``: for each ``(P, 3)`` voxel, the features of the cell containing it in
    each map ``(C_i, D_i, H_i, W_i)`` of the ``size^3`` cube, concatenated."""
    points = points.long()
    rows = []
    for feature_map in maps:
        cell = [points[:, a] * feature_map.shape[1 + a] // size for a in range(3)]
        rows.append(feature_map[:, cell[0], cell[1], cell[2]].T.float())  # (P, C_i)
    return torch.cat(rows, 1)


def class_balanced_weights(labels: Tensor) -> Tensor:
    """``(n,)`` float64 row weights ``1 / count(label)``, scaled to mean 1: every class present
    weighs the same in total."""
    _, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].double()
    return weights * (len(labels) / weights.sum())


@dataclass
class TokenClassifier:
    """``s^3`` linear maps on raw token features: offset ``o`` scores class ``classes[k]`` by
    ``x @ weight[o, k] + bias[o, k]``; ``weight`` ``(O, K, C)``, ``bias`` ``(O, K)``."""

    weight: Tensor
    bias: Tensor
    classes: Tensor
    stride: int

    def predict(self, x: Tensor, offsets: Tensor) -> Tensor:
        """``(n, C)`` token features of voxels at ``(n,)`` offsets -> ``(n,)`` labels."""
        best = torch.zeros(len(x), dtype=torch.long)
        for o in offsets.unique().tolist():
            rows = offsets == o
            best[rows] = (x[rows].float() @ self.weight[o].T + self.bias[o]).argmax(1)
        return self.classes[best]


def fit_token_logistic(
    x: Tensor,
    y: Tensor,
    offsets: Tensor,
    groups: Tensor,
    stride: int,
    strengths: Sequence[float] = L2_GRID,
    max_iter: int = 50,
    score: Scorer | None = None,
    weight: Tensor | None = None,
) -> tuple[TokenClassifier, float]:
    """One multinomial logistic regression of labels ``y`` ``(n,)`` on features ``x`` ``(n, C)``
    per patch offset (``offsets`` ``(n,)`` in ``[0, stride^3)``), all on one standardisation
    and one L2 strength.

    The strength is chosen by :func:`~model.probing.linear.choose_strength`, as for
    :func:`~model.probing.linear.fit_logistic` (warm starts per offset), by ``score`` of the
    held-out rows' predictions gathered over every offset. ``weight`` ``(n,)`` weighs the rows
    in each loss (:func:`class_balanced_weights`). Every offset predicts among all labels
    present in ``y``.
    Returns the classifier and the chosen strength.
    """
    n = len(x)
    if n == 0 or any(len(t) != n for t in (y, offsets, groups)):
        raise ValueError(f"fit_token_logistic: {n} feature rows, {len(y)} labels, "
                         f"{len(offsets)} offsets, {len(groups)} groups")  # fmt: skip
    count = stride**3
    if offsets.min() < 0 or offsets.max() >= count:
        raise ValueError(f"fit_token_logistic: offsets outside [0, {count}) for stride {stride}")
    score = score or (lambda predicted, rows: balanced_accuracy(predicted, y[rows]))
    weight = torch.ones(n, dtype=torch.float64) if weight is None else weight
    x = x.float()
    mean, scale = standardising_moments(x)
    xs = (x - mean) / scale
    classes, target = y.unique(return_inverse=True)
    at = [(offsets == o).nonzero()[:, 0] for o in range(count)]
    zeros = torch.zeros(len(classes), x.shape[1] + 1)

    def fit(rows: Tensor, l2: float, starts: list[Tensor]) -> list[Tensor]:
        """Each offset's params fitted on its rows among ``rows`` (bool ``(n,)``)."""
        fitted = []
        for o, start in enumerate(starts):
            mine = at[o][rows[at[o]]]
            fitted.append(start if len(mine) == 0 else
                          logistic_params(xs[mine], target[mine], len(classes), l2, max_iter,
                                          start, weight[mine]))  # fmt: skip
        return fitted

    def predict(fitted: list[Tensor], rows: Tensor) -> Tensor:
        """The labels of ``rows`` (indices), each by its offset's params."""
        wanted = torch.zeros(n, dtype=torch.bool)
        wanted[rows] = True
        predicted = torch.zeros(n, dtype=torch.long)
        for o, params in enumerate(fitted):
            mine = at[o][wanted[at[o]]]
            predicted[mine] = (xs[mine] @ params[:, :-1].T + params[:, -1]).argmax(1)
        return classes[predicted[rows]]

    chosen, starts = choose_strength(strengths, groups, [zeros] * count, fit, predict, score)
    maps = [fold_standardising(p[:, :-1], p[:, -1], mean, scale)
            for p in fit(torch.ones(n, dtype=torch.bool), chosen, starts)]  # fmt: skip
    weights = torch.stack([m.weight for m in maps])
    biases = torch.stack([m.bias for m in maps])
    return TokenClassifier(weights, biases, classes, stride), chosen


def room_token_rows(
    maps: Sequence[Tensor], rooms: ProbeRooms, room: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Room ``room``'s every labelled valid voxel: token features ``(L, sum C_i)``, labels
    ``(L,)`` int64 and patch offsets ``(L,)`` for the maps' finest stride."""
    points = rooms.labelled(room)
    labels = rooms.semantic[room][points[:, 0], points[:, 1], points[:, 2]].long()
    offsets = patch_offsets(points, finest_stride(maps, rooms.size))
    return token_rows(maps, points, rooms.size), labels, offsets


def room_token_confusion(
    maps: Sequence[Tensor], probe: TokenClassifier, rooms: ProbeRooms, room: int, num_classes: int
) -> Tensor:
    """``(K, K)`` confusion ``[true, predicted]`` of the token probe over every labelled valid
    voxel of room ``room``."""
    stride = finest_stride(maps, rooms.size)
    if stride != probe.stride:
        raise ValueError(f"maps of stride {stride}, a probe fitted at stride {probe.stride}")
    x, target, offsets = room_token_rows(maps, rooms, room)
    return confusion_matrix(probe.predict(x, offsets), target, num_classes)

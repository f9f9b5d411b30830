"""What an MAE reconstructs where it is masked, against predictors that know no room.

A masked-autoencoder's loss says how well it fills masked blocks in overall; it does not say
*what* it fills in. On rooms most masked voxels are free space and much of the rest is the
room's shell, both guessable without looking: the loss can fall while the network learns
nothing about the objects a detector must find. :func:`masked_reconstruction` scores the
alpha an MAE predicts on the masked, valid voxels of labelled rooms separately for

- ``free``: voxels whose true alpha is at most the threshold,
- ``shell``: occupied voxels of a class that is not furniture (walls, floor, ceiling),
- ``furniture``: occupied voxels of a furniture class,

and beside it predictors that know nothing of objects: ``zero`` (everything is free space),
``prior`` (each voxel's mean alpha over the training rooms, :func:`position_prior`, which
knows where rooms keep their walls) and ``nearby`` (the mean alpha of the visible voxels
around the voxel, :func:`visible_neighbourhood_mean`: continuity, no shapes), and
``patch_mean`` (each voxel its own patch's true mean alpha: what an MAE trained on
patch-normalised targets is handed when its standardised prediction is mapped back to alpha,
so the fair floor for such a network). Per category:
mean squared alpha error and the share of voxels whose prediction lies on the same side of
alpha 0.5 as the truth. An MAE whose furniture scores are no better than these has not
learned objects, whatever its loss says.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from model.networks.mae import NeRFMAE, patch_moments
from model.probing.rooms import ProbeRooms

CATEGORIES = ("free", "shell", "furniture")
PREDICTORS = ("network", "zero", "prior", "nearby", "patch_mean")


def position_prior(rooms: ProbeRooms) -> Tensor:
    """``(S, S, S)`` mean alpha of each voxel over the valid voxels of ``rooms`` (0 where no
    room is valid)."""
    alpha = rooms.rgba[:, 3] * rooms.valid  # (R, S, S, S)
    return alpha.sum(0) / rooms.valid.sum(0).clamp_min(1)


def visible_neighbourhood_mean(alpha: Tensor, visible: Tensor, width: int) -> Tensor:
    """``(B, S, S, S)`` mean of ``alpha`` over the ``visible`` voxels of the ``width^3`` cube
    around each voxel (``width`` odd); 0 where that cube holds no visible voxel. The cube
    mean is three 1D means, one per axis."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"width: expected an odd number >= 1, got {width}")
    seen = visible.to(alpha.dtype)[:, None]  # (B, 1, S, S, S)
    total, count = alpha[:, None] * seen, seen
    half = width // 2
    # zero padding by hand: avg_pool3d refuses kernels wider than the grid itself
    passes = (
        ((width, 1, 1), (0, 0, 0, 0, half, half)),
        ((1, width, 1), (0, 0, half, half)),
        ((1, 1, width), (half, half)),
    )
    for kernel, pad in passes:
        total = F.avg_pool3d(F.pad(total, pad), kernel, stride=1)
        count = F.avg_pool3d(F.pad(count, pad), kernel, stride=1)
    return (total / count.clamp_min(1e-12) * (count > 0))[:, 0]


def voxel_categories(
    alpha: Tensor, semantic: Tensor, furniture: Sequence[int], threshold: float
) -> dict[str, Tensor]:
    """``alpha``, ``semantic`` ``(..., S, S, S)`` -> one bool mask per :data:`CATEGORIES`."""
    occupied = alpha > threshold
    is_furniture = torch.isin(semantic.long(), torch.tensor(list(furniture), dtype=torch.long))
    return {"free": ~occupied, "shell": occupied & ~is_furniture,
            "furniture": occupied & is_furniture}  # fmt: skip


@torch.no_grad()
def masked_reconstruction(
    network: NeRFMAE,
    rooms: ProbeRooms,
    prior: Tensor,
    furniture: Sequence[int],
    draws: int = 2,
    seed: int = 0,
    width: int = 17,
) -> dict[str, dict[str, dict[str, float]]]:
    """Score ``network``'s masked alpha on every room of ``rooms`` under ``draws`` random masks
    each (seeded, so every network sees the same masks), beside the ``zero``, ``prior``
    (``(S, S, S)``) and ``nearby`` (visible voxels within ``width^3``) predictors on the same
    voxels.

    Returns ``{category: {predictor: {"mse", "correct", "voxels"}}}`` pooled over voxels;
    ``correct`` is the share whose prediction and truth lie on the same side of alpha 0.5.
    A category no masked voxel falls
    in is absent.
    """
    network.eval()
    threshold = network.config.alpha_threshold
    generator = torch.Generator().manual_seed(seed)
    sums = {c: {p: [0.0, 0.0] for p in PREDICTORS} for c in CATEGORIES}
    counts = dict.fromkeys(CATEGORIES, 0)
    for room in range(len(rooms)):
        rgba = rooms.rgba[room : room + 1]  # (1, 4, S, S, S)
        valid = rooms.valid[room : room + 1]  # (1, S, S, S)
        alpha = rgba[:, 3]
        categories = voxel_categories(alpha, rooms.semantic[room : room + 1], furniture,
                                      threshold)  # fmt: skip
        means = patch_moments(alpha, network.config.patch_size)[0]  # (1, S, S, S)
        for _ in range(draws):
            out = network(rgba, valid, generator=generator)
            region = out.mask & valid  # (1, S, S, S)
            predictions = {
                "network": torch.sigmoid(out.pred[:, 3]),
                "zero": torch.zeros_like(alpha),
                "prior": prior.expand_as(alpha),
                "nearby": visible_neighbourhood_mean(alpha, valid & ~out.mask, width),
                "patch_mean": means,
            }
            for name, where in categories.items():
                where = where & region
                n = int(where.sum())
                if n == 0:
                    continue
                counts[name] += n
                truth = alpha[where] > 0.5
                for p, pred in predictions.items():
                    sums[name][p][0] += float((pred[where] - alpha[where]).square().sum())
                    sums[name][p][1] += float(((pred[where] > 0.5) == truth).sum())
    return {c: {p: {"mse": s[0] / counts[c], "correct": s[1] / counts[c], "voxels": counts[c]}
                for p, s in sums[c].items()}
            for c in CATEGORIES if counts[c]}  # fmt: skip

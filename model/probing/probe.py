"""One feature source through both probes: one pass over the training rooms, the fits, one pass
over the test rooms.

A source's maps are computed once per room and dropped after use: from a training room the
probes keep only its training voxels' features and its pooled boxes; a test room is scored as
soon as its maps exist (dense semantic confusion, pooled boxes), so memory holds one batch of
maps at a time whatever the number of rooms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from model.probing.attention import attention_entropy
from model.probing.linear import L2_GRID, RIDGE_GRID, fit_logistic, fit_ridge
from model.probing.objects import log_sizes, object_scores, pooled_boxes
from model.probing.rank import FeatureMoments
from model.probing.rooms import ProbeRooms
from model.probing.semantic import room_confusion, sample_miou, semantic_scores, training_rows
from model.probing.sources import EncoderSource, FeatureSource
from model.probing.tokens import (
    class_balanced_weights,
    finest_stride,
    fit_token_logistic,
    room_token_confusion,
    room_token_rows,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """How the probes are fitted and scored."""

    strengths: tuple[float, ...] = L2_GRID
    """Candidate L2 strengths of both logistic regressions (each chosen on held-out training
    rooms, per source: :func:`~model.probing.linear.fit_logistic`)."""
    max_iter: int = 50
    """L-BFGS iterations per logistic fit (warm-started along the strengths)."""
    ridge_strengths: tuple[float, ...] = RIDGE_GRID
    """Candidates for the size ridge's strength (chosen by leave-one-out on training boxes)."""
    furniture_classes: tuple[int, ...] = (4, 5, 6, 7, 8, 9, 10)
    """Class ids averaged for ``furniture_miou`` (the synthetic rooms' bed .. lamp)."""
    batch_size: int = 4
    """Rooms per forward pass of a source."""


def room_maps(
    source: FeatureSource, rooms: ProbeRooms, batch_size: int
) -> Iterator[tuple[int, list[Tensor]]]:
    """``(room index, its maps (C_i, D_i, H_i, W_i))`` for every room, ``batch_size`` rooms per
    call of the source."""
    for start in range(0, len(rooms), batch_size):
        stop = min(start + batch_size, len(rooms))
        maps = source.maps(rooms.rgba[start:stop], rooms.valid[start:stop])
        for b in range(stop - start):
            yield start + b, [m[b] for m in maps]


def _room_of_rows(rows: list[Tensor]) -> Tensor:
    """``(sum n_r,)`` the index of the room each row of the concatenated ``rows`` came from."""
    return torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(r) for r in rows]))


def _check_rooms(source: FeatureSource, train: ProbeRooms, test: ProbeRooms) -> list[str]:
    """The class names both splits share (ids as names when the store records none)."""
    if train.size != test.size or train.alpha_step != test.alpha_step:
        raise ValueError(f"train rooms ({train.size}^3, alpha_step {train.alpha_step}) and test "
                         f"rooms ({test.size}^3, alpha_step {test.alpha_step}) were read "
                         "differently")  # fmt: skip
    if isinstance(source, EncoderSource) and source.alpha_step != train.alpha_step:
        raise ValueError(f"{source.name}: trained on grids with alpha_step {source.alpha_step}, "
                         f"the rooms were read with {train.alpha_step}")  # fmt: skip
    if train.class_names != test.class_names:
        raise ValueError(f"train and test rooms name their classes differently: "
                         f"{train.class_names} vs {test.class_names}")  # fmt: skip
    if train.class_names is not None:
        return list(train.class_names)
    top = max(int(rooms.semantic.max()) for rooms in (train, test))
    return [str(c) for c in range(top + 1)]


def probe_source(
    source: FeatureSource, train: ProbeRooms, test: ProbeRooms, config: ProbeConfig | None = None
) -> dict:
    """Fit both probes on ``source``'s features of the ``train`` rooms, score them on ``test``.

    Returns ``{"source", "effective_rank" and "feature_scale": one per map (over every cell of
    the training rooms, :mod:`.rank`), "attention_entropy": one per stage of an encoder source
    (over its first batch of training rooms, :mod:`.attention`; None for other sources),
    "semantic": semantic_scores(...) + train_voxels, "semantic_token": the same for the token
    probe (:mod:`.tokens`) + its stride,
    "objects": object_scores(...) + train_boxes, ridge_strength, "seconds": {train, fit, test,
    total}}`` (JSON-ready).
    """
    config = config or ProbeConfig()
    names = _check_rooms(source, train, test)
    started = time.perf_counter()
    point_x, point_y, box_x = [], [], []
    token_x, token_y, token_offsets = [], [], []
    stride = None
    moments: list[FeatureMoments] = []
    for r, maps in room_maps(source, train, config.batch_size):
        moments = moments or [FeatureMoments() for _ in maps]
        for stage, feature_map in zip(moments, maps, strict=True):
            stage.add_map(feature_map)
        x, y = training_rows(maps, train, r)
        point_x.append(x)
        point_y.append(y)
        box_x.append(pooled_boxes(maps, train, r))
        stride = finest_stride(maps, train.size)
        x, y, offsets = room_token_rows(maps, train, r)
        token_x.append(x)
        token_y.append(y)
        token_offsets.append(offsets)
    token_room = _room_of_rows(token_y)
    token_x, token_y, token_offsets = (torch.cat(t) for t in (token_x, token_y, token_offsets))
    point_room = _room_of_rows(point_y)
    box_room = _room_of_rows(train.box_labels)
    point_x, point_y, box_x = torch.cat(point_x), torch.cat(point_y), torch.cat(box_x)
    box_y, box_size = torch.cat(train.box_labels), log_sizes(torch.cat(train.boxes))
    extracted = time.perf_counter()

    if len(point_y) == 0:
        raise ValueError(f"{train.store_url}: the training rooms hold no labelled voxel")
    if len(box_y) < 3:
        raise ValueError(f"{train.store_url}: the training rooms hold {len(box_y)} boxes; the "
                         "object probe needs at least 3")  # fmt: skip
    scorer = sample_miou(point_y, torch.cat(train.point_weights), len(names))
    semantic, semantic_l2 = fit_logistic(point_x, point_y, point_room, config.strengths,
                                         config.max_iter, scorer)  # fmt: skip
    classifier, object_l2 = fit_logistic(box_x, box_y, box_room, config.strengths,
                                         config.max_iter)  # fmt: skip
    size_map, strength = fit_ridge(box_x, box_size, config.ridge_strengths)
    dense = sample_miou(token_y, torch.ones(len(token_y), dtype=torch.float64), len(names))
    token, token_l2 = fit_token_logistic(token_x, token_y, token_offsets, token_room, stride,
                                         config.strengths, config.max_iter, dense,
                                         class_balanced_weights(token_y))  # fmt: skip
    del token_x
    fitted = time.perf_counter()

    confusion = torch.zeros(len(names), len(names), dtype=torch.int64)
    token_confusion = torch.zeros_like(confusion)
    test_x = []
    for r, maps in room_maps(source, test, config.batch_size):
        confusion += room_confusion(maps, semantic, test, r, len(names))
        token_confusion += room_token_confusion(maps, token, test, r, len(names))
        test_x.append(pooled_boxes(maps, test, r))
    objects = object_scores(classifier, size_map, torch.cat(test_x), torch.cat(test.box_labels),
                            torch.cat(test.boxes), box_y)  # fmt: skip
    done = time.perf_counter()
    logger.info("%s: probed in %.1f s", source.name, done - started)
    return {
        "source": source.name,
        "effective_rank": [stage.effective_rank() for stage in moments],
        "feature_scale": [stage.scale() for stage in moments],
        "attention_entropy": (attention_entropy(source.network, train.rgba[: config.batch_size])
                              if isinstance(source, EncoderSource) else None),
        "semantic": {
            **semantic_scores(confusion, names, config.furniture_classes),
            "train_voxels": len(point_y),
            "l2": semantic_l2,
        },
        "semantic_token": {
            **semantic_scores(token_confusion, names, config.furniture_classes),
            "train_voxels": len(token_y),
            "l2": token_l2,
            "stride": stride,
        },
        "objects": {
            **objects,
            "train_boxes": len(box_y),
            "l2": object_l2,
            "ridge_strength": strength,
        },
        "seconds": {
            "train": extracted - started,
            "fit": fitted - extracted,
            "test": done - fitted,
            "total": done - started,
        },
    }

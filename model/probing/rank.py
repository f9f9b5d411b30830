"""How many directions a feature map uses: the effective rank of its standardised features.

A pretrained stage can hold as many channels as a random one and still say only one or two
things: a linear probe then finds little in it, whatever was learnt. The participation ratio
of the eigenvalues ``l_k`` of the channels' correlation matrix,

    PR = (sum_k l_k)^2 / sum_k l_k^2,

is ``C`` for ``C`` uncorrelated channels, ``1`` for channels that are all one signal, and ``k``
for ``k`` independent signals of equal variance however they are mixed into the channels.
Standardising first (the correlation, not the covariance) makes it blind to channel scales.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class FeatureMoments:
    """Running sums of one map's cells: enough for the correlation of its channels over every
    cell of every room added, without keeping the cells."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Tensor | None = None  # (C,)
        self.products: Tensor | None = None  # (C, C)

    def add(self, rows: Tensor) -> None:
        """``rows`` ``(N, C)``: N cells' features."""
        rows = rows.detach().to(torch.float64)
        if self.total is None:
            channels = rows.shape[1]
            self.total = rows.new_zeros(channels)
            self.products = rows.new_zeros(channels, channels)
        self.count += rows.shape[0]
        self.total += rows.sum(0)
        self.products += rows.T @ rows

    def add_map(self, feature_map: Tensor) -> None:
        """``feature_map`` ``(C, D, H, W)``: every cell a row."""
        self.add(feature_map.reshape(feature_map.shape[0], -1).T)

    def covariance(self) -> Tensor:
        """``(C, C)``: the channels' covariance over the cells added."""
        if self.total is None or self.count < 2:
            raise ValueError("a covariance needs at least 2 cells")
        mean = self.total / self.count
        return (self.products - self.count * torch.outer(mean, mean)) / (self.count - 1)

    def scale(self) -> float:
        """The channels' root-mean-square standard deviation: how large the features are
        (a network reading them starts from a different footing when it differs), NaN for
        fewer than 2 cells."""
        if self.count < 2:
            return math.nan
        return float(self.covariance().diagonal().clamp_min(0).mean().sqrt())

    def correlation(self) -> Tensor:
        """``(C, C)``: the channels' correlation; channels constant over the cells are left out
        (they carry nothing a probe could read)."""
        covariance = self.covariance()
        variance = covariance.diagonal().clamp_min(0)
        live = variance > 1e-12 * variance.max().clamp_min(1e-300)
        scale = variance[live].sqrt()
        return covariance[live][:, live] / torch.outer(scale, scale)

    def effective_rank(self) -> float:
        """The participation ratio of the correlation's eigenvalues (see the module doc); NaN
        for fewer than 2 cells (a small grid's deepest stage can be one cell a room)."""
        if self.count < 2:
            return math.nan
        eigenvalues = torch.linalg.eigvalsh(self.correlation()).clamp_min(0)
        return float(eigenvalues.sum() ** 2 / eigenvalues.square().sum())


def effective_rank(rows: Tensor) -> float:
    """The effective rank of ``rows`` ``(N, C)`` (N samples of C channels)."""
    moments = FeatureMoments()
    moments.add(rows)
    return moments.effective_rank()

"""What fine-tuning keeps: how alike two encoders' stages are, in their features and weights.

A detector fine-tuned from a pretrained encoder can score like one trained from scratch for
two different reasons: fine-tuning overwrote what pretraining put there (the features end up
no closer to the pretrained ones than a scratch detector's are), or it kept them and they
are simply worth no more than what 2 labelled rooms teach. The two measures here tell those
apart:

- **linear CKA** (centred kernel alignment with linear kernels, Kornblith et al. 2019) between
  two networks' features on the same cells. With the ``n`` cells' features ``X`` ``(n, p)``
  and ``Y`` ``(n, q)`` centred over the cells,

      CKA = ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F),

  1 when ``Y`` is ``X`` up to a rotation, an isotropic scale and a shift, near 0 for
  unrelated features, and blind to which channel holds what (two networks never agree on
  that). For one channel each it is the squared correlation. :class:`CrossMoments` keeps the
  sums it needs, so every cell of every room counts without keeping the cells.
- **linear recovery**: the share of one network's feature variance that a ridge regression
  on the other's features explains on held-out cells (:func:`linear_recovery`). CKA weighs
  directions by their variance, so one loud new direction can pull it down while everything
  the first network computed is still there to be read; recovery asks that directly.
- **relative weight change** per encoder part: ``||W_end - W_start|| / ||W_start||`` over the
  part's tensors (:func:`weight_change`).

Cells are compared only where the room is (:func:`room_cells`): the zero-padded end of the
cube gives every network one constant feature, on which any two agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


class CrossMoments:
    """Running sums of two feature sets on the same cells: enough for their linear CKA."""

    def __init__(self) -> None:
        self.count = 0
        self._sums: list[Tensor] | None = None  # sum x (p,), sum y (q,)
        self._products: list[Tensor] | None = None  # X^T X (p, p), Y^T Y (q, q), X^T Y (p, q)

    def add(self, x: Tensor, y: Tensor) -> None:
        """``x`` ``(N, p)`` and ``y`` ``(N, q)``: the same N cells' features of both."""
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"expected (N, p) and (N, q) rows of the same cells, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")  # fmt: skip
        x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
        if self._sums is None:
            self._sums = [x.new_zeros(x.shape[1]), y.new_zeros(y.shape[1])]
            self._products = [x.new_zeros(x.shape[1], x.shape[1]),
                              y.new_zeros(y.shape[1], y.shape[1]),
                              x.new_zeros(x.shape[1], y.shape[1])]  # fmt: skip
        self.count += x.shape[0]
        self._sums[0] += x.sum(0)
        self._sums[1] += y.sum(0)
        self._products[0] += x.T @ x
        self._products[1] += y.T @ y
        self._products[2] += x.T @ y

    def __add__(self, other: CrossMoments) -> CrossMoments:
        """The sums over the cells of both (two halves of the rooms make the whole)."""
        if self._sums is None or other._sums is None:
            return other if self._sums is None else self
        out = CrossMoments()
        out.count = self.count + other.count
        out._sums = [a + b for a, b in zip(self._sums, other._sums, strict=True)]
        out._products = [a + b for a, b in zip(self._products, other._products, strict=True)]
        return out

    def sums(self) -> tuple[int, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(n, sum x, sum y, X^T X, Y^T Y, X^T Y)`` of the cells added."""
        if self._sums is None:
            raise ValueError("no cells added")
        return (self.count, *self._sums, *self._products)

    def covariances(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(Cxx (p, p), Cyy (q, q), Cxy (p, q))`` over the cells added (divided by n)."""
        if self._sums is None or self.count < 2:
            raise ValueError("linear CKA needs at least 2 cells")
        n = self.count
        mx, my = self._sums[0] / n, self._sums[1] / n
        xx, yy, xy = self._products
        return (xx / n - torch.outer(mx, mx), yy / n - torch.outer(my, my),
                xy / n - torch.outer(mx, my))  # fmt: skip

    def linear_cka(self) -> float:
        """The linear CKA of the two feature sets (NaN when either is constant on the cells)."""
        cxx, cyy, cxy = self.covariances()
        scale = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
        if scale <= 0:
            return math.nan
        return float(torch.linalg.matrix_norm(cxy) ** 2 / scale)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of ``x`` ``(N, p)`` and ``y`` ``(N, q)`` (rows: the same N cells)."""
    moments = CrossMoments()
    moments.add(x, y)
    return moments.linear_cka()


def linear_recovery(fit: CrossMoments, held_out: CrossMoments, ridge: float = 1e-2) -> float:
    """How much of the first feature set ``x`` a linear map of the second ``y`` recovers: the
    ridge regression of ``x`` on ``y`` fitted on the cells of ``fit``, its ``R^2`` (summed over
    ``x`` 's channels: the share of their total variance explained) on the cells of
    ``held_out``. ``ridge`` is relative to the mean variance of ``y`` 's channels (scale-free).

    1 when ``x`` is a linear function of ``y``; about 0, or below, when unrelated.
    """
    _, cyy, cxy = fit.covariances()  # cxy: (p, q)
    n_fit, sx, sy = fit.count, *fit.sums()[1:3]
    mx, my = sx / n_fit, sy / n_fit
    q = cyy.shape[0]
    strength = ridge * float(cyy.diagonal().mean())
    # x ~ mx + (y - my) @ coef, coef (q, p)
    coef = torch.linalg.solve(cyy + strength * torch.eye(q, dtype=cyy.dtype), cxy.T)
    n, hx, hy, xx, yy, xy = held_out.sums()
    # held-out sums of the centred products, centred at the fitted means (of x's, the trace)
    sxx_h = xx.trace() - 2 * hx @ mx + n * mx @ mx
    cyy_h = yy - torch.outer(hy, my) - torch.outer(my, hy) + n * torch.outer(my, my)
    cxy_h = xy - torch.outer(hx, my) - torch.outer(mx, hy) + n * torch.outer(mx, my)
    residual = sxx_h - 2 * (cxy_h * coef.T).sum() + (coef.T @ cyy_h @ coef).trace()
    total = xx.trace() - hx.square().sum() / n  # about the held-out cells' own mean
    if total <= 0:
        return math.nan
    return float(1 - residual / total)


def room_cells(valid: Tensor, cells: Sequence[int]) -> Tensor:
    """``(B, D, H, W)`` bool: the cells of a ``(D, H, W)`` map over the ``(B, S, S, S)`` cube
    that hold at least one ``valid`` voxel (each cell covers ``S / D`` voxels a side)."""
    size = valid.shape[-1]
    if any(size % n for n in cells):
        raise ValueError(f"a map of {tuple(cells)} cells does not tile a {size}^3 cube")
    stride = [size // n for n in cells]
    pooled = F.max_pool3d(valid[:, None].float(), kernel_size=stride, stride=stride)
    return pooled[:, 0] > 0


def add_map_pair(moments: CrossMoments, a: Tensor, b: Tensor, cells: Tensor) -> None:
    """Add the chosen ``cells`` ``(D, H, W)`` of two maps ``(C_a, D, H, W)``, ``(C_b, D, H, W)``
    of one room to ``moments``."""
    if a.shape[1:] != b.shape[1:] or a.shape[1:] != cells.shape:
        raise ValueError(f"maps {tuple(a.shape)} and {tuple(b.shape)} do not share the cells "
                         f"{tuple(cells.shape)}")  # fmt: skip
    rows = [rearrange(m, "c d h w -> (d h w) c")[cells.flatten()] for m in (a, b)]
    moments.add(*rows)


def weight_change(
    start: Mapping[str, Tensor], end: Mapping[str, Tensor], parts: Mapping[str, str]
) -> dict[str, float]:
    """Per part (name -> the prefix of its tensors' names), ``||end - start|| / ||start||``
    over the floating-point tensors both state dicts hold under that prefix."""
    out = {}
    for part, prefix in parts.items():
        names = [n for n in start if n.startswith(prefix) and n in end
                 and start[n].is_floating_point()]  # fmt: skip
        if not names:
            raise KeyError(f"no tensor named {prefix}* in both state dicts")
        for n in names:
            if start[n].shape != end[n].shape:
                raise ValueError(f"{n}: shape {tuple(start[n].shape)} against "
                                 f"{tuple(end[n].shape)}")  # fmt: skip
        moved = sum(float((end[n].double() - start[n].double()).square().sum()) for n in names)
        size = sum(float(start[n].double().square().sum()) for n in names)
        out[part] = math.sqrt(moved / size) if size > 0 else math.nan
    return out


def encoder_parts(stages: int) -> dict[str, str]:
    """The parts of an :class:`~model.networks.encoder.EncoderFront` 's ``encoder`` state dict:
    the patch embedding and each stage."""
    return {"patch": "patch_", **{f"stage {i + 1}": f"stages.{i}." for i in range(stages)}}

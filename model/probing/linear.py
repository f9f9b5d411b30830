"""The probes' readers: a multinomial logistic regression and a ridge regression, both on
standardised features, both returned as one affine map of the *raw* features.

Standardising (mean and standard deviation of the training rows; a constant feature keeps
scale 1) puts every channel on one scale, so that the L2 penalty weighs them alike whether they
are colours in [0, 1] or transformer activations. Folding it into the weights
(``W' = W / scale``, ``b' = b - W' mean``) lets a caller apply the probe to anything linear in
the features, e.g. a projected feature map (:func:`model.probing.interpolation.project_maps`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LinearMap:
    """``x -> x @ weight.T + bias``: ``(n, C)`` -> ``(n, K)``."""

    weight: Tensor
    bias: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return x.float() @ self.weight.T + self.bias


@dataclass
class Classifier:
    """A linear map whose output ``k`` scores class ``classes[k]``."""

    map: LinearMap
    classes: Tensor

    def predict(self, x: Tensor) -> Tensor:
        """``(n, C)`` features -> ``(n,)`` labels."""
        return self.classes[self.map(x).argmax(1)]


def standardising_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per column of ``x`` ``(n, C)``: mean and the scale to divide by (its standard deviation;
    1 for a constant column)."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))


def fold_standardising(weight: Tensor, bias: Tensor, mean: Tensor, scale: Tensor) -> LinearMap:
    """The map ``x -> ((x - mean) / scale) @ weight.T + bias`` written on raw ``x``."""
    weight = weight / scale
    return LinearMap(weight.float(), (bias - weight @ mean).float())


def balanced_accuracy(predicted: Tensor, target: Tensor) -> float:
    """Mean over the classes present in ``target`` of the share of their items predicted right
    (NaN without items)."""
    recalls = [(predicted[target == c] == c).double().mean() for c in target.unique()]
    return float(torch.stack(recalls).mean()) if recalls else math.nan


def logistic_params(
    xs: Tensor,
    target: Tensor,
    classes: int,
    l2: float,
    max_iter: int,
    start: Tensor | None,
    weight: Tensor | None = None,
) -> Tensor:
    """``(K, C + 1)`` weights and bias minimising the mean cross-entropy of ``target`` (indices
    ``< classes``; a class without rows is allowed) plus ``l2 / 2 * ||W||^2`` (bias free) on
    standardised ``xs``: full-batch L-BFGS (strong Wolfe line search), at most ``max_iter``
    iterations, from ``start`` (zeros when ``None``). ``weight`` ``(n,)``: the mean is
    weighted by it (a row of weight 2 counts as that row twice)."""
    params = torch.zeros(classes, xs.shape[1] + 1) if start is None else start.clone()
    params.requires_grad_(True)
    row_weight = None if weight is None else weight.to(xs.dtype)
    if classes > 1:  # one class: nothing to tell apart, the zero map predicts it
        optimiser = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-6, tolerance_change=1e-9,
                                      line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> Tensor:
            optimiser.zero_grad()
            coef, bias = params[:, :-1], params[:, -1]
            if row_weight is None:
                loss = F.cross_entropy(xs @ coef.T + bias, target)
            else:
                each = F.cross_entropy(xs @ coef.T + bias, target, reduction="none")
                loss = (each * row_weight).sum() / row_weight.sum()
            loss = loss + 0.5 * l2 * coef.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
    return params.detach()


Scorer = Callable[[Tensor, Tensor], float]
"""``score(predicted labels (m,), indices of the m held-out rows)``: higher is better."""


def held_out_rows(groups: Tensor) -> Tensor:
    """``(n,)`` bool: the rows of every 4th of the distinct ``groups`` ``(n,)``, counted from
    the last, on which a regularisation strength is chosen."""
    return torch.isin(groups, groups.unique().flip(0)[::4])


def choose_strength(
    strengths: Sequence[float],
    groups: Tensor,
    start: Any,
    fit: Callable[[Tensor, float, Any], Any],
    predict: Callable[[Any, Tensor], Tensor],
    score: Scorer,
) -> tuple[float, Any]:
    """The L2 strength of ``strengths`` whose fit on the rows outside :func:`held_out_rows`
    scores best on the held-out rows (ties: the stronger), and that fit, to warm-start the
    final one from.

    Strengths are tried strongest first, each fit starting from the previous one (the first
    from ``start``): ``fit(rows to fit (n,) bool, l2, start) -> params``,
    ``predict(params, held-out row indices (m,)) -> labels (m,)``, ``score(labels, rows)``.
    With one strength, or every row held out, there is nothing to choose: the strongest and
    ``start`` come back unchanged."""
    ordered = sorted(strengths, reverse=True)
    held = held_out_rows(groups)
    if len(ordered) == 1 or held.all():
        return ordered[0], start
    rows, best = held.nonzero()[:, 0], None
    for l2 in ordered:
        start = fit(~held, l2, start)
        value = score(predict(start, rows), rows)
        if best is None or value > best[0]:
            best = (value, l2, start)
    return best[1], best[2]


L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
"""Regularisation strengths :func:`fit_logistic` chooses from."""


def fit_logistic(
    x: Tensor,
    y: Tensor,
    groups: Tensor,
    strengths: Sequence[float] = L2_GRID,
    max_iter: int = 50,
    score: Scorer | None = None,
) -> tuple[Classifier, float]:
    """Multinomial logistic regression of labels ``y`` ``(n,)`` on features ``x`` ``(n, C)``.

    The L2 strength is chosen per call from ``strengths``, because a fixed one would favour
    some sources (4 colour channels need far less regularisation than 360 encoder channels):
    every 4th of the distinct ``groups`` ``(n,)`` (rooms), counted from the last, is held out;
    the probe is fitted on the other rows with each strength, strongest first, each fit
    starting from the previous solution; the strength whose held-out rows ``score`` best wins
    (ties: the stronger; default score: :func:`balanced_accuracy`); then the probe is fitted on
    all rows with it. With one strength or one group there is nothing to choose. Only the
    labels present in ``y`` can be predicted. Returns the classifier and the chosen strength.
    """
    if len(x) != len(y) or len(x) != len(groups) or len(x) == 0:
        raise ValueError(f"fit_logistic: {len(x)} feature rows, {len(y)} labels, "
                         f"{len(groups)} groups")  # fmt: skip
    score = score or (lambda predicted, rows: balanced_accuracy(predicted, y[rows]))
    x = x.float()
    mean, scale = standardising_moments(x)
    xs = (x - mean) / scale
    classes, target = y.unique(return_inverse=True)
    chosen, start = choose_strength(
        strengths, groups, None,
        fit=lambda fitted, l2, start: logistic_params(xs[fitted], target[fitted], len(classes),
                                                      l2, max_iter, start),
        predict=lambda params, rows: classes[(xs[rows] @ params[:, :-1].T
                                              + params[:, -1]).argmax(1)],
        score=score,
    )  # fmt: skip
    params = logistic_params(xs, target, len(classes), chosen, max_iter, start)
    folded = fold_standardising(params[:, :-1], params[:, -1], mean, scale)
    return Classifier(folded, classes), chosen


RIDGE_GRID = tuple(10.0**e for e in range(-3, 4))
"""Regularisation strengths :func:`fit_ridge` chooses from."""


def fit_ridge(
    x: Tensor, y: Tensor, strengths: Sequence[float] = RIDGE_GRID
) -> tuple[LinearMap, float]:
    """Ridge regression of targets ``y`` ``(n, T)`` on features ``x`` ``(n, C)``, closed form.

    Minimises the mean squared error plus ``lam * ||W||^2`` on standardised features (intercept
    free); ``lam`` is the one of ``strengths`` with the lowest exact leave-one-out error on the
    training rows (from one SVD: residual ``e_i / (1 - h_ii)``, ``h`` the hat matrix with the
    intercept). With a few hundred boxes and hundreds of channels a fixed small ``lam``
    interpolates the training boxes; choosing it this way costs nothing and uses no test box.
    Returns the map and the chosen ``lam``.
    """
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"fit_ridge: needs >= 3 rows, got {len(x)} features, {len(y)} targets")
    x, y = x.double(), y.double()
    n = len(x)
    mean, scale = standardising_moments(x)
    y_mean = y.mean(0)
    u, s, vt = torch.linalg.svd((x - mean) / scale, full_matrices=False)
    uty = u.T @ (y - y_mean)  # (r, T)
    best = None
    for lam in strengths:
        shrink = s.square() / (s.square() + n * lam)  # (r,)
        residual = (y - y_mean) - u @ (shrink[:, None] * uty)
        leverage = (u.square() * shrink).sum(1) + 1.0 / n  # (n,)
        loo = (residual / (1 - leverage).clamp(min=1e-9)[:, None]).square().mean()
        if best is None or loo < best[0]:
            best = (loo, lam)
    lam = best[1]
    coef = vt.T @ ((s / (s.square() + n * lam))[:, None] * uty)  # (C, T)
    return fold_standardising(coef.T, y_mean, mean, scale), lam

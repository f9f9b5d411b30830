"""Linear CKA and weight change (model/probing/similarity.py): hand values, an independent
Gram-matrix implementation, invariances, streaming, and the cells a room covers."""

import math

import pytest
import torch

from model.probing.similarity import (
    CrossMoments,
    add_map_pair,
    encoder_parts,
    linear_cka,
    linear_recovery,
    room_cells,
    weight_change,
)


def gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA from centred n x n Gram matrices (HSIC form), independent of the feature-space one."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k = h @ (x.double() @ x.double().T) @ h
    ell = h @ (y.double() @ y.double().T) @ h
    return float((k * ell).sum() / ((k * k).sum().sqrt() * (ell * ell).sum().sqrt()))


def test_one_channel_each_is_the_squared_correlation():
    # x - 2.5 = (-1.5, -0.5, 0.5, 1.5), y - 2.5 = (-1.5, 0.5, -0.5, 1.5):
    # covariance sum 4, variance sums 5 and 5, correlation 0.8
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[1.0], [3.0], [2.0], [4.0]])
    assert linear_cka(x, y) == pytest.approx(0.64)


def test_agrees_with_the_gram_matrix_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = x[:, :3] @ torch.randn(3, 7, generator=g) + 0.5 * torch.randn(60, 7, generator=g)
    assert linear_cka(x, y) == pytest.approx(gram_cka(x, y), rel=1e-9)
    assert 0.2 < linear_cka(x, y) < 0.95


def test_invariant_to_rotation_scale_and_shift_not_to_anisotropic_scaling():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g) * torch.tensor([3.0, 2.0, 1.0, 1.0, 0.5, 0.2])
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert linear_cka(x, 7.0 * x @ q + 3.0) == pytest.approx(1.0, abs=1e-9)
    stretched = x * torch.tensor([10.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert linear_cka(x, stretched) < 0.99


def test_unrelated_features_are_near_zero():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20_000, 4, generator=g), torch.randn(20_000, 4, generator=g)
    assert linear_cka(x, y) < 0.01


def test_streaming_equals_all_at_once():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 4, generator=g)
    y = torch.tanh(x @ torch.randn(4, 3, generator=g))
    moments = CrossMoments()
    for start in range(0, 90, 25):
        moments.add(x[start:start + 25], y[start:start + 25])
    assert moments.count == 90
    assert moments.linear_cka() == pytest.approx(linear_cka(x, y), rel=1e-12)


def test_constant_features_have_no_cka_and_one_cell_is_refused():
    x = torch.randn(10, 3)
    assert math.isnan(linear_cka(x, torch.ones(10, 2)))
    with pytest.raises(ValueError, match="at least 2 cells"):
        linear_cka(x[:1], x[:1])
    with pytest.raises(ValueError, match="same cells"):
        linear_cka(x, x[:5])


def test_room_cells_cover_the_valid_voxels_only():
    valid = torch.zeros(1, 16, 16, 16, dtype=torch.bool)
    valid[0, :9, :4, :16] = True  # 9 voxels along x: cells 0-2 of 4-voxel cells
    cells = room_cells(valid, (4, 4, 4))
    assert cells.shape == (1, 4, 4, 4)
    assert cells[0, :3, :1, :].all() and int(cells.sum()) == 3 * 1 * 4
    with pytest.raises(ValueError, match="does not tile"):
        room_cells(valid, (3, 3, 3))


def test_map_pairs_read_only_the_chosen_cells():
    a = torch.randn(3, 2, 2, 2)
    cells = torch.zeros(2, 2, 2, dtype=torch.bool)
    cells[0] = True  # 4 of 8 cells
    b = a.clone()
    b[:, 1] = torch.randn(3, 2, 2) * 100  # differ only outside the chosen cells
    moments = CrossMoments()
    add_map_pair(moments, a, b, cells)
    assert moments.count == 4
    assert moments.linear_cka() == pytest.approx(1.0, abs=1e-9)


def test_weight_change_per_part():
    start = {"patch_embed.weight": torch.ones(2, 2), "stages.0.w": torch.full((3,), 2.0),
             "stages.1.w": torch.ones(4), "stages.1.count": torch.tensor(3)}
    end = {"patch_embed.weight": torch.ones(2, 2), "stages.0.w": torch.full((3,), 3.0),
           "stages.1.w": -torch.ones(4), "stages.1.count": torch.tensor(9)}
    change = weight_change(start, end, encoder_parts(2))
    assert change == {"patch": 0.0, "stage 1": pytest.approx(0.5), "stage 2": pytest.approx(2.0)}
    with pytest.raises(KeyError, match="stages.5"):
        weight_change(start, end, {"stage 6": "stages.5."})


def _split_moments(x: torch.Tensor, y: torch.Tensor, fit_rows: int) -> tuple[CrossMoments, ...]:
    fit, held = CrossMoments(), CrossMoments()
    fit.add(x[:fit_rows], y[:fit_rows])
    held.add(x[fit_rows:], y[fit_rows:])
    return fit, held


def test_recovery_agrees_with_an_explicit_ridge_fit():
    g = torch.Generator().manual_seed(4)
    y = torch.randn(300, 6, generator=g) + 2.0
    x = y[:, :4] @ torch.randn(4, 3, generator=g) + 0.7 * torch.randn(300, 3, generator=g) - 1.0
    fit, held = _split_moments(x, y, 200)
    # the same regression on explicit rows: centre at the fitted means, solve, score
    xf, yf = x[:200].double(), y[:200].double()
    mx, my = xf.mean(0), yf.mean(0)
    yc = yf - my
    strength = 0.1 * float(yc.var(0, unbiased=False).mean())
    coef = torch.linalg.solve(yc.T @ yc / 200 + strength * torch.eye(6, dtype=torch.float64),
                              yc.T @ (xf - mx) / 200)  # fmt: skip
    xh, yh = x[200:].double(), y[200:].double()
    residual = ((xh - mx) - (yh - my) @ coef).square().sum()
    expected = 1 - residual / (xh - xh.mean(0)).square().sum()
    assert linear_recovery(fit, held, ridge=0.1) == pytest.approx(float(expected), rel=1e-9)
    assert 0.5 < float(expected) < 0.99


def test_recovery_of_a_linear_function_and_of_noise():
    g = torch.Generator().manual_seed(5)
    y = torch.randn(4000, 8, generator=g)
    x = y @ torch.randn(8, 5, generator=g)
    fit, held = _split_moments(x, y, 2000)
    assert linear_recovery(fit, held, ridge=1e-9) == pytest.approx(1.0, abs=1e-6)
    noise = torch.randn(4000, 5, generator=g)
    fit, held = _split_moments(noise, y, 2000)
    assert abs(linear_recovery(fit, held)) < 0.02
    # a rotation of one set and a loud extra channel do not hide the first set from recovery,
    # though they pull its CKA down
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    louder = torch.cat([y @ q, 30 * torch.randn(4000, 1, generator=g)], dim=1)
    fit, held = _split_moments(y, louder, 2000)
    assert linear_recovery(fit, held, ridge=1e-6) > 0.99
    assert linear_cka(y, louder) < 0.2

"""Hash encoding: tcnn's layout and hash by hand, corners, a naive reference, SH, tcnn parity."""

from __future__ import annotations

import math

import pytest
import torch

from nerf_training.hash_encoding import (
    HashEncodingConfig,
    TorchHashEncoding,
    level_layout,
    spatial_hash,
    tcnn_available,
)
from nerf_training.sh_encoding import spherical_harmonics

# One dense level (4^3 = 64 vertices fit a 256-entry table) and one hashed (16^3 do not).
SMALL = HashEncodingConfig(
    n_levels=2,
    n_features_per_level=2,
    log2_hashmap_size=8,
    base_resolution=4,
    finest_resolution=16,
)


def _encoding_with_distinct_table(config: HashEncodingConfig) -> TorchHashEncoding:
    enc = TorchHashEncoding(config)
    with torch.no_grad():
        enc.params.copy_(torch.linspace(-1, 1, enc.params.numel()))
    return enc


def _point_on_corner(ijk: tuple[int, int, int], scale: float) -> torch.Tensor:
    # x * scale + 0.5 == vertex  =>  x = (vertex - 0.5) / scale
    return torch.tensor([[(c - 0.5) / scale for c in ijk]], dtype=torch.float32)


def test_spatial_hash_matches_hand_computed_value():
    # 1*1 xor (2*2654435761 mod 2^32 = 1013904226) xor 3*805459861 (= 2416379583)
    assert int(spatial_hash(torch.tensor([[1, 2, 3]]))[0]) == 2892625372


def test_layout_matches_tcnn_rules_for_instant_ngp_default():
    layout = level_layout(HashEncodingConfig())
    # Dense levels hold res^3 vertices rounded up to 8: 16^3, 23^3 = 12167 -> 12168, 31^3 + 1.
    assert layout.resolutions[:3].tolist() == [16, 23, 31]
    assert layout.sizes[:3].tolist() == [4096, 12168, 29792]
    assert layout.dense.tolist() == [True] * 5 + [False] * 11
    assert layout.sizes[5:].tolist() == [2**19] * 11
    assert layout.resolutions[-1] == 2048


def test_point_on_dense_corner_returns_that_corner_feature():
    enc = _encoding_with_distinct_table(SMALL)
    layout = enc.layout
    assert layout.dense.tolist() == [True, False]
    i, j, k = 2, 1, 3
    out = enc(_point_on_corner((i, j, k), float(layout.scales[0])))  # (1, 4)
    res = int(layout.resolutions[0])  # 4
    expected = enc.table()[layout.offsets[0] + i + j * res + k * res * res]
    torch.testing.assert_close(out[0, 0:2], expected, atol=1e-5, rtol=0)


def test_point_on_hashed_corner_returns_that_corner_feature():
    enc = _encoding_with_distinct_table(SMALL)
    layout = enc.layout
    ijk = (5, 7, 9)
    out = enc(_point_on_corner(ijk, float(layout.scales[1])))
    entry = int(spatial_hash(torch.tensor([ijk]))[0]) % 256
    expected = enc.table()[layout.offsets[1] + entry]
    torch.testing.assert_close(out[0, 2:4], expected, atol=1e-5, rtol=0)


def naive_hash_encoding(enc: TorchHashEncoding, x: torch.Tensor) -> torch.Tensor:
    """Per-level, per-corner reference straight from tcnn's description: ``(N, 3) -> (N, L*F)``."""
    layout, table = enc.layout, enc.table()
    outs = []
    for level in range(enc.config.n_levels):
        pos = x * float(layout.scales[level]) + 0.5
        base = torch.floor(pos).long()
        frac = pos - base
        res, size = int(layout.resolutions[level]), int(layout.sizes[level])
        acc = 0
        for corner in range(8):
            bits = torch.tensor([corner & 1, (corner >> 1) & 1, (corner >> 2) & 1])
            c = base + bits
            w = torch.prod(torch.where(bits.bool(), frac, 1 - frac), dim=-1, keepdim=True)
            if layout.dense[level]:
                idx = c[:, 0] + c[:, 1] * res + c[:, 2] * res * res
            else:
                idx = spatial_hash(c)
            acc = acc + w * table[layout.offsets[level] + idx % size]
        outs.append(acc)
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize(
    ("features", "log2_table", "finest"),
    [
        (2, 10, 128),  # dense and hashed levels
        (4, 10, 128),
        (2, 17, 32),  # every level dense (a coarse grid for low-resolution images)
        (2, 4, 64),  # every level hashed
    ],
)
def test_vectorised_matches_naive_reference_values_and_gradients(features, log2_table, finest):
    config = HashEncodingConfig(
        n_levels=6,
        n_features_per_level=features,
        log2_hashmap_size=log2_table,
        base_resolution=4,
        finest_resolution=finest,
    )
    enc = TorchHashEncoding(config)
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = torch.rand(500, 3)
    x[:5] = torch.tensor([[0.0] * 3, [1.0] * 3, [1.0, 0.0, 0.5], [0.5] * 3, [0.999] * 3])
    out = enc(x)
    ref = naive_hash_encoding(enc, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), enc.params)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), enc.params)
    torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-4)


def test_spherical_harmonics_hand_values_and_orthonormality():
    up = spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]]))[0]
    expected = torch.zeros(16)
    expected[0] = 0.5 / math.sqrt(math.pi)
    expected[2] = math.sqrt(3 / (4 * math.pi))
    expected[6] = 0.25 * math.sqrt(5 / math.pi) * 2  # (3z^2 - 1) = 2 at z = 1
    expected[12] = 0.25 * math.sqrt(7 / math.pi) * 2  # (5z^3 - 3z) = 2 at z = 1
    torch.testing.assert_close(up, expected, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    y = spherical_harmonics(d)
    gram = y.T @ y * (4 * math.pi / len(d))  # Monte-Carlo integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


@pytest.mark.gpu
def test_tcnn_and_torch_backends_agree_on_same_parameters():
    if not tcnn_available():
        pytest.skip("needs CUDA and tinycudann")
    from nerf_training.hash_encoding import TcnnHashEncoding

    config = HashEncodingConfig()
    tcnn_enc = TcnnHashEncoding(config).cuda()
    torch_enc = TorchHashEncoding(config).cuda()
    with torch.no_grad():
        torch_enc.params.uniform_(-1, 1)
        tcnn_enc.params.copy_(torch_enc.params)
    x = torch.rand(1 << 16, 3, device="cuda")
    out_tcnn = tcnn_enc(x)
    out_torch = torch_enc(x)
    torch.testing.assert_close(out_tcnn, out_torch, atol=1e-3, rtol=1e-3)
    g = torch.randn_like(out_torch)
    (grad_tcnn,) = torch.autograd.grad((out_tcnn * g).sum(), tcnn_enc.params)
    (grad_torch,) = torch.autograd.grad((out_torch * g).sum(), torch_enc.params)
    torch.testing.assert_close(grad_tcnn.float(), grad_torch, atol=1e-3, rtol=1e-3)

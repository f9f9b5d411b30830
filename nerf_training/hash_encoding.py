"""Instant-NGP multiresolution hash encoding: a pure-PyTorch backend and a tiny-cuda-nn one.

Both backends share one parameter layout, tiny-cuda-nn's: a flat vector ``params`` holding
every level's table back to back, ``(sum_l size_l * F,)``, level ``l`` starting at entry
``offset_l`` with its ``F`` features contiguous. A checkpoint trained with one backend loads
into the other (a field trained with tcnn on a GPU is sampled on a CPU with the torch one).

Semantics (tcnn ``GridEncoding``, hash type ``CoherentPrime``, linear interpolation):

- level ``l`` has ``scale_l = 2 ** (l * log2(b)) * base - 1`` with ``b`` the per-level growth
  and ``resolution_l = ceil(scale_l) + 1`` vertices per side;
- an input ``x`` in [0, 1] maps to ``p = x * scale_l + 0.5`` (the half-vertex offset staggers
  the levels), its cell corner is ``floor(p)`` and the interpolation weights come from
  ``p - floor(p)``;
- a level whose ``resolution_l ** 3`` vertices fit its table is indexed densely
  (``i + j * res + k * res**2``), finer levels by the spatial hash
  ``i * 1 XOR j * 2654435761 XOR k * 805459861`` (uint32 arithmetic); either index is
  taken modulo the level's table size.

The torch backend is vectorised over levels: the dense levels and the hashed levels each go
through one batched computation, with no Python loop over samples or levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

HASH_PRIMES = (1, 2654435761, 805459861)
"""tcnn's ``coherent_prime_hash`` primes for x, y, z (the first is 1 for cache coherence)."""

_UINT32_MASK = 0xFFFFFFFF


@dataclass
class HashEncodingConfig:
    """Size of the multiresolution hash grid (Instant-NGP defaults)."""

    n_levels: int = 16
    """Number of resolution levels."""
    n_features_per_level: int = 2
    """Features stored per table entry (tcnn supports 1, 2, 4, 8)."""
    log2_hashmap_size: int = 19
    """log2 of the maximum number of entries per level (the hash table size T)."""
    base_resolution: int = 16
    """Vertices per side of the coarsest level."""
    finest_resolution: int = 2048
    """Vertices per side of the finest level (sets the per-level growth factor)."""

    @property
    def per_level_scale(self) -> float:
        if self.n_levels == 1:
            return 1.0
        return math.exp(
            math.log(self.finest_resolution / self.base_resolution) / (self.n_levels - 1)
        )

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    def tcnn_config(self) -> dict:
        """The ``encoding_config`` dict tiny-cuda-nn expects for the same grid."""
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Linear",
        }


@dataclass(frozen=True)
class LevelLayout:
    """Per-level constants, computed exactly as tcnn computes them (float32 scale)."""

    scales: np.ndarray  # (L,) float32
    resolutions: np.ndarray  # (L,) int64 vertices per side
    sizes: np.ndarray  # (L,) int64 table entries of the level
    offsets: np.ndarray  # (L,) int64 first entry of the level in the flat table
    dense: np.ndarray  # (L,) bool: indexed densely (all vertices fit the table)

    @property
    def n_entries(self) -> int:
        return int(self.sizes.sum())


def level_layout(config: HashEncodingConfig) -> LevelLayout:
    """Scales, resolutions, table sizes and offsets of every level (tcnn's GridEncoding)."""
    log2_scale = np.float32(math.log2(config.per_level_scale))
    max_size = 1 << config.log2_hashmap_size
    scales, resolutions, sizes, offsets, dense = [], [], [], [], []
    offset = 0
    for level in range(config.n_levels):
        scale = np.float32(
            np.exp2(np.float32(level) * log2_scale) * np.float32(config.base_resolution)
            - np.float32(1.0)
        )
        resolution = int(math.ceil(float(scale))) + 1
        n_vertices = min(resolution**3, _UINT32_MASK // 2)
        size = min(-(-n_vertices // 8) * 8, max_size)  # aligned to 8 entries, capped at T
        scales.append(scale)
        resolutions.append(resolution)
        sizes.append(size)
        offsets.append(offset)
        dense.append(resolution**3 <= size)
        offset += size
    return LevelLayout(
        scales=np.asarray(scales, dtype=np.float32),
        resolutions=np.asarray(resolutions, dtype=np.int64),
        sizes=np.asarray(sizes, dtype=np.int64),
        offsets=np.asarray(offsets, dtype=np.int64),
        dense=np.asarray(dense, dtype=bool),
    )


def spatial_hash(coords: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` int64 vertex coordinates -> ``(...,)`` int64 uint32 hash (before modulo)."""
    h = (coords[..., 0] * HASH_PRIMES[0]) ^ (coords[..., 1] * HASH_PRIMES[1])
    h = h ^ (coords[..., 2] * HASH_PRIMES[2])
    return h & _UINT32_MASK


class _InterpolateTable(torch.autograd.Function):
    """``out[n, g] = sum_c w[n, g, c] * table[idx[n, g, c]]`` with a histogram backward.

    The table gradient is a weighted histogram of the corner indices, one ``bincount`` per
    feature: on CPU this is several times faster than autograd's ``index_select`` backward
    (which materialises ``(N*G*8, F)`` rows and scatters them one row at a time).
    """

    @staticmethod
    def forward(ctx, table, idx, weights):  # table (E, F), idx (N, G, 8), weights (N, G, 8)
        n, g, c = idx.shape
        corner_features = table.index_select(0, idx.reshape(-1)).view(n * g, c, -1)
        out = torch.bmm(weights.reshape(n * g, 1, c), corner_features).view(n, g, -1)
        ctx.save_for_backward(idx, weights)
        ctx.n_entries = table.shape[0]
        return out  # (N, G, F)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out (N, G, F)
        idx, weights = ctx.saved_tensors
        flat_idx = idx.reshape(-1)
        grad_table = torch.stack(
            [
                torch.bincount(
                    flat_idx,
                    weights=(weights * grad_out[..., f : f + 1]).reshape(-1),
                    minlength=ctx.n_entries,
                )
                for f in range(grad_out.shape[-1])
            ],
            dim=-1,
        )  # (E, F)
        return grad_table.to(grad_out.dtype), None, None


class TorchHashEncoding(nn.Module):
    """Pure-PyTorch hash encoding: ``(N, 3)`` points in [0, 1] -> ``(N, L * F)`` features."""

    def __init__(self, config: HashEncodingConfig):
        super().__init__()
        self.config = config
        self.layout = level_layout(config)
        f = config.n_features_per_level
        self.params = nn.Parameter(torch.empty(self.layout.n_entries * f))
        nn.init.uniform_(self.params, -1e-4, 1e-4)  # tcnn's initialisation
        self._register_level_group("dense", self.layout.dense)
        self._register_level_group("hashed", ~self.layout.dense)
        self.register_buffer("_two", torch.arange(2, dtype=torch.int32), persistent=False)
        primes = torch.tensor(HASH_PRIMES, dtype=torch.int64)
        primes = torch.where(primes >= 2**31, primes - 2**32, primes).to(torch.int32)
        self.register_buffer("_primes", primes, persistent=False)

    def _register_level_group(self, name: str, mask: np.ndarray) -> None:
        levels = np.flatnonzero(mask)
        offsets = self.layout.offsets[levels]
        if name == "hashed" and len(levels):
            # Hashed levels are indexed inside the table slice that starts at the first one,
            # where their offsets are multiples of the power-of-two table size.
            offsets = offsets - offsets[0]
        group = {
            "levels": torch.from_numpy(levels),
            "scales": torch.from_numpy(self.layout.scales[levels]),
            "res": torch.from_numpy(self.layout.resolutions[levels]).int(),
            "sizes": torch.from_numpy(self.layout.sizes[levels]).int(),
            "offsets": torch.from_numpy(offsets).int(),
        }
        for key, value in group.items():
            self.register_buffer(f"{name}_{key}", value, persistent=False)

    @property
    def n_output_dims(self) -> int:
        return self.config.n_output_dims

    def table(self) -> torch.Tensor:
        """The parameters as ``(entries, F)`` rows (a view)."""
        return self.params.view(-1, self.config.n_features_per_level)

    def _corner_weights(self, frac: torch.Tensor) -> torch.Tensor:
        """``(N, G, 3)`` fractions -> ``(N, G, 8)`` trilinear weights (corner order x fastest)."""
        w = torch.stack((1 - frac, frac), -1)  # (N, G, 3, 2): weight of the low/high corner
        wyx = w[:, :, 1, :, None] * w[:, :, 0, None, :]  # (N, G, 2, 2)
        return (w[:, :, 2, :, None, None] * wyx[:, :, None]).flatten(-3)  # (N, G, 8)

    def level_indices(self, x: torch.Tensor, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat-table corner indices ``(N, G, 8)`` int32 and weights ``(N, G, 8)``.

        ``which`` is the level group, ``"dense"`` or ``"hashed"``. Corners are ordered with x
        fastest. Each axis contributes a ``(N, G, 2)`` term (its low and high corner) and the
        8 corners are formed by broadcasting those terms, so the full-size ``(N, G, 8)`` work
        is two integer ops; offsets and masks are folded into the small per-axis terms.
        """
        scales = getattr(self, f"{which}_scales")
        pos = x.unsqueeze(1) * scales.view(1, -1, 1) + 0.5  # (N, G, 3), all >= 0.5
        base = pos.int()  # truncation == floor for positive positions
        frac = pos - base  # (N, G, 3)
        b = base.unsqueeze(-1) + self._two  # (N, G, 3, 2) low and high corner per axis
        if which == "dense":
            res = self.dense_res.view(1, -1, 1)
            ix = b[:, :, 0] + self.dense_offsets.view(1, -1, 1)
            iy, iz = b[:, :, 1] * res, b[:, :, 2] * (res * res)  # (N, G, 2)
            iyx = iy[..., :, None] + ix[..., None, :]  # (N, G, 2, 2)
            idx = (iz[..., :, None, None] + iyx[..., None, :, :]).flatten(-3)
            # The half-vertex offset can reach vertex ``res`` (tcnn wraps it around).
            sizes, offsets = self.dense_sizes.view(1, -1, 1), self.dense_offsets.view(1, -1, 1)
            idx = torch.where(idx >= offsets + sizes, idx - sizes, idx)
        else:
            # int32 products wrap exactly like tcnn's uint32 ones; the table size is a power
            # of two, so masking each axis term first equals masking the XOR; the level
            # offsets (multiples of T past the dense block) are then OR-ed in as one more XOR.
            mask = (1 << self.config.log2_hashmap_size) - 1
            primes = self._primes.view(1, 1, 3, 1)
            h = (b * primes) & mask  # (N, G, 3, 2)
            hx = h[:, :, 0] ^ self.hashed_offsets.view(1, -1, 1)
            hyx = h[:, :, 1, :, None] ^ hx[..., None, :]  # (N, G, 2, 2)
            idx = (h[:, :, 2, :, None, None] ^ hyx[:, :, None]).flatten(-3)
        return idx, self._corner_weights(frac)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` points in [0, 1] -> ``(N, L * F)`` features, level-major like tcnn."""
        x = x.float()
        table = self.table()  # (E, F)
        n_dense = int(self.dense_levels.numel())
        first_hashed = int(self.layout.offsets[n_dense]) if n_dense < self.config.n_levels else 0
        parts = []  # dense levels are all coarser than hashed ones: concatenation keeps order
        for which, rows in (("dense", table[:first_hashed]), ("hashed", table[first_hashed:])):
            if getattr(self, f"{which}_levels").numel() == 0:
                continue
            with torch.no_grad():
                idx, weights = self.level_indices(x, which)
            parts.append(_InterpolateTable.apply(rows, idx, weights))  # (N, G, F)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.reshape(x.shape[0], -1)


def tcnn_available() -> bool:
    """tiny-cuda-nn importable and a CUDA device present."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


class TcnnHashEncoding(nn.Module):
    """tiny-cuda-nn's fused hash grid with the torch backend's ``params`` layout."""

    def __init__(self, config: HashEncodingConfig):
        super().__init__()
        import tinycudann as tcnn  # guarded: only constructed when tcnn_available()

        self.config = config
        self.layout = level_layout(config)
        encoding = tcnn.Encoding(3, config.tcnn_config(), dtype=torch.float32)
        if encoding.params.numel() != self.layout.n_entries * config.n_features_per_level:
            raise RuntimeError(
                f"tcnn hash grid has {encoding.params.numel()} parameters, expected "
                f"{self.layout.n_entries * config.n_features_per_level} (layout mismatch)"
            )
        # Kept out of the submodule registry so the state_dict holds one key, ``params``,
        # exactly as the torch backend's; tcnn reads the very same Parameter object.
        object.__setattr__(self, "_tcnn", encoding)
        self.params = encoding.params

    @property
    def n_output_dims(self) -> int:
        return self.config.n_output_dims

    def table(self) -> torch.Tensor:
        return self.params.view(-1, self.config.n_features_per_level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` points in [0, 1] -> ``(N, L * F)`` float32 features."""
        return self._tcnn(x.contiguous()).float()


def make_hash_encoding(config: HashEncodingConfig, backend: str) -> nn.Module:
    """``backend``: ``"tcnn"``, ``"torch"`` or ``"auto"`` (tcnn when importable and on CUDA)."""
    if backend == "auto":
        backend = "tcnn" if tcnn_available() else "torch"
    if backend == "tcnn":
        if not tcnn_available():
            raise ValueError("backend 'tcnn' requested but tinycudann or CUDA is unavailable")
        return TcnnHashEncoding(config)
    if backend == "torch":
        return TorchHashEncoding(config)
    raise ValueError(f"backend: expected 'auto', 'tcnn' or 'torch', got {backend!r}")

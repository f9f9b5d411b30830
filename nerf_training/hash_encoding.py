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


_ROW_DTYPES = {4: torch.float32, 8: torch.float64, 16: torch.complex128}
"""One dtype as wide as a whole table row, by row size in bytes."""


def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[idx]`` for ``(E, F)`` rows and ``(M,)`` indices -> ``(M, F)``.

    Where a row is 4, 8 or 16 bytes (F = 1, 2, 4 in float32), the table is viewed as a 1-D
    tensor of one element per row: CPU ``index_select`` then copies one element per index
    instead of looping over the row's features, about 1.8x faster for F = 4.
    """
    row_dtype = _ROW_DTYPES.get(table.shape[1] * table.element_size())
    if row_dtype is None or not table.is_contiguous():
        return table.index_select(0, idx)
    rows = table.view(row_dtype).view(-1)  # (E,) one element per row
    return rows.index_select(0, idx).view(table.dtype).view(-1, table.shape[1])


class _InterpolateTable(torch.autograd.Function):
    """``out[g, n] = sum_c w[g, c, n] * table[idx[g, c, n]]`` with a histogram backward.

    Level-major layout: the point axis ``N`` is innermost everywhere, so every elementwise
    op runs over long contiguous rows (with ``(N, G, 8)`` the innermost broadcast axes have
    length 2 and CPU kernels cannot vectorise). The table gradient is a weighted histogram
    of the corner indices, one ``bincount`` per feature: on CPU several times faster than
    autograd's ``index_select`` backward (which scatters ``(G*8*N, F)`` rows one at a time).
    """

    @staticmethod
    def forward(ctx, table, idx, weights):  # table (E, F), idx (G, 8, N), weights (G, 8, N)
        g, c, n = idx.shape
        corners = _gather_rows(table, idx.reshape(-1)).view(g, c, n, -1)  # (G, 8, N, F)
        out = corners[:, 0] * weights[:, 0, :, None]
        for k in range(1, c):
            out.addcmul_(corners[:, k], weights[:, k, :, None])
        ctx.save_for_backward(idx, weights)
        ctx.n_entries = table.shape[0]
        return out  # (G, N, F)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out (G, N, F)
        idx, weights = ctx.saved_tensors
        flat_idx = idx.reshape(-1)
        grad_by_feature = grad_out.permute(2, 0, 1).contiguous()  # (F, G, N)
        grad_table = torch.stack(
            [
                torch.bincount(
                    flat_idx,
                    weights=(weights * grad_f[:, None, :]).reshape(-1),
                    minlength=ctx.n_entries,
                )
                for grad_f in grad_by_feature
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

    @staticmethod
    def _corners(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-axis ``(G, N)`` low/high terms -> the three ``(G, 2, N)`` axis terms."""
        return tuple(torch.stack((lo[:, a], hi[:, a]), dim=1) for a in range(3))

    @staticmethod
    def _combine(tx, ty, tz, op):
        """``(G, 2, N)`` axis terms -> ``(G, 8, N)`` corner values (x fastest) via ``op``."""
        g, _, n = tx.shape
        tzy = op(tz.view(g, 2, 1, n), ty.view(g, 1, 2, n))  # (G, 2, 2, N)
        return op(tzy.view(g, 4, 1, n), tx.view(g, 1, 2, n)).view(g, 8, n)

    def level_indices(self, x: torch.Tensor, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat-table corner indices ``(G, 8, N)`` int32 and trilinear weights ``(G, 8, N)``.

        ``x``: ``(3, N)`` points in [0, 1] (coordinate-major). ``which`` is the level group,
        ``"dense"`` or ``"hashed"``. Corners are ordered with x fastest. Each axis contributes
        a ``(G, 2, N)`` term (its low and high corner) and the 8 corners are formed by
        broadcasting those terms; offsets and masks are folded into the small per-axis terms.
        """
        scales = getattr(self, f"{which}_scales")
        pos = x.unsqueeze(0) * scales.view(-1, 1, 1) + 0.5  # (G, 3, N), all >= 0.5
        lo = pos.int()  # truncation == floor for positive positions
        frac = pos - lo  # (G, 3, N)
        hi = lo + 1
        wx, wy, wz = self._corners(1 - frac, frac)
        weights = self._combine(wx, wy, wz, torch.mul)  # (G, 8, N)
        if which == "dense":
            res = self.dense_res.view(-1, 1, 1)
            offsets = self.dense_offsets.view(-1, 1, 1)
            ix, iy, iz = self._corners(lo, hi)  # (G, 2, N) each
            idx = self._combine(ix + offsets, iy * res, iz * (res * res), torch.add)
            # The half-vertex offset can reach vertex ``res`` (tcnn wraps it around).
            sizes = self.dense_sizes.view(-1, 1, 1)
            idx = torch.where(idx >= offsets + sizes, idx - sizes, idx)
        else:
            # int32 products wrap exactly like tcnn's uint32 ones; the table size is a power
            # of two, so masking each axis term first equals masking the XOR; the level
            # offsets (multiples of T past the dense block) are then OR-ed in as one more XOR.
            mask = (1 << self.config.log2_hashmap_size) - 1
            primes = self._primes.view(1, 3, 1)
            hx, hy, hz = self._corners((lo * primes) & mask, (hi * primes) & mask)
            hx = hx ^ self.hashed_offsets.view(-1, 1, 1)
            idx = self._combine(hx, hy, hz, torch.bitwise_xor)
        return idx, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` points in [0, 1] -> ``(N, L * F)`` features, level-major like tcnn."""
        xt = x.float().t().contiguous()  # (3, N)
        table = self.table()  # (E, F)
        n_dense = int(self.dense_levels.numel())
        all_dense = n_dense == self.config.n_levels
        first_hashed = table.shape[0] if all_dense else int(self.layout.offsets[n_dense])
        parts = []  # dense levels are all coarser than hashed ones: concatenation keeps order
        for which, rows in (("dense", table[:first_hashed]), ("hashed", table[first_hashed:])):
            if getattr(self, f"{which}_levels").numel() == 0:
                continue
            with torch.no_grad():
                idx, weights = self.level_indices(xt, which)
            parts.append(_InterpolateTable.apply(rows, idx, weights))  # (G, N, F)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # (L, N, F)
        return out.permute(1, 0, 2).reshape(x.shape[0], -1)


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

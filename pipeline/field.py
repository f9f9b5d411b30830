"""The seam between a trained NeRF and grid extraction (DESIGN contract 3).

Extraction takes any object with these members, nerfacc-style: pass functions, not
the trainer. Our trained NeRF, the synthetic generator's analytic field and a loaded
NeRF-RPN grid all satisfy it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class RadianceField(Protocol):
    aabb: torch.Tensor
    """``(2, 3)`` min and max corner of the region the field is defined in (world units)."""

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` world points -> ``(N,)`` volume density sigma >= 0 (per world unit)."""
        ...

    def color(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` points and ``(N, 3)`` unit view directions -> ``(N, 3)`` RGB in [0, 1].

        ``d`` is the direction the ray travels (from the camera towards the point).
        """
        ...


@runtime_checkable
class GeometryRadianceField(RadianceField, Protocol):
    """Optional fast path: a field whose colour depends on the point only through features.

    Extraction averages colour over many directions per sample; with this split it
    encodes each point once instead of once per direction. ``NGPField`` implements it.
    """

    def density_and_geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3)`` points -> sigma ``(N,)`` and features ``(N, G)``."""
        ...

    def color_from_geometry(self, geometry: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``(N, G)`` features and ``(N, 3)`` unit directions -> ``(N, 3)`` RGB in [0, 1]."""
        ...

"""A field trained in nerfstudio's normalised frame, seen from the capture's world frame.

Extraction (:func:`pipeline.extract.extract_grid`) samples any
:class:`pipeline.field.RadianceField` in world units. :class:`WorldField` is one, made of a
field that answers in nerfstudio's frame (``density(x_N)``, ``color(x_N, d_N)``, its box
``aabb`` in that frame) and the :class:`~pipeline.nerfstudio.frames.NerfstudioFrame` between
the two: points go in through the frame, directions through its rotation, and densities
come back per world unit (``sigma_W = s sigma_N``), so the grid's opacity
``1 - exp(-sigma_W delta_W)`` is that of the same stretch of space nerfstudio rendered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.nerfstudio.frames import NerfstudioFrame


class WorldField:
    """``field`` (in nerfstudio's frame) through ``frame``: a world-frame radiance field."""

    def __init__(self, field: Any, frame: NerfstudioFrame) -> None:
        self.field = field
        self.frame = frame
        box = frame.world_box(np.asarray(torch.as_tensor(field.aabb).cpu(), dtype=np.float64))
        self.aabb = torch.as_tensor(box, dtype=torch.float32)  # (2, 3) world units
        self._rotation = torch.as_tensor(frame.rotation, dtype=torch.float32)
        self._translation = torch.as_tensor(frame.translation, dtype=torch.float32)

    def _to_nerfstudio(self, x: torch.Tensor) -> torch.Tensor:
        r, t = self._rotation.to(x), self._translation.to(x)
        return self.frame.scale * (x @ r.T + t)  # (N, 3)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` world points -> ``(N,)`` sigma per world unit."""
        return self.frame.scale * self.field.density(self._to_nerfstudio(x))

    def color(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` world points and unit directions -> ``(N, 3)`` RGB."""
        return self.field.color(self._to_nerfstudio(x), d @ self._rotation.to(d).T)


__all__ = ["WorldField"]

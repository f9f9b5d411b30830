"""Depth supervision of a NeRF's rays: where each ray's weight must end, and where it must not be.

Indoor captures seen from inside leave the density along each ray unconstrained by the
colours alone: a field renders the training views as well with a thin haze filling the
room as with opaque walls (the shape-radiance ambiguity), and its grids then look nothing
like the room. A measured depth ``D`` per ray removes that freedom with two terms, both
in units of the scene box's diagonal so that their weights do not depend on the scene's
units, both averaged over the rays that have a measurement (``D > 0``):

- **expected depth**, ``|sum_i w_i t_i - D|``: the ray terminates at the measured
  surface (DS-NeRF's and nerfstudio's depth-nerfacto's first term; L1, not L2, so that a
  sensor's outliers and a depth edge's mixed pixels pull less);
- **free space** (line of sight), ``sum_{i: t_i < D - margin} w_i``: the compositing
  weight in front of the surface, which is what a haze is. Urban Radiance Fields' and
  depth-nerfacto's "empty" term penalises the same samples' weights squared; the plain
  sum is used here because it keeps a constant pull on a thin haze, whose weights are
  small and whose squares vanish. ``margin`` leaves the surface's own footprint alone.

Weights ``w_i`` are the packed samples' compositing weights, ``t_i`` their midpoints.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from nerf_training.rendering import RaySamples


class DepthLosses(NamedTuple):
    expected_depth: torch.Tensor  # () mean |E[t] - D| / scale over measured rays
    free_space: torch.Tensor  # () mean weight in front of D - margin over measured rays


def depth_losses(
    weights: torch.Tensor,
    samples: RaySamples,
    rendered_depth: torch.Tensor,
    ray_depth: torch.Tensor,
    margin: float,
    scale: float = 1.0,
) -> DepthLosses:
    """The two depth terms of a batch of rays.

    Args:
        weights: ``(S,)`` compositing weights of the packed samples.
        samples: the packed samples (``t_starts``, ``t_ends``, ``ray_indices``), ``(S,)`` each.
        rendered_depth: ``(R,)`` expected termination distance of each ray.
        ray_depth: ``(R,)`` measured distance along each ray; 0 = no measurement.
        margin: distance in front of ``ray_depth`` that the free-space term leaves alone.
        scale: distances are divided by it (the box diagonal).
    """
    measured = ray_depth > 0  # (R,)
    count = measured.sum().clamp(min=1)
    expected = ((rendered_depth - ray_depth).abs() * measured).sum() / (count * scale)
    t_mid = (samples.t_starts + samples.t_ends) * 0.5  # (S,)
    limit = (ray_depth - margin)[samples.ray_indices]  # (S,)
    in_front = (t_mid < limit) & measured[samples.ray_indices]
    return DepthLosses(expected, (weights * in_front).sum() / count)

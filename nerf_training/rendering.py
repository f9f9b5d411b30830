"""Ray marching through an occupancy grid and volume rendering of packed samples.

nerfacc-style: samples are *packed* (a flat list of ``(ray_indices, t_starts, t_ends)``
sorted by ray, each ray contributing as many as it needs, no padding), and renderers take
functions (``sigma_fn``, ``rgb_sigma_fn``) rather than a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from nerf_training.occupancy import OccupancyGrid

SigmaFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(t_starts (S,), t_ends (S,), ray_indices (S,)) -> sigmas (S,)``."""
RgbSigmaFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(t_starts (S,), t_ends (S,), ray_indices (S,)) -> (rgbs (S, 3), sigmas (S,))``."""


@dataclass
class RaySamples:
    """Packed samples along rays, sorted by ray."""

    ray_indices: torch.Tensor  # (S,) int64
    t_starts: torch.Tensor  # (S,)
    t_ends: torch.Tensor  # (S,)

    def __len__(self) -> int:
        return int(self.ray_indices.numel())

    def select(self, keep: torch.Tensor) -> RaySamples:
        return RaySamples(self.ray_indices[keep], self.t_starts[keep], self.t_ends[keep])


def ray_aabb_intersect(
    origins: torch.Tensor, dirs: torch.Tensor, aabb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test. ``(R, 3)``, ``(R, 3)``, ``(2, 3)`` -> t_near ``(R,)``, t_far ``(R,)``, hit.

    ``t_near`` may be negative for rays starting inside the box (clamp with a near plane).
    """
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (aabb[0] - origins) / safe  # (R, 3)
    t1 = (aabb[1] - origins) / safe
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


def exclusive_segment_cumsum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int):
    """Per-ray exclusive prefix sum of packed ``(S,)`` values sorted by ray -> ``(S,)``.

    One global cumsum minus each segment's value at its start; done in float64 because the
    global sum over a whole batch dwarfs a single ray's optical depth.
    """
    v = values.double()
    excl = torch.cumsum(v, dim=0) - v  # (S,)
    counts = torch.bincount(ray_indices, minlength=n_rays)  # (R,)
    starts = torch.cumsum(counts, dim=0) - counts  # (R,) first sample of each ray
    return (excl - excl[starts[ray_indices]]).to(values.dtype)


def render_weight_from_density(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume-rendering weights ``w_i = T_i * alpha_i`` of packed samples.

    ``alpha_i = 1 - exp(-sigma_i * delta_i)``, ``T_i = exp(-sum_{j<i} sigma_j * delta_j)``
    within the sample's ray. Returns weights, transmittance and alphas, each ``(S,)``.
    """
    optical = sigmas * (t_ends - t_starts)  # (S,)
    transmittance = torch.exp(-exclusive_segment_cumsum(optical, ray_indices, n_rays))
    alphas = 1.0 - torch.exp(-optical)
    return transmittance * alphas, transmittance, alphas


def accumulate_along_rays(
    weights: torch.Tensor, values: torch.Tensor | None, ray_indices: torch.Tensor, n_rays: int
) -> torch.Tensor:
    """``sum_i w_i * v_i`` per ray: ``(S,)``, ``(S, C)`` or None (sum of weights) -> ``(R, C)``."""
    src = weights[:, None] if values is None else weights[:, None] * values  # (S, C)
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def march_rays(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    aabb: torch.Tensor,
    step_size: float,
    grid: OccupancyGrid | None = None,
    near_plane: float = 0.0,
    stratified: bool = False,
    sigma_fn: SigmaFn | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
) -> RaySamples:
    """Uniform steps inside the box, kept where the grid is occupied -> packed samples.

    ``origins``, ``dirs``: ``(R, 3)``, unit directions. ``stratified`` jitters each ray's
    start by a random fraction of a step (training). With ``sigma_fn``, samples are also
    dropped (without gradients) behind the point where transmittance falls below
    ``early_stop_eps`` (early ray termination) and where ``alpha < alpha_thre``.
    """
    n_rays = origins.shape[0]
    device = origins.device
    t_near, t_far, hit = ray_aabb_intersect(origins, dirs, aabb)
    t_near = t_near.clamp(min=near_plane)
    if stratified:
        t_near = t_near + torch.rand(n_rays, device=device) * step_size
    n_steps = torch.where(hit, torch.ceil((t_far - t_near) / step_size), 0).clamp(min=0).long()
    ray_indices = torch.repeat_interleave(torch.arange(n_rays, device=device), n_steps)  # (S,)
    first = torch.cumsum(n_steps, 0) - n_steps  # (R,)
    k = torch.arange(ray_indices.numel(), device=device) - first[ray_indices]  # step within ray
    t_starts = t_near[ray_indices] + k * step_size
    t_ends = torch.minimum(t_starts + step_size, t_far[ray_indices])
    samples = RaySamples(ray_indices, t_starts, t_ends)
    if grid is not None and len(samples):
        t_mid = (t_starts + t_ends) * 0.5
        points = origins[ray_indices] + dirs[ray_indices] * t_mid[:, None]  # (S, 3)
        samples = samples.select(grid.occupied(points))
    if sigma_fn is not None and len(samples):
        with torch.no_grad():
            sigmas = sigma_fn(samples.t_starts, samples.t_ends, samples.ray_indices)
            _, transmittance, alphas = render_weight_from_density(
                samples.t_starts, samples.t_ends, sigmas.float(), samples.ray_indices, n_rays
            )
            keep = (transmittance > early_stop_eps) & (alphas >= alpha_thre)
        samples = samples.select(keep)
    return samples


class RenderedRays(NamedTuple):
    rgb: torch.Tensor  # (R, 3)
    opacity: torch.Tensor  # (R,)
    depth: torch.Tensor  # (R,)
    weights: torch.Tensor  # (S,) compositing weight of each packed sample


def render_rays(
    rgb_sigma_fn: RgbSigmaFn,
    samples: RaySamples,
    n_rays: int,
    background: torch.Tensor | None = None,
) -> RenderedRays:
    """Volume-render packed samples -> rgb ``(R, 3)``, opacity, depth ``(R,)``, weights ``(S,)``.

    ``background``: ``(3,)`` or ``(R, 3)`` colour composited behind each ray (None: black).
    """
    rgbs, sigmas = rgb_sigma_fn(samples.t_starts, samples.t_ends, samples.ray_indices)
    weights, _, _ = render_weight_from_density(
        samples.t_starts, samples.t_ends, sigmas, samples.ray_indices, n_rays
    )
    rgb = accumulate_along_rays(weights, rgbs, samples.ray_indices, n_rays)  # (R, 3)
    opacity = accumulate_along_rays(weights, None, samples.ray_indices, n_rays)[:, 0]  # (R,)
    t_mid = ((samples.t_starts + samples.t_ends) * 0.5)[:, None]
    depth = accumulate_along_rays(weights, t_mid, samples.ray_indices, n_rays)[:, 0]
    if background is not None:
        rgb = rgb + (1.0 - opacity[:, None]) * background
    return RenderedRays(rgb, opacity, depth, weights)


def distortion_loss(
    weights: torch.Tensor, samples: RaySamples, n_rays: int, scale: float = 1.0
) -> torch.Tensor:
    """Mip-NeRF 360's distortion loss of packed samples, averaged over ``n_rays`` rays.

    Per ray, with ``s`` the interval midpoints and ``d`` their lengths, both divided by
    ``scale`` (e.g. the scene's diagonal, so that the loss weight does not depend on
    the scene's units)::

        sum_ij w_i w_j |s_i - s_j|  +  1/3 sum_i w_i^2 d_i

    It is smallest when a ray's weight sits in one short interval, which is what
    removes the semi-transparent "floaters" that fit the training views but show in
    new ones. Samples are sorted along each ray, so the double sum is
    ``2 sum_i w_i (s_i W_<i - (w s)_<i)`` with per-ray exclusive prefix sums: O(S).
    """
    s = (samples.t_starts + samples.t_ends) * (0.5 / scale)  # (S,)
    d = (samples.t_ends - samples.t_starts) / scale  # (S,)
    w_before = exclusive_segment_cumsum(weights, samples.ray_indices, n_rays)  # (S,)
    ws_before = exclusive_segment_cumsum(weights * s, samples.ray_indices, n_rays)  # (S,)
    pairwise = 2.0 * weights * (s * w_before - ws_before)
    own = weights.square() * d / 3.0
    return (pairwise + own).sum() / max(n_rays, 1)


def field_functions(field, origins: torch.Tensor, dirs: torch.Tensor):
    """``sigma_fn`` and ``rgb_sigma_fn`` that query ``field`` at the samples of these rays."""

    def points(t_starts, t_ends, ray_indices):
        t_mid = (t_starts + t_ends) * 0.5
        return origins[ray_indices] + dirs[ray_indices] * t_mid[:, None]  # (S, 3)

    def sigma_fn(t_starts, t_ends, ray_indices):
        return field.density(points(t_starts, t_ends, ray_indices))

    def rgb_sigma_fn(t_starts, t_ends, ray_indices):
        sigma, rgb = field(points(t_starts, t_ends, ray_indices), dirs[ray_indices])
        return rgb, sigma

    return sigma_fn, rgb_sigma_fn

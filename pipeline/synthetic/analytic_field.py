"""The analytic radiance field of a synthetic room: a union of yawed boxes (contract 3).

Geometry is a set of parts, each a box with a centre, half extents and a yaw about
``z``. The union's signed distance is ``sdf(x) = min_p sdf_p(x)`` with the exact box
distance per part (1-Lipschitz, which the culling below relies on). Density is a
smooth step of the signed distance with **compact support**:

    sigma(x) = sigma_max * smoothstep((w - sdf(x)) / (2 w)),   sigma_max = tau / w

so sigma is exactly 0 farther than ``w`` (the ramp width) from every part, rises
smoothly (C1) across the surface and is ``sigma_max`` deeper than ``w`` inside. The
compact support is what lets the renderer and the grid sampler evaluate only the
parts that can matter and still be exact; ``tau`` (the optical depth across the ramp
at normal incidence) makes every surface opaque within ``w`` of it.

Colour is view-independent: the texture of the part nearest to ``x`` (defined
everywhere, free space included), times a baked shading term from that part's face
normal, so the same colour is seen from every direction and averaging over
directions when sampling a grid is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from pipeline.synthetic.textures import TEXTURE_WIDTH, texture_colour


@dataclass(frozen=True)
class FieldConfig:
    """Optical constants of the analytic field."""

    ramp_width: float = 0.01
    """``w``: density rises from 0 at distance ``w`` outside a part to full at ``w`` inside (m)."""
    ramp_optical_depth: float = 40.0
    """``tau = sigma_max * w``; 40 leaves transmittance < 1e-3 at the surface itself."""
    ambient: float = 0.72
    """Shading is ``ambient + (1 - ambient) * dot(normal, light)``: faces differ, none go black."""
    light_direction: tuple[float, float, float] = (0.35, 0.55, 0.75)
    """Direction towards the (baked, view-independent) light, normalised on use."""
    chunk_points: int = 1 << 21
    """Upper bound on points x parts evaluated at once by :meth:`BoxUnionField.density`."""


@dataclass(frozen=True)
class BoxParts:
    """Geometry and appearance of every part of a scene, numpy, one row per part."""

    centre: np.ndarray  # (P, 3) world position of the box centre
    half: np.ndarray  # (P, 3) half extents along the part's own axes
    yaw: np.ndarray  # (P,) rotation about +z, radians
    label: np.ndarray  # (P,) semantic class id
    instance: np.ndarray  # (P,) index of the furniture object, -1 for walls/floor/ceiling
    texture_offset: np.ndarray  # (P, 3) part centre in its object's texture frame
    texture: np.ndarray  # (P, TEXTURE_WIDTH) rows of TextureParams.flat()

    def __post_init__(self) -> None:
        p = len(self.yaw)
        shapes = {
            "centre": (p, 3),
            "half": (p, 3),
            "label": (p,),
            "instance": (p,),
            "texture_offset": (p, 3),
            "texture": (p, TEXTURE_WIDTH),
        }
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"BoxParts.{name}: expected shape {shape}, got {np.shape(getattr(self, name))}"
                )
        if np.any(np.asarray(self.half) <= 0):
            raise ValueError("BoxParts.half: every half extent must be > 0")

    def __len__(self) -> int:
        return len(self.yaw)


class NearestPart(NamedTuple):
    sdf: torch.Tensor  # (...,) signed distance to the union
    part: torch.Tensor  # (...,) int64 index of the nearest part


def smoothstep(u: torch.Tensor) -> torch.Tensor:
    u = u.clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _safe_reciprocal(v: torch.Tensor) -> torch.Tensor:
    tiny = torch.where(v >= 0, 1e-12, -1e-12)
    return 1.0 / torch.where(v.abs() < 1e-12, tiny, v)


class BoxUnionField:
    """A :class:`pipeline.field.RadianceField` made of textured, yawed boxes."""

    def __init__(self, parts: BoxParts, aabb: np.ndarray, config: FieldConfig | None = None):
        self.config = config or FieldConfig()
        self.parts = parts
        f32 = dict(dtype=torch.float32)
        self.aabb = torch.as_tensor(np.asarray(aabb), **f32).reshape(2, 3)  # (2, 3)
        self.centre = torch.as_tensor(parts.centre, **f32)  # (P, 3)
        self.half = torch.as_tensor(parts.half, **f32)  # (P, 3)
        self.cos = torch.cos(torch.as_tensor(parts.yaw, dtype=torch.float64)).float()  # (P,)
        self.sin = torch.sin(torch.as_tensor(parts.yaw, dtype=torch.float64)).float()  # (P,)
        self.texture_offset = torch.as_tensor(parts.texture_offset, **f32)  # (P, 3)
        light = np.asarray(self.config.light_direction, dtype=np.float64)
        self.light = torch.as_tensor(light / np.linalg.norm(light), **f32)  # (3,)
        self.sigma_max = self.config.ramp_optical_depth / self.config.ramp_width

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def ramp_width(self) -> float:
        return self.config.ramp_width

    # ---------------------------------------------------------------- geometry
    def part_sdf(self, x: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Signed distance of points ``(B, S, 3)`` to each part of ``(B, K)``: ``(B, S, K)``."""
        cx, cy, cz = (self.centre[candidates, i].unsqueeze(1) for i in range(3))  # (B, 1, K)
        hx, hy, hz = (self.half[candidates, i].unsqueeze(1) for i in range(3))
        cs = self.cos[candidates].unsqueeze(1)
        sn = self.sin[candidates].unsqueeze(1)
        dx, dy, dz = x[..., 0:1] - cx, x[..., 1:2] - cy, x[..., 2:3] - cz  # (B, S, K)
        qx = (cs * dx + sn * dy).abs_().sub_(hx)
        qy = (cs * dy - sn * dx).abs_().sub_(hy)
        qz = dz.abs_().sub_(hz)
        inside = torch.maximum(torch.maximum(qx, qy), qz).clamp_(max=0.0)
        outside = qx.clamp_(min=0.0).square_() + qy.clamp_(min=0.0).square_()
        return outside.add_(qz.clamp_(min=0.0).square_()).sqrt_().add_(inside)

    def nearest_part(self, x: torch.Tensor, candidates: torch.Tensor | None = None) -> NearestPart:
        """Signed distance to the union and the nearest part, among ``candidates`` only.

        ``x`` is ``(B, S, 3)`` and ``candidates`` ``(B, K)`` part indices shared by the
        ``S`` points of each row (a ray's samples, a tile's voxels); with ``None``, ``x``
        may be ``(N, 3)`` and every part is a candidate. Exact whenever the candidates
        include every part that can be the nearest (the renderer and the grid sampler
        guarantee this; :meth:`density` passes all parts). Candidates must be in
        ascending order so that ties resolve to the lowest part index everywhere.
        """
        flat = candidates is None
        if flat:
            x = x.reshape(1, -1, 3)
            candidates = torch.arange(self.num_parts).reshape(1, -1)
        sdf_k = self.part_sdf(x, candidates)  # (B, S, K)
        sdf, k = sdf_k.min(-1)  # (B, S)
        part = torch.gather(candidates, 1, k.flatten(1)).reshape(k.shape)
        if flat:
            return NearestPart(sdf[0], part[0])
        return NearestPart(sdf, part)

    def sigma_from_sdf(self, sdf: torch.Tensor) -> torch.Tensor:
        w = self.config.ramp_width
        return self.sigma_max * smoothstep((w - sdf) / (2.0 * w))

    def colour_of(self, x: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """Colour ``(..., 3)`` of world points ``(..., 3)`` whose nearest part is ``part (...,)``.

        Points are grouped by part so each group uses that part's parameters as scalars
        (gathering a texture row per point would cost more than the texture itself).
        """
        flat_x, flat_part = x.reshape(-1, 3), part.reshape(-1)
        order = torch.argsort(flat_part, stable=True)
        counts = torch.bincount(flat_part, minlength=self.num_parts).tolist()
        sorted_x = flat_x[order]
        pieces, start = [], 0
        for p, n in enumerate(counts):
            if n:
                pieces.append(self._part_colour(sorted_x[start : start + n], p))
                start += n
        out = torch.empty_like(flat_x)
        out[order] = torch.cat(pieces) if pieces else flat_x.new_zeros(0, 3)
        return out.reshape(x.shape)

    def _part_colour(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """Colour ``(n, 3)`` of points ``(n, 3)`` as seen on part ``p``."""
        cs, sn = self.cos[p], self.sin[p]
        d = x - self.centre[p]
        local = torch.stack([cs * d[:, 0] + sn * d[:, 1], cs * d[:, 1] - sn * d[:, 0], d[:, 2]], -1)
        albedo = texture_colour(local + self.texture_offset[p], self.parts.texture[p])
        # Face normal of the box: the outward direction outside, the closest face's
        # axis inside; taken in the part frame, so the light is turned instead.
        q = local.abs() - self.half[p]
        out = q.clamp(min=0.0)
        out_len = out.norm(dim=-1, keepdim=True)
        face = torch.nn.functional.one_hot(q.argmax(-1), 3).to(x.dtype)
        normal = torch.where(out_len > 0, out / out_len.clamp(min=1e-12), face) * torch.sign(local)
        lx, ly, lz = self.light
        light = torch.stack([cs * lx + sn * ly, cs * ly - sn * lx, lz])
        a = self.config.ambient
        shade = a + (1.0 - a) * (normal * light).sum(-1, keepdim=True)
        return (albedo * shade).clamp(0.0, 1.0)

    def box_intervals(
        self, origins: torch.Tensor, dirs: torch.Tensor, dilate: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where rays ``(R, 3)`` cross every part box, and every box grown by ``dilate``.

        Returns ``(t_in, t_out, grown_in, grown_out)``, each ``(R, P)``; a ray misses a
        box where its exit is not after its entry.
        """
        cs, sn = self.cos, self.sin  # (P,)
        ox, oy, oz = (origins[:, i : i + 1] - self.centre[:, i] for i in range(3))  # (R, P)
        dx, dy, dz = (dirs[:, i : i + 1] for i in range(3))  # (R, 1)
        inv_x = _safe_reciprocal(cs * dx + sn * dy)  # (R, P) part-frame direction
        inv_y = _safe_reciprocal(cs * dy - sn * dx)
        inv_z = _safe_reciprocal(dz).expand_as(inv_x)
        centre_t = [-(cs * ox + sn * oy) * inv_x, -(cs * oy - sn * ox) * inv_y, -oz * inv_z]
        # |half / v|: the slab's half width in t around the point nearest its centre plane
        spread = [inv_x.abs(), inv_y.abs(), inv_z.abs()]
        out = []
        for grow in (0.0, dilate):
            h = [spread[i] * (self.half[:, i] + grow) for i in range(3)]
            t_in = torch.maximum(
                torch.maximum(centre_t[0] - h[0], centre_t[1] - h[1]), centre_t[2] - h[2]
            )
            t_out = torch.minimum(
                torch.minimum(centre_t[0] + h[0], centre_t[1] + h[1]), centre_t[2] + h[2]
            )
            out += [t_in, t_out]
        return tuple(out)

    # ------------------------------------------------------- contract 3 (field)
    def _per_chunk(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Apply ``fn(NearestPart)`` over ``(N, 3)`` points in chunks that bound memory."""
        x = x.to(torch.float32).reshape(-1, 3)
        step = max(1, self.config.chunk_points // self.num_parts)
        return torch.cat(
            [fn(self.nearest_part(x[i : i + step])) for i in range(0, max(len(x), 1), step)]
        )

    @torch.no_grad()
    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` -> ``(N,)`` signed distance to the union of all parts."""
        return self._per_chunk(x, lambda near: near.sdf)

    @torch.no_grad()
    def density(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` -> ``(N,)`` sigma >= 0 (per metre)."""
        return self.sigma_from_sdf(self.sdf(x))

    @torch.no_grad()
    def color(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` points, ``(N, 3)`` directions (unused: view-independent) -> ``(N, 3)``."""
        x = x.to(torch.float32).reshape(-1, 3)
        return self.colour_of(x, self._per_chunk(x, lambda near: near.part))

    @torch.no_grad()
    def label(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` -> ``(N,)`` int64 class of the part holding each point inside (0 = none)."""
        labels = torch.as_tensor(self.parts.label, dtype=torch.int64)
        return self._per_chunk(x, lambda near: torch.where(near.sdf < 0, labels[near.part], 0))

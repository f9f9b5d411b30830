"""Pinhole cameras with OpenCV lens distortion, and the rays through their pixels.

Conventions (the ones Blender, nerfstudio and instant-ngp ``transforms.json`` use):

- ``c2w`` is camera-to-world in the OpenGL convention: the camera looks down its
  local ``-z`` axis, ``+y`` is up in the image, ``+x`` is right.
- Pixel coordinates are continuous with the origin at the top-left corner of the
  image: pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)`` and its centre is
  ``(i + 0.5, j + 0.5)``. ``cx, cy`` are in the same coordinates, so an undistorted
  camera with ``cx = W / 2`` has its optical axis through the middle of the image.
- Distortion is OpenCV's (Brown-Conrady, 4 coefficients) acting on normalised image
  coordinates ``x = (u - cx) / fx``, ``y = (v - cy) / fy`` with ``y`` pointing down:
  ``x_d = x (1 + k1 r^2 + k2 r^4) + 2 p1 x y + p2 (r^2 + 2 x^2)`` and
  ``y_d = y (1 + k1 r^2 + k2 r^4) + p1 (r^2 + 2 y^2) + 2 p2 x y``.
  A ray through a (distorted) pixel needs the inverse of that map; it has no closed
  form, so it is solved by Newton's method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Newton on the 2x2 distortion map converges quadratically from the distorted point
# for any lens a pinhole-plus-4-coefficient model describes well: a few steps reach
# float32 round-off, the cap only guards pathological coefficients.
_UNDISTORT_MAX_ITERATIONS = 10
# Normalised image units: 1e-6 is a thousandth of a pixel at a focal length of 1000 px.
_UNDISTORT_TOLERANCE = 1e-6


def distort_normalized(
    x: torch.Tensor, y: torch.Tensor, coeffs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's forward lens model: undistorted -> distorted normalised coordinates.

    ``x, y``: ``(R,)``; ``coeffs``: ``(R, 4)`` as ``k1, k2, p1, p2``. Returns ``(R,)`` twice.
    """
    k1, k2, p1, p2 = coeffs.unbind(-1)
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * k2)
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def undistort_normalized(
    xd: torch.Tensor, yd: torch.Tensor, coeffs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`distort_normalized`, by Newton's method on the 2x2 system.

    ``xd, yd``: ``(R,)`` distorted normalised coordinates; ``coeffs``: ``(R, 4)``.
    Returns the undistorted ``(R,)`` coordinates; rows with zero coefficients come
    back unchanged (their residual is zero from the first step).
    """
    k1, k2, p1, p2 = coeffs.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(_UNDISTORT_MAX_ITERATIONS):
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * k2)
        d_radial = k1 + 2.0 * k2 * r2  # d(radial)/d(r2); d(r2)/dx = 2x
        fx, fy = distort_normalized(x, y, coeffs)
        fx, fy = fx - xd, fy - yd
        j_xx = radial + 2.0 * x * x * d_radial + 2.0 * p1 * y + 6.0 * p2 * x
        j_xy = 2.0 * x * y * d_radial + 2.0 * p1 * x + 2.0 * p2 * y
        j_yx = 2.0 * x * y * d_radial + 2.0 * p2 * y + 2.0 * p1 * x
        j_yy = radial + 2.0 * y * y * d_radial + 2.0 * p2 * x + 6.0 * p1 * y
        det = j_xx * j_yy - j_xy * j_yx
        # A singular Jacobian only occurs far outside any lens' valid field of view;
        # keep the step finite there rather than poisoning the batch with NaN.
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        step_x = (fx * j_yy - fy * j_xy) / det
        step_y = (fy * j_xx - fx * j_yx) / det
        x, y = x - step_x, y - step_y
        if torch.maximum(step_x.abs().max(), step_y.abs().max()) < _UNDISTORT_TOLERANCE:
            break
    return x, y


@dataclass
class Cameras:
    """``N`` pinhole cameras sharing one image size, each with its own intrinsics.

    Intrinsics are in pixels at the resolution the images were loaded at (already
    divided by any downscale factor). Treat an instance as immutable: ray generation
    uses packed copies made at construction (``to`` builds a new instance).
    """

    c2w: torch.Tensor
    """``(N, 4, 4)`` float32 camera-to-world, OpenGL convention, world units."""
    fx: torch.Tensor
    """``(N,)`` float32 focal length along x, pixels."""
    fy: torch.Tensor
    """``(N,)`` float32 focal length along y, pixels."""
    cx: torch.Tensor
    """``(N,)`` float32 principal point x, pixels from the left image edge."""
    cy: torch.Tensor
    """``(N,)`` float32 principal point y, pixels from the top image edge."""
    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""
    distortion: torch.Tensor
    """``(N, 4)`` float32 OpenCV ``k1, k2, p1, p2``; zeros for an ideal pinhole."""
    _distorted: bool = field(init=False, repr=False)
    _pose_rows: torch.Tensor = field(init=False, repr=False)
    """``(N, 12)`` the top 3 rows of ``c2w``, flat: ``index_select`` on it is ~10x
    faster than advanced indexing of ``(N, 4, 4)``."""
    _lens: torch.Tensor = field(init=False, repr=False)
    """``(N, 8)`` fx, fy, cx, cy, k1, k2, p1, p2: one gather per batch of rays."""

    def __post_init__(self) -> None:
        n = self.c2w.shape[0]
        if self.c2w.shape != (n, 4, 4):
            raise ValueError(f"c2w must have shape (N, 4, 4), got {tuple(self.c2w.shape)}")
        for name in ("fx", "fy", "cx", "cy"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")
        if self.distortion.shape != (n, 4):
            raise ValueError(f"distortion must have shape ({n}, 4)")
        # Decided once here: checking per batch would force a device sync every step.
        self._distorted = bool(self.distortion.abs().max() > 0) if n else False
        self._pose_rows = self.c2w[:, :3, :].reshape(n, 12)
        self._lens = torch.cat(
            [torch.stack([self.fx, self.fy, self.cx, self.cy], dim=-1), self.distortion], dim=-1
        )

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            c2w=self.c2w.to(device),
            fx=self.fx.to(device),
            fy=self.fy.to(device),
            cx=self.cx.to(device),
            cy=self.cy.to(device),
            width=self.width,
            height=self.height,
            distortion=self.distortion.to(device),
        )

    def generate_rays(
        self, cam_idx: torch.Tensor, px: torch.Tensor, py: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space rays through continuous pixel positions.

        ``cam_idx``: ``(R,)`` int64 camera indices; ``px, py``: ``(R,)`` pixel coordinates
        (a pixel's centre is ``i + 0.5``). Returns ``origins (R, 3)`` and unit
        ``directions (R, 3)``, both float32 on the cameras' device.
        """
        lens = self._lens.index_select(0, cam_idx)  # (R, 8)
        fx, fy, cx, cy = lens[:, :4].unbind(-1)  # (R,) each
        x = (px.to(fx.dtype) - cx) / fx  # (R,) normalised, +x right
        y = (py.to(fy.dtype) - cy) / fy  # (R,) normalised, +y down
        if self._distorted:
            x, y = undistort_normalized(x, y, lens[:, 4:])
        # OpenCV image axes -> OpenGL camera axes: y flips (up), the camera looks down -z.
        dirs_cam = torch.stack([x, -y, -torch.ones_like(x)], dim=-1)  # (R, 3)
        pose = self._pose_rows.index_select(0, cam_idx).view(-1, 3, 4)  # (R, 3, 4)
        dirs = torch.bmm(pose[:, :, :3], dirs_cam.unsqueeze(-1)).squeeze(-1)  # (R, 3)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = pose[:, :, 3].contiguous()  # (R, 3)
        return origins, dirs

    def image_rays(self, cam: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays through every pixel centre of one camera, row-major (for rendering a view).

        Returns ``origins (H * W, 3)`` and ``directions (H * W, 3)``; reshape to
        ``(H, W, 3)`` to match the image.
        """
        ys, xs = torch.meshgrid(
            torch.arange(self.height, device=self.device, dtype=torch.float32) + 0.5,
            torch.arange(self.width, device=self.device, dtype=torch.float32) + 0.5,
            indexing="ij",
        )  # (H, W) each
        idx = torch.full((self.height * self.width,), cam, dtype=torch.long, device=self.device)
        return self.generate_rays(idx, xs.reshape(-1), ys.reshape(-1))

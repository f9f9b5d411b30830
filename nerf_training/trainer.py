"""Per-scene Instant-NGP training loop: rays -> packed samples -> field -> photometric loss.

The batch is sized in samples, not rays (Instant-NGP's 2^18 on a GPU): the number of rays
follows the number of samples the occupancy grid and early termination leave per ray.
Training stops at a step count, a wall-time budget (evaluation excluded) or a held-out PSNR.
A non-finite loss or gradient restores the last good state at a lower learning rate.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from nerf_training.depth import ray_distance
from nerf_training.depth_loss import depth_losses
from nerf_training.field import (
    FieldConfig,
    NGPField,
    cpu_field_config,
    pixel_matched_resolution,
    resolve_backend,
)
from nerf_training.occupancy import OccupancyGrid, OccupancyGridConfig
from nerf_training.rendering import (
    RaySamples,
    RenderedRays,
    distortion_loss,
    field_functions,
    march_rays,
    render_rays,
)
from nerf_training.scene import Scene
from nerfmae_common.devices import resolve_device
from nerfmae_common.psnr import psnr_from_mse

logger = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    """Everything that decides how one scene's NeRF is trained."""

    field: FieldConfig | None = None
    """The network; None picks Instant-NGP's on CUDA and ``cpu_field_config()`` on CPU."""
    backend: str = "auto"
    """Hash-grid backend: "auto", "tcnn" or "torch" (overrides ``field.backend``)."""
    finest_resolution: int | None = None
    """The field's finest hash-grid resolution (vertices per side over the box). None: for a
    preset field, matched to the size of a training pixel in the scene
    (``pixel_matched_resolution``: 256 for lego_200, 64 for 64x64 synthetic rooms), else
    the field's own."""
    occupancy: OccupancyGridConfig | None = None
    """Empty-space-skipping grid; None: 128^3 on CUDA, 64^3 on CPU (a full 128^3 warm-up
    update costs more than a dozen CPU training steps; 64^3 costs under one)."""
    max_steps: int | None = 20000
    """Stop after this many optimiser steps (None: no step limit)."""
    time_budget_s: float | None = None
    """Stop once this much training wall time is spent (evaluation excluded)."""
    target_psnr: float | None = None
    """Stop once the quick held-out PSNR (on ``check_rays`` pixels) reaches this (dB)."""
    lr: float = 1e-2
    """Adam learning rate (Instant-NGP)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (Instant-NGP)."""
    eps: float = 1e-15
    """Adam epsilon (Instant-NGP)."""
    mlp_weight_decay: float = 1e-6
    """L2 weight decay on the MLP weights only (the hash tables get none)."""
    lr_warmup_steps: int = 100
    """Linear learning-rate warm-up from 1% over this many steps."""
    lr_milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Fractions of training (steps or time budget) at which the lr is multiplied by gamma."""
    lr_gamma: float = 0.33
    """Learning-rate decay factor at each milestone."""
    target_samples: int | None = None
    """Samples per batch; None: 2^18 on CUDA, 2^16 on CPU."""
    initial_rays: int = 1024
    """Rays in the first batch (adapted every step to hit ``target_samples``)."""
    max_rays: int = 1 << 16
    """Upper bound on rays per batch."""
    samples_per_diagonal: int | None = None
    """Training render step = box diagonal / this (the step used on every ray); None: 512
    on CUDA, 128 on CPU (on CPU a coarse step buys 4x the rays per batch: +1.2 dB after 2
    minutes on lego_200 against 256, +3 dB against 512)."""
    eval_samples_per_diagonal: int | None = None
    """Evaluation render step = box diagonal / this; None: the training one, but at least
    512 on CUDA and 256 on CPU (a field trained with a coarse step renders ~0.3 dB better
    with a finer one)."""
    occupancy_samples_per_diagonal: int = 512
    """The occupancy grid thresholds density x (box diagonal / this), not the training render
    step: with a coarse one (diagonal / 256 or coarser) an untrained field's density of ~1
    is above the threshold and every cell stays occupied (lego_200: 100% occupied after a
    minute of CPU training, -3 dB at two minutes). 1024 (Instant-NGP's minimum step) does as
    well on lego but culls still-faint surfaces of small scenes early."""
    early_stop_eps: float = 1e-4
    """Drop samples once transmittance falls below this."""
    alpha_thre: float = 0.0
    """Drop samples whose opacity is below this (0: keep all occupied samples)."""
    use_depth: bool = True
    """Supervise the rays with the scene's depth maps when it has them (False: RGB only)."""
    depth_weight: float = 0.1
    """Weight of the expected-depth L1 term (distances in box diagonals); see
    :mod:`nerf_training.depth_loss`."""
    free_space_weight: float = 0.1
    """Weight of the free-space term: compositing weight in front of the measured surface."""
    depth_margin: float = 0.01
    """Free-space term: distance in front of the measured depth it leaves alone, as a
    fraction of the box diagonal (the surface's own footprint and the sensor's noise)."""
    distortion_weight: float = 0.0
    """Weight of Mip-NeRF 360's distortion loss (distances in units of the box diagonal)
    added to the photometric MSE; it removes semi-transparent floaters (0: off)."""
    check_every: int = 250
    """Steps between quick held-out PSNR checks (for ``target_psnr``; 0 disables)."""
    check_rays: int = 4096
    """Held-out pixels in a quick check (a fixed random subset)."""
    eval_chunk: int = 8192
    """Rays rendered at once during evaluation."""
    snapshot_every: int = 50
    """Steps between in-memory snapshots used to recover from divergence."""
    divergence_lr_factor: float = 0.5
    """Learning-rate multiplier applied after each divergence."""
    max_divergences: int = 8
    """Give up (RuntimeError) after this many divergences."""
    amp: str = "auto"
    """Autocast dtype on CUDA: "auto" (bf16 where supported, else fp16), "bf16", "fp16",
    "none". Never used on CPU."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda"."""
    num_threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""
    seed: int = 0
    """Seed for the ray sampler and the initialisation."""
    downscale: int = 1
    """Image downscale factor passed to the scene reader."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_field_config(
    config: TrainerConfig, device: torch.device, scene: Scene | None = None
) -> FieldConfig:
    """The field config actually trained: preset by device, backend from the trainer config.

    The finest hash level is ``config.finest_resolution`` when set; for a preset (no
    ``config.field``) it is otherwise matched to the training pixels of ``scene``
    (:func:`pixel_matched_resolution`), never finer than the preset's own.
    """
    base = config.field or (FieldConfig() if device.type == "cuda" else cpu_field_config())
    backend = config.backend if config.backend != "auto" else base.backend
    if backend == "tcnn" and device.type != "cuda":
        raise ValueError("backend 'tcnn' needs a CUDA device")
    backend = resolve_backend(backend) if device.type == "cuda" else "torch"
    encoding = base.encoding
    finest = config.finest_resolution
    if finest is not None and finest <= encoding.base_resolution:
        raise ValueError(
            f"TrainerConfig.finest_resolution must exceed the base resolution "
            f"{encoding.base_resolution}, got {finest}"
        )
    if finest is None and config.field is None and scene is not None:
        matched = pixel_matched_resolution(
            scene.aabb,
            scene.camera_origins(scene.train_idx),
            scene.cameras.fx[scene.train_idx],
        )
        finest = min(encoding.finest_resolution, max(matched, 2 * encoding.base_resolution))
    if finest is not None:
        encoding = replace(encoding, finest_resolution=finest)
    return FieldConfig(**{**asdict(base), "encoding": encoding, "backend": backend})


# ----------------------------------------------------------------------------- image metrics


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    return psnr_from_mse(float(torch.mean((pred.float() - target.float()) ** 2)))


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of ``(H, W, C)`` images in [0, 1]: Gaussian window 11, sigma 1.5, valid region.

    Wang et al. 2004 with C1 = 0.01^2, C2 = 0.03^2, per channel, averaged.
    """
    x = pred.float().permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)
    y = target.float().permute(2, 0, 1).unsqueeze(0)
    c = x.shape[1]
    coords = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).to(x.device)

    def blur(t):
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(s.mean())


# ----------------------------------------------------------------------------- the trainer


class NerfTrainer:
    """Trains an :class:`NGPField` on one :class:`~nerf_training.scene.Scene`."""

    def __init__(self, scene, config: TrainerConfig):
        self.scene = scene
        self.config = config
        self.device = resolve_device(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.field_config = resolve_field_config(config, self.device, scene)
        aabb = scene.aabb.to(self.device)
        self.field = NGPField(self.field_config, aabb).to(self.device)
        grid_config = config.occupancy or OccupancyGridConfig(
            resolution=128 if self.device.type == "cuda" else 64
        )
        self.grid = OccupancyGrid(aabb, grid_config).to(self.device)
        self.diagonal = diagonal = float(torch.linalg.norm(aabb[1] - aabb[0]))
        cuda = self.device.type == "cuda"
        train_spd = config.samples_per_diagonal or (512 if cuda else 128)
        eval_spd = config.eval_samples_per_diagonal or max(train_spd, 512 if cuda else 256)
        self.step_size = diagonal / train_spd
        self.eval_step_size = diagonal / eval_spd
        self.occupancy_step = diagonal / config.occupancy_samples_per_diagonal
        self.optimizer = torch.optim.Adam(
            [
                {"params": [self.field.encoding.params], "weight_decay": 0.0},
                {"params": self.field.mlp_parameters(), "weight_decay": config.mlp_weight_decay},
            ],
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
        )
        default_samples = 1 << 18 if self.device.type == "cuda" else 1 << 16
        self.target_samples = config.target_samples or default_samples
        self.images = scene.images.to(self.device)  # (N, H, W, C) uint8
        self.cameras = scene.cameras.to(self.device)
        self.train_idx = scene.train_idx.to(self.device)
        has_depth = config.use_depth and scene.depths is not None
        self.depths = scene.depths.to(self.device) if has_depth else None  # (N, H, W)
        self.white = torch.ones(3, device=self.device)
        self.step = 0
        self.elapsed_s = 0.0
        self.n_rays = config.initial_rays
        self.lr_scale = 1.0
        self.divergences = 0
        self.last_check_psnr: float | None = None
        self._snapshot = self._capture()
        self._check_set = self._holdout_pixels(config.check_rays)

    # ---------------------------------------------------------------- state

    def _capture(self) -> dict:
        return copy.deepcopy(
            {
                "field": self.field.state_dict(),
                "grid": self.grid.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
            }
        )

    def _restore(self, snap: dict) -> None:
        self.field.load_state_dict(snap["field"])
        self.grid.load_state_dict(snap["grid"])
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        self.step = snap["step"]

    def state_dict(self) -> dict:
        """Checkpoint payload: tensors and primitive containers only (weights_only-safe)."""
        return {
            "state_dict": self.field.state_dict(),
            "occupancy": self.grid.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "n_rays": self.n_rays,
            "lr_scale": self.lr_scale,
            "divergences": self.divergences,
            "config": self.config.to_dict(),
            "field_config": asdict(self.field_config),
            "backend": self.field_config.backend,
            "scene_aabb": self.scene.aabb.clone(),
            "camera_origins": self.scene.camera_origins(self.scene.train_idx).float().clone(),
        }

    def load_state_dict(self, ckpt: dict) -> None:
        self.field.load_state_dict(ckpt["state_dict"])
        self.grid.load_state_dict(ckpt["occupancy"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.elapsed_s = float(ckpt["elapsed_s"])
        self.n_rays = int(ckpt["n_rays"])
        self.lr_scale = float(ckpt["lr_scale"])
        self.divergences = int(ckpt["divergences"])
        self._snapshot = self._capture()

    # ---------------------------------------------------------------- schedule

    def progress(self) -> float:
        """Fraction of training done, by steps or by time budget, whichever is further."""
        parts = [0.0]
        if self.config.max_steps:
            parts.append(self.step / self.config.max_steps)
        if self.config.time_budget_s:
            parts.append(self.elapsed_s / self.config.time_budget_s)
        return max(parts)

    def learning_rate(self) -> float:
        cfg = self.config
        warm = min(1.0, 0.01 + 0.99 * self.step / max(cfg.lr_warmup_steps, 1))
        decays = sum(self.progress() >= m for m in cfg.lr_milestones)
        return cfg.lr * warm * cfg.lr_gamma**decays * self.lr_scale

    # ---------------------------------------------------------------- one step

    def _sample_batch(self, n_rays: int):
        """Random training pixels -> origins, dirs, targets, backgrounds, each ``(R, 3)``, and
        the measured distance along each ray ``(R,)`` (None without depth maps)."""
        _, h, w, _ = self.images.shape
        g = self.generator
        cam = self.train_idx[torch.randint(len(self.train_idx), (n_rays,), generator=g)]
        x = torch.randint(w, (n_rays,), generator=g).to(self.device)
        y = torch.randint(h, (n_rays,), generator=g).to(self.device)
        cam = cam.to(self.device)
        origins, dirs = self.cameras.generate_rays(cam, x + 0.5, y + 0.5)
        pixels = self.images[cam, y, x].float() / 255.0  # (R, C)
        if self.scene.has_alpha:
            # A random background per ray stops the field from explaining the background
            # colour with density (Instant-NGP's trick for transparent Blender frames).
            background = torch.rand(n_rays, 3, device=self.device)
            alpha = pixels[:, 3:4]
            target = pixels[:, :3] * alpha + background * (1 - alpha)
        else:
            background, target = None, pixels[:, :3]
        ray_depth = None
        if self.depths is not None:
            ray_depth = ray_distance(self.depths[cam, y, x], dirs, self.cameras.c2w[cam])
        return origins, dirs, target, background, ray_depth

    def _autocast(self):
        if self.device.type != "cuda" or self.config.amp == "none":
            return torch.autocast("cpu", enabled=False)
        amp = self.config.amp
        if amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def render(self, origins, dirs, background, train: bool) -> tuple[RenderedRays, RaySamples]:
        """Render rays ``(R, 3)``; returns the rendering and the packed samples behind it."""
        sigma_fn, rgb_sigma_fn = field_functions(self.field, origins, dirs)
        with self._autocast():
            samples = march_rays(
                origins,
                dirs,
                self.field.aabb,
                self.step_size if train else self.eval_step_size,
                grid=self.grid,
                stratified=train,
                sigma_fn=sigma_fn,
                early_stop_eps=self.config.early_stop_eps,
                alpha_thre=self.config.alpha_thre,
            )
            rendered = render_rays(rgb_sigma_fn, samples, len(origins), background)
        return rendered._replace(rgb=rendered.rgb.float()), samples

    def train_step(self) -> dict:
        """One optimiser step; returns loss, rays, samples and whether it diverged."""
        if self.step > 0:  # an untrained field's density is noise: it would cull at random
            self.grid.update(self.step, self.field.density, self.occupancy_step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        origins, dirs, target, background, ray_depth = self._sample_batch(self.n_rays)
        rendered, samples = self.render(origins, dirs, background, train=True)
        n_samples = len(samples)
        loss = F.mse_loss(rendered.rgb, target)
        if ray_depth is not None:
            cfg = self.config
            terms = depth_losses(
                rendered.weights.float(), samples, rendered.depth.float(), ray_depth,
                cfg.depth_margin * self.diagonal, self.diagonal,
            )  # fmt: skip
            loss = loss + cfg.depth_weight * terms.expected_depth
            loss = loss + cfg.free_space_weight * terms.free_space
        if self.config.distortion_weight > 0:
            loss = loss + self.config.distortion_weight * distortion_loss(
                rendered.weights.float(), samples, len(origins), self.diagonal
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = bool(torch.isfinite(loss)) and all(
            bool(torch.isfinite(p.grad).all())
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        )
        if not finite:
            self._recover_from_divergence(float(loss.detach()))
            return {
                "loss": float("nan"),
                "rays": len(origins),
                "samples": n_samples,
                "diverged": True,
            }
        self.optimizer.step()
        self.step += 1
        if self.step % self.config.snapshot_every == 0:
            self._snapshot = self._capture()
        if n_samples > 0:
            wanted = self.n_rays * self.target_samples / n_samples
            self.n_rays = int(min(max(wanted, 256), self.config.max_rays))
        return {
            "loss": float(loss.detach()),
            "rays": len(origins),
            "samples": n_samples,
            "diverged": False,
        }

    def _recover_from_divergence(self, loss: float) -> None:
        self.divergences += 1
        if self.divergences > self.config.max_divergences:
            raise RuntimeError(
                f"training diverged {self.divergences} times (last loss {loss}); giving up"
            )
        self._restore(self._snapshot)
        self.lr_scale *= self.config.divergence_lr_factor
        logger.warning(
            "non-finite loss/gradient at step %d: restored step %d, lr scale now %.3g",
            self.step,
            self._snapshot["step"],
            self.lr_scale,
        )

    # ---------------------------------------------------------------- loop

    def done(self) -> bool:
        cfg = self.config
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return True
        if cfg.time_budget_s is not None and self.elapsed_s >= cfg.time_budget_s:
            return True
        return (
            cfg.target_psnr is not None
            and self.last_check_psnr is not None
            and self.last_check_psnr >= cfg.target_psnr
        )

    def train(
        self,
        until_s: float | None = None,
        on_step: Callable[[NerfTrainer], None] | None = None,
    ) -> None:
        """Train until a stopping rule holds (or ``elapsed_s >= until_s``, to pause).

        ``on_step`` is called after every step (e.g. to checkpoint periodically); its time
        counts as training time.
        """
        cfg = self.config
        self.field.train()
        # Under a time budget the step count that ends training is unknown: a bar towards
        # max_steps showed an ETA of an hour for a 20 s run. Count steps, show the seconds left.
        total = cfg.max_steps if cfg.time_budget_s is None else None
        bar = tqdm(
            total=total,
            initial=self.step,
            disable=not cfg.progress,
            desc="nerf",
            unit="step",
            leave=False,
        )
        try:
            while not self.done() and (until_s is None or self.elapsed_s < until_s):
                t0 = time.perf_counter()
                info = self.train_step()
                if on_step is not None:
                    on_step(self)
                self.elapsed_s += time.perf_counter() - t0
                if cfg.check_every and self.step % cfg.check_every == 0 and cfg.target_psnr:
                    self.last_check_psnr = self.quick_holdout_psnr()
                bar.update(0 if info["diverged"] else 1)
                bar.set_postfix(
                    loss=f"{info['loss']:.4f}",
                    rays=info["rays"],
                    samples=info["samples"],
                    **(
                        {"left": f"{max(0.0, cfg.time_budget_s - self.elapsed_s):.0f}s"}
                        if cfg.time_budget_s is not None
                        else {}
                    ),
                    refresh=False,
                )
        finally:
            bar.close()

    # ---------------------------------------------------------------- evaluation

    def _holdout_pixels(self, n: int):
        """A fixed random subset of held-out pixels: (cam, x, y) each ``(n,)``."""
        views = self.scene.holdout_idx if len(self.scene.holdout_idx) else self.scene.train_idx
        _, h, w, _ = self.images.shape
        g = torch.Generator().manual_seed(1234)
        cam = views[torch.randint(len(views), (n,), generator=g)]
        return cam, torch.randint(w, (n,), generator=g), torch.randint(h, (n,), generator=g)

    def _eval_target(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``(..., C)`` -> ``(..., 3)`` float, RGBA composited onto white."""
        p = pixels.float() / 255.0
        if self.scene.has_alpha:
            return p[..., :3] * p[..., 3:4] + (1 - p[..., 3:4])
        return p[..., :3]

    @torch.no_grad()
    def render_rays_chunked(self, origins, dirs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluation render ``(R, 3)`` rays -> rgb ``(R, 3)``, opacity and depth ``(R,)``."""
        was_training = self.field.training
        self.field.eval()
        background = self.white if self.scene.has_alpha else None
        rgbs, opacities, depths = [], [], []
        chunk = self.config.eval_chunk
        for o, d in zip(origins.split(chunk), dirs.split(chunk), strict=True):
            rendered, _ = self.render(o, d, background, train=False)
            rgbs.append(rendered.rgb)
            opacities.append(rendered.opacity)
            depths.append(rendered.depth)
        self.field.train(was_training)
        return torch.cat(rgbs).clamp(0, 1), torch.cat(opacities), torch.cat(depths)

    def quick_holdout_psnr(self) -> float:
        """PSNR on the fixed subset of held-out pixels (cheap; for target-PSNR stopping)."""
        cam, x, y = (t.to(self.device) for t in self._check_set)
        origins, dirs = self.cameras.generate_rays(cam, x + 0.5, y + 0.5)
        rgb, _, _ = self.render_rays_chunked(origins, dirs)
        return psnr(rgb, self._eval_target(self.images[cam, y, x]))

    @torch.no_grad()
    def render_view_with_depth(self, cam: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Render of camera ``cam``: rgb ``(H, W, 3)`` and z-depth ``(H, W)``."""
        origins, dirs = self.cameras.image_rays(cam)
        rgb, _, t = self.render_rays_chunked(origins, dirs)
        forward = -self.cameras.c2w[cam, :3, 2]
        z = t * (dirs @ (forward / forward.norm()))
        shape = (self.cameras.height, self.cameras.width)
        return rgb.view(*shape, 3), z.view(shape)

    def evaluate(self, render_dir: Path | None = None) -> dict:
        """Mean PSNR / SSIM over the held-out views; renders saved as PNG to ``render_dir``."""
        views = self.scene.holdout_idx
        if len(views) == 0:
            logger.warning("scene has no held-out views: evaluating on the training views")
            views = self.scene.train_idx
        if render_dir is not None:
            render_dir.mkdir(parents=True, exist_ok=True)
        psnrs, ssims = [], []
        depth_errors: list[torch.Tensor] = []  # (n, 2): |error| and measured depth, per view
        scene_depths = self.scene.depths
        for cam in views.tolist():
            pred, pred_depth = self.render_view_with_depth(cam)
            pred = pred.cpu()
            target = self._eval_target(self.images[cam]).cpu()
            psnrs.append(psnr(pred, target))
            ssims.append(ssim(pred, target))
            if scene_depths is not None:
                measured = scene_depths[cam]
                valid = measured > 0
                error = (pred_depth.cpu() - measured)[valid].abs()
                depth_errors.append(torch.stack([error, measured[valid]], dim=1))
            if render_dir is not None:
                stem = Path(self.scene.frame_names[cam]).stem or f"view_{cam:04d}"
                image = (pred.numpy() * 255.0 + 0.5).astype(np.uint8)
                Image.fromarray(image).save(render_dir / f"{cam:04d}_{stem}.png")
        metrics = {
            "psnr_holdout": float(np.mean(psnrs)),
            "ssim_holdout": float(np.mean(ssims)),
            "n_holdout_views": len(views),
        }
        if depth_errors:
            error, measured = torch.cat(depth_errors).unbind(1)
            metrics["depth_abs_rel_holdout"] = float((error / measured).mean())
            metrics["depth_rmse_holdout"] = float(error.square().mean().sqrt())
        return metrics

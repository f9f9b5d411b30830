"""Where probe features come from: a frozen encoder's four stage maps (a checkpoint, or the same
architecture randomly initialised), and two controls that hold no learned knowledge at all.

Every source turns a batch of padded grids into maps that each tile the ``S^3`` cube
(:mod:`model.probing.interpolation` reads them at voxel centres):

- :class:`EncoderSource`: ``EncoderFront.encoder_stages`` only (no FPN, decoder or skip path,
  whichever task's network it is):
  4 maps ``(B, C_i, S/s_i, S/s_i, S/s_i)``, strides ``s_i = patch * 2**i``.
- :class:`ColourSource`: the input itself, ``(B, 4, S, S, S)`` RGBA: what a probe reads from
  the voxel's own colour and opacity, with no context.
- :class:`CoordinateSource`: where the voxel is and nothing else (see its doc).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from grid_store.dataset import real_extent
from model.checkpoints.loading import network_of
from model.checkpoints.reading import read_checkpoint
from model.networks.encoder import EncoderFront
from model.networks.mae import MAEConfig, NeRFMAE
from model.training.checkpointing import step_checkpoints

logger = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """Anything that gives feature maps of grids."""

    name: str

    def maps(self, rgba: Tensor, valid: Tensor) -> list[Tensor]:
        """``(B, 4, S, S, S)`` grids and their ``(B, S, S, S)`` valid masks -> maps
        ``(B, C_i, D_i, H_i, W_i)``, each ``D_i, H_i, W_i`` dividing ``S``."""
        ...


@dataclass
class EncoderSource:
    """The frozen encoder pyramid of ``network`` (weights never change; eval mode)."""

    name: str
    network: EncoderFront
    alpha_step: float | None = None
    """The opacity convention the network was trained on: grids must be read with it."""
    step: int | None = None
    """The training step of the checkpoint, when known."""

    def __post_init__(self) -> None:
        if not isinstance(self.network, EncoderFront):
            raise TypeError(f"{self.name}: a {type(self.network).__name__} has no encoder front")
        self.network.eval().requires_grad_(False)

    @torch.no_grad()
    def maps(self, rgba: Tensor, valid: Tensor) -> list[Tensor]:
        return self.network.encoder_stages(rgba)


class ColourSource:
    """The input grid's RGBA at the voxel (the 'local colour' control)."""

    name = "colour"

    def maps(self, rgba: Tensor, valid: Tensor) -> list[Tensor]:
        return [rgba]


@dataclass(frozen=True)
class CoordinateConfig:
    """The fixed random Fourier embedding of :class:`CoordinateSource`."""

    frequencies: int = 16
    """Random frequency vectors; each gives a sine and a cosine channel."""
    sigma: float = 1.5
    """Standard deviation of each frequency component, in cycles per unit of the room-relative
    coordinate (which spans 2 across the room): wavelengths mostly between a sixth of the room
    and the whole room."""
    seed: int = 0


@dataclass
class CoordinateSource:
    """Position only: ``6 + 2F`` channels per voxel at voxel resolution.

    The voxel centre in the cube (``(v + 0.5) / S`` mapped to ``[-1, 1]``), the same relative
    to the room's own extent (its valid region, so the floor is at -1 and the ceiling at +1 in
    every room: walls, floor and ceiling are where a purely positional reader finds them), and
    ``sin``/``cos`` of ``2 pi f . r`` for ``F`` fixed Gaussian frequency vectors ``f`` and the
    room-relative ``r``, so that a linear probe can carve position non-linearly. Pooled over a
    box (the object probe), these give the box's mean position and, through the Fourier
    channels' averages, a little of its extent.
    """

    config: CoordinateConfig = field(default_factory=CoordinateConfig)
    name: str = "coords"

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(self.config.seed)
        self.frequencies = torch.randn(self.config.frequencies, 3, generator=generator)
        self.frequencies *= self.config.sigma  # (F, 3)

    def maps(self, rgba: Tensor, valid: Tensor) -> list[Tensor]:
        size = rgba.shape[-1]
        centres = torch.arange(size, dtype=torch.float32) + 0.5
        shape = (size,) * 3
        out = []
        for extent in (real_extent(mask).clamp(min=1).tolist() for mask in valid):
            # per axis a (S,) line, shaped to broadcast along that axis of the cube
            cube = [(centres / size * 2 - 1).view(_along(a)) for a in range(3)]
            room = [(centres / extent[a] * 2 - 1).view(_along(a)) for a in range(3)]
            phase = sum(self.frequencies[:, a, None, None, None] * room[a] for a in range(3))
            phase = 2 * torch.pi * phase  # (F, S, S, S)
            lines = [v.expand(shape)[None] for v in cube + room]
            out.append(torch.cat([*lines, phase.sin(), phase.cos()]))
        return [torch.stack(out)]


def _along(axis: int) -> tuple[int, int, int]:
    """The view shape of an ``(S,)`` line along ``axis`` of an ``(S, S, S)`` cube."""
    return tuple(-1 if a == axis else 1 for a in range(3))


def random_source(config: MAEConfig, seed: int, alpha_step: float | None = None) -> EncoderSource:
    """The architecture of ``config``, untrained: :class:`NeRFMAE`'s own initialisation after
    ``torch.manual_seed(seed)`` (the caller's random state is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = NeRFMAE(config)
    return EncoderSource(f"random(seed {seed})", network, alpha_step, step=0)


def checkpoint_source(
    path: str | Path, name: str | None = None, resolution: int | None = None
) -> EncoderSource:
    """The encoder of the checkpoint at ``path`` (any task whose network has one).

    ``resolution``: the cube edge the grids are read at; when it differs from the checkpoint's,
    the network is built for it (only the fixed sin-cos positional table changes).
    """
    checkpoint = read_checkpoint(path)
    overrides = {}
    trained_at = checkpoint.mae_config.get("resolution")
    if resolution is not None and resolution != trained_at:
        logger.warning("%s: trained at %s^3, probed at %d^3", path, trained_at, resolution)
        overrides["resolution"] = resolution
    network = network_of(checkpoint, **overrides)
    if not isinstance(network, EncoderFront):
        raise ValueError(f"{path}: this {checkpoint.task} network has no encoder to probe")
    return EncoderSource(name or Path(path).stem, network, checkpoint.alpha_step, checkpoint.step)


_STEP = re.compile(r"^step_(\d+)\.pt$")


def run_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``RUN/checkpoints/step_XXXXXX.pt`` of a run, oldest first."""
    found = step_checkpoints(Path(run_dir) / "checkpoints")
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoints/step_*.pt (not a training run "
                                "folder, or its step checkpoints were deleted)")  # fmt: skip
    return [(int(_STEP.match(p.name).group(1)), p) for p in found]

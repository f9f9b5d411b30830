"""Procedural, view-independent surface colour: one smooth formula, many looks.

Every part carries the parameters of

    m(u) = sigmoid(sharpness * (sum_j amp_j sin(k_j . u + phase_j) + c sin(q_1 . u) sin(q_2 . u)))
    colour(u) = base + m(u) * (accent - base)

where ``u`` is the position in the object's own frame (so a table top and its legs
share one continuous pattern, and the pattern turns with the object). Sums of sines
give stripes, wood grain and blotches; the product term gives checkers and plaid.
Wavelengths stay at or above ~10 cm so that a NeRF at 64x64 pixels and a grid with
a few-cm voxels can both represent the texture, and the formula stays smooth so the
volume-rendering quadrature is not sensitive to where its samples land.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch

N_WAVES = 3


@dataclass(frozen=True)
class TextureParams:
    """Texture of one surface; all arrays float64."""

    base: np.ndarray  # (3,) RGB in [0, 1]
    accent: np.ndarray  # (3,) RGB in [0, 1]
    waves: np.ndarray  # (N_WAVES, 3) wave vectors, radians per metre
    phases: np.ndarray  # (N_WAVES,)
    amps: np.ndarray  # (N_WAVES,)
    checker: np.ndarray  # (2, 3) wave vectors of the product term
    checker_amp: float
    sharpness: float

    def flat(self) -> np.ndarray:
        """``(TEXTURE_WIDTH,)`` row; the layout :func:`texture_colour` reads."""
        return np.concatenate(
            [
                self.base,
                self.accent,
                self.waves.ravel(),
                self.phases,
                self.amps,
                self.checker.ravel(),
                [self.checker_amp, self.sharpness],
            ]
        )


TEXTURE_WIDTH = 3 + 3 + 3 * N_WAVES + N_WAVES + N_WAVES + 6 + 2


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1)))


def _wave(rng: np.random.Generator, wavelength: tuple[float, float], direction=None) -> np.ndarray:
    if direction is None:
        direction = rng.normal(size=3)
    direction = np.asarray(direction, dtype=np.float64)
    direction = direction / np.linalg.norm(direction)
    return direction * (2 * np.pi / rng.uniform(*wavelength))


def _axis(rng: np.random.Generator, axes: tuple[int, ...]) -> np.ndarray:
    v = np.zeros(3)
    v[axes[int(rng.integers(len(axes)))]] = 1.0
    return v


def make_texture(material: str, rng: np.random.Generator) -> TextureParams:
    """Random parameters of a texture that looks like ``material``."""
    zero2 = np.zeros((2, 3))
    phases = rng.uniform(0, 2 * np.pi, N_WAVES)
    if material == "wood":
        base = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.45, 0.75), rng.uniform(0.4, 0.75))
        accent = base * rng.uniform(0.55, 0.75)
        grain = _axis(rng, (1, 2)) + 0.15 * rng.normal(size=3)
        waves = np.stack(
            [_wave(rng, (0.1, 0.2), grain), _wave(rng, (0.5, 1.0)), _wave(rng, (0.2, 0.4))]
        )
        return TextureParams(
            base,
            accent,
            waves,
            phases,
            np.array([1.0, 0.6, 0.3]),
            zero2,
            0.0,
            rng.uniform(2.0, 4.0),
        )
    if material in ("fabric", "floor") and rng.uniform() < 0.5:
        # checker / plaid: the product of two crossing waves in the horizontal plane
        hue = rng.uniform()
        if material == "floor":
            base = _hsv(hue, rng.uniform(0.0, 0.3), rng.uniform(0.55, 0.85))
        else:
            base = _hsv(hue, rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.8))
        accent = base * rng.uniform(0.45, 0.7)
        period = (0.3, 0.6) if material == "floor" else (0.15, 0.3)
        a = rng.uniform(0, np.pi)
        checker = np.stack(
            [
                _wave(rng, period, (np.cos(a), np.sin(a), 0.0)),
                _wave(rng, period, (-np.sin(a), np.cos(a), 0.0)),
            ]
        )
        waves = np.stack([_wave(rng, (0.6, 1.2)) for _ in range(N_WAVES)])
        return TextureParams(
            base,
            accent,
            waves,
            phases,
            np.array([0.3, 0.2, 0.1]),
            checker,
            1.5,
            rng.uniform(3.0, 6.0),
        )
    if material == "floor":  # planks
        base = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.45, 0.75))
        accent = base * rng.uniform(0.6, 0.8)
        waves = np.stack(
            [
                _wave(rng, (0.15, 0.25), _axis(rng, (0, 1))),
                _wave(rng, (0.8, 1.5)),
                _wave(rng, (0.3, 0.5)),
            ]
        )
        return TextureParams(
            base,
            accent,
            waves,
            phases,
            np.array([1.0, 0.5, 0.3]),
            zero2,
            0.0,
            rng.uniform(3.0, 5.0),
        )
    if material == "fabric":  # stripes
        base = _hsv(rng.uniform(), rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.8))
        accent = _hsv(rng.uniform(), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.8))
        waves = np.stack(
            [
                _wave(rng, (0.12, 0.25), _axis(rng, (0, 1, 2))),
                _wave(rng, (0.5, 1.0)),
                _wave(rng, (0.3, 0.6)),
            ]
        )
        return TextureParams(
            base,
            accent,
            waves,
            phases,
            np.array([1.0, 0.3, 0.2]),
            zero2,
            0.0,
            rng.uniform(2.0, 5.0),
        )
    if material == "linen":
        base = _hsv(rng.uniform(), rng.uniform(0.03, 0.25), rng.uniform(0.8, 0.95))
        accent = base * rng.uniform(0.75, 0.9)
        waves = np.stack(
            [
                _wave(rng, (0.1, 0.2), _axis(rng, (0, 1))),
                _wave(rng, (0.4, 0.8)),
                _wave(rng, (0.2, 0.4)),
            ]
        )
        return TextureParams(
            base,
            accent,
            waves,
            phases,
            np.array([0.8, 0.5, 0.3]),
            zero2,
            0.0,
            rng.uniform(1.5, 3.0),
        )
    if material == "metal":
        base = _hsv(rng.uniform(), rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.7))
        accent = base * rng.uniform(0.7, 0.9)
        waves = np.stack([_wave(rng, (0.15, 0.4)) for _ in range(N_WAVES)])
        return TextureParams(
            base,
            accent,
            waves,
            phases,
            np.array([0.6, 0.4, 0.3]),
            zero2,
            0.0,
            rng.uniform(1.5, 3.0),
        )
    if material == "paint":  # walls, cabinets: soft blotches and wallpaper stripes
        base = _hsv(rng.uniform(), rng.uniform(0.05, 0.4), rng.uniform(0.6, 0.9))
        accent = base * rng.uniform(0.7, 0.85)
        horizontal = np.array([np.cos(a := rng.uniform(0.3, 1.2)), np.sin(a), 0.0])
        waves = np.stack(
            [_wave(rng, (0.2, 0.4), horizontal), _wave(rng, (0.6, 1.5)), _wave(rng, (0.4, 0.9))]
        )
        return TextureParams(
            base,
            accent,
            waves,
            phases,
            np.array([0.8, 0.6, 0.4]),
            zero2,
            0.0,
            rng.uniform(2.0, 4.0),
        )
    if material == "ceiling":
        base = _hsv(rng.uniform(), rng.uniform(0.0, 0.08), rng.uniform(0.85, 0.95))
        accent = base * 0.9
        waves = np.stack([_wave(rng, (0.5, 1.2)) for _ in range(N_WAVES)])
        return TextureParams(
            base, accent, waves, phases, np.array([0.6, 0.4, 0.3]), zero2, 0.0, 2.0
        )
    raise ValueError(f"unknown material {material!r}")


def texture_colour(u: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """Colour ``(n, 3)`` of object-frame points ``(n, 3)``, one texture row ``(TEXTURE_WIDTH,)``.

    The parameters are Python scalars here, so every step is one cheap pass over ``n``
    values (terms with a zero amplitude are skipped, they add nothing).
    """
    p = [float(v) for v in np.asarray(params, dtype=np.float64)]
    base, accent = p[0:3], p[3:6]
    o = 6
    waves = [p[o + 3 * j : o + 3 * j + 3] for j in range(N_WAVES)]
    o += 3 * N_WAVES
    phases, amps = p[o : o + N_WAVES], p[o + N_WAVES : o + 2 * N_WAVES]
    o += 2 * N_WAVES
    checker = (p[o : o + 3], p[o + 3 : o + 6])
    checker_amp, sharpness = p[o + 6], p[o + 7]

    ux, uy, uz = u[:, 0], u[:, 1], u[:, 2]

    def project(k: list[float], phase: float = 0.0) -> torch.Tensor:
        return ux * k[0] + uy * k[1] + uz * k[2] + phase

    signal = torch.zeros_like(ux)
    for k, phase, amp in zip(waves, phases, amps, strict=True):
        if amp != 0.0:
            signal += amp * torch.sin(project(k, phase))
    if checker_amp != 0.0:
        signal += checker_amp * torch.sin(project(checker[0])) * torch.sin(project(checker[1]))
    m = torch.sigmoid(signal * sharpness).unsqueeze(-1)  # (n, 1)
    base_t = u.new_tensor(base)
    return base_t + m * (u.new_tensor(accent) - base_t)

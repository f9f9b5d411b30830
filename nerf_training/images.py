"""Reading scene images as uint8 arrays, with integer area downscaling.

Library errors here are plain ``OSError``/``ValueError`` about one file; the scene
reader turns them into messages that also name the frame that refers to the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class ImageHeader:
    """What a file declares about its pixels, read without decoding them."""

    path: Path
    width: int
    height: int
    has_alpha: bool


def read_header(path: Path) -> ImageHeader:
    """Size and alpha of an image file, from its header only (cheap; decodes nothing)."""
    with Image.open(path) as im:
        has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
        return ImageHeader(path=path, width=im.width, height=im.height, has_alpha=has_alpha)


def decode_image(path: Path, channels: int) -> np.ndarray:
    """Decode a file to ``(H, W, channels)`` uint8, ``channels`` 3 (RGB) or 4 (RGBA).

    Grey, palette and 16-bit files are converted; a file without alpha read as RGBA
    gets alpha 255 (opaque).
    """
    with Image.open(path) as im:
        im.load()
        if im.mode in _SIXTEEN_BIT_MODES:
            # PIL's own 16 -> 8 bit conversion clips instead of scaling.
            grey = (np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)  # (H, W)
            im = Image.fromarray(grey)  # mode "L"
        return np.asarray(im.convert("RGBA" if channels == 4 else "RGB"), dtype=np.uint8)


def downscale_area(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks: ``(H, W, C)`` -> ``(H // f, W // f, C)`` uint8.

    Rows and columns past the last whole block are dropped (from the bottom and right),
    which keeps the pixel-coordinate map ``u -> u / factor`` exact, so intrinsics scale
    by ``1 / factor``. RGBA colour is averaged weighted by alpha (premultiplied), so
    the colour of fully transparent pixels (often black) does not darken edges and
    compositing the small image equals averaging the composited large one.
    """
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    channels = image.shape[2]
    blocks = image[: h * factor, : w * factor].astype(np.float32)
    blocks = blocks.reshape(h, factor, w, factor, channels)  # (h, f, w, f, C)
    if channels == 4:
        alpha = blocks[..., 3:] / 255.0  # (h, f, w, f, 1)
        alpha_mean = alpha.mean(axis=(1, 3))  # (h, w, 1)
        premultiplied = (blocks[..., :3] * alpha).mean(axis=(1, 3))  # (h, w, 3)
        plain = blocks[..., :3].mean(axis=(1, 3))
        safe = np.where(alpha_mean > 0, alpha_mean, 1.0)
        rgb = np.where(alpha_mean > 0, premultiplied / safe, plain)
        out = np.concatenate([rgb, alpha_mean * 255.0], axis=-1)  # (h, w, 4)
    else:
        out = blocks.mean(axis=(1, 3))  # (h, w, C)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def composite_onto(image: np.ndarray, background: tuple[float, float, float]) -> np.ndarray:
    """``(H, W, 4)`` uint8 RGBA over a constant ``background`` in [0, 1] -> ``(H, W, 3)`` uint8."""
    rgb = image[..., :3].astype(np.float32)
    alpha = image[..., 3:].astype(np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32) * 255.0
    return np.clip(np.rint(rgb * alpha + bg * (1.0 - alpha)), 0, 255).astype(np.uint8)

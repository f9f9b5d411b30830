"""One registry of NeRF-MAE model presets (timm-style): name -> :class:`MAEConfig`.

``swin_s`` is the paper's model (76,184,938 parameters at resolution 160, of which 6,144,000
are the frozen positional embedding); ``swin_t`` the shallower Swin-T encoder; ``tiny`` a
model for tests and CPU runs at resolutions 32-64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from model.networks.mae import MAEConfig, NeRFMAE

PRESETS: dict[str, Callable[[], MAEConfig]] = {
    "swin_s": lambda: MAEConfig(
        resolution=160, patch_size=4, embed_dim=96, depths=[2, 2, 18, 2],
        num_heads=[3, 6, 12, 24], window=4, drop_path=0.1, mask_ratio=0.75,
    ),
    "swin_t": lambda: MAEConfig(
        resolution=160, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24], window=4, drop_path=0.1, mask_ratio=0.75,
    ),
    "tiny": lambda: MAEConfig(
        resolution=32, patch_size=4, embed_dim=24, depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4], window=2, drop_path=0.0, mask_ratio=0.75, mask_block=2,
    ),
}
"""Preset name -> factory of a fresh config (a factory, so callers never share a mutable one)."""


def list_presets() -> list[str]:
    """Names of the registered presets."""
    return sorted(PRESETS)


def get_config(name: str, **overrides) -> MAEConfig:
    """The preset's config with ``overrides`` applied (unknown fields raise ``ValueError``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(list_presets())}")
    return replace_config(PRESETS[name](), **overrides)


def replace_config(config: MAEConfig, **overrides) -> MAEConfig:
    """``config`` with ``overrides`` applied and validated again."""
    fields = {f.name for f in dataclasses.fields(MAEConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown MAEConfig field(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(config, **overrides)


def build_mae(name_or_config: str | MAEConfig | dict, **overrides) -> NeRFMAE:
    """A fresh :class:`NeRFMAE` from a preset name, a config, or a config dict (a checkpoint's)."""
    if isinstance(name_or_config, str):
        config = get_config(name_or_config, **overrides)
    elif isinstance(name_or_config, dict):
        config = replace_config(MAEConfig(**name_or_config), **overrides)
    else:
        config = replace_config(name_or_config, **overrides)
    return NeRFMAE(config)

"""The torch device a ``device`` setting names (``auto``, ``cpu``, ``cuda``, ``cuda:1``...)."""

from __future__ import annotations

from typing import Any


def resolve_device(name: str) -> Any:
    """``"auto"``: CUDA when available, else the CPU. A CUDA device asked for on a machine
    without CUDA is an error that names the setting (never a silent fall back)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: {name!r} is not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available on this machine")
    return device

"""Training checkpoints with exact resume.

A checkpoint holds everything that decides what the run does next: model, optimiser
and scheduler state, every random number generator (Python, NumPy, torch CPU, CUDA, and
the engine's own generators such as the masking one), and the data position (epoch and
optimiser steps done inside it; the sampler's order is a function of seed and epoch).
A run resumed from it continues with exactly the batches, masks and updates the
uninterrupted run would have had.

Files: ``<dir>/step_XXXXXX.pt`` for each save and ``<dir>/latest.pt`` for the newest,
each written to a temporary name and renamed, so a reader never sees half a file.
Everything is tensors and plain Python containers (configs as dicts), so
``torch.load(path, weights_only=True)`` reads them. A checkpoint records the ``task`` of its
run (``pretrain``, ``semantics``, ``superres``, ``detect``); its ``format`` says it is one of
this project's (checkpoints written before the format had its own name carry
``nerf-mae-pretrain`` whatever their task, and are read the same).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nerfmae_common.files import atomic_write

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "nerf-mae-run"
LEGACY_FORMATS = ("nerf-mae-pretrain",)
"""Format stamps of older checkpoints, read as :data:`CHECKPOINT_FORMAT`."""
CHECKPOINT_VERSION = 1
LATEST = "latest.pt"
BEST = "best.pt"
_STEP_FILE = re.compile(r"^step_(\d{6,})\.pt$")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
"""First bytes of torch.save's files: a zip archive, or (before torch 1.6) a pickle stream."""


@dataclass(frozen=True)
class DataPosition:
    """Where training stands: ``step`` optimiser steps done, the next being step
    ``step_in_epoch`` of ``epoch``."""

    step: int
    epoch: int
    step_in_epoch: int

    def as_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch}


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG that can influence training, as tensors and plain containers."""
    # The legacy global NumPy RNG: what third-party code and old augmentations draw from.
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Put back what :func:`capture_rng_state` captured (CUDA states only where CUDA is present)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["generators"]
    for name, generator in (generators or {}).items():
        if name not in saved:
            raise ValueError(f"checkpoint rng.generators: no state for generator {name!r}")
        generator.set_state(saved[name])


def make_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: DataPosition,
    rng_per_rank: list[dict[str, Any]],
    config: dict[str, Any],
    model_config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    *,
    task: str,
) -> dict[str, Any]:
    """The checkpoint dict.

    ``model`` is the bare module (not the DDP wrapper); ``rng_per_rank`` holds
    :func:`capture_rng_state` of every rank, index = rank, because each rank draws its
    own masks and stochastic-depth decisions.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "task": task,
        "position": position.as_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_per_rank,
        "config": config,
        "model_config": model_config,
        "metrics": metrics or {},
    }


def apply_checkpoint(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> DataPosition:
    """Load model, optimiser and scheduler state from ``checkpoint``; returns where to continue.

    Random states are restored separately (:func:`restore_rng_state` with this rank's
    entry of ``checkpoint["rng"]``), last, after everything that draws random numbers
    during setup.
    """
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    return DataPosition(**checkpoint["position"])


def _atomic_link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def step_checkpoints(directory: str | Path) -> list[Path]:
    """The ``step_XXXXXX.pt`` files in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    checkpoint: dict[str, Any], directory: str | Path, keep_last: int = 0
) -> Path:
    """Write ``step_XXXXXX.pt`` and point ``latest.pt`` at it; keep the newest ``keep_last``
    step files (0 keeps all). Returns the step file's path."""
    directory = Path(directory)
    step = int(checkpoint["position"]["step"])
    step_path = directory / f"step_{step:06d}.pt"
    atomic_write(step_path, lambda f: torch.save(checkpoint, f))
    _atomic_link_or_copy(step_path, directory / LATEST)
    if keep_last > 0:
        for old in step_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
    logger.info("checkpoint %s", step_path)
    return step_path


def save_best_checkpoint(checkpoint: dict[str, Any], directory: str | Path) -> Path:
    """Write ``checkpoint`` as ``<directory>/best.pt`` (replacing the previous best)."""
    path = Path(directory) / BEST
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(checkpoint, f))
    logger.info("best checkpoint %s (step %d)", path, checkpoint["position"]["step"])
    return path


def load_file(path: str | Path, trusted: bool = False) -> Any:
    """``torch.load`` of ``path`` on the CPU, ``weights_only`` unless ``trusted``; errors name
    the file (missing, not a torch file, truncated or corrupt, or holding Python objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    with path.open("rb") as file:
        head = file.read(len(_ZIP_MAGIC))
    # torch's own unpickler fails on a foreign file with bare KeyErrors and IndexErrors:
    # telling torch files by their first bytes gives the user a sentence instead.
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        found = f"starts with {head!r}" if head else "is empty"
        raise ValueError(f"{path}: not a torch checkpoint (the file {found}; torch.save writes "
                         "a zip archive)")  # fmt: skip
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        reason = _load_error(exc)
        if trusted or "Unsupported operand" in reason:
            raise _unreadable(path, reason) from None
        raise ValueError(
            f"{path}: holds Python objects beyond tensors and plain values, which are not "
            f"read without trust ({reason}); if you trust the file's origin, read it with "
            "model.checkpoints.read_checkpoint(path, trusted=True)"
        ) from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile,
            OSError) as exc:  # fmt: skip
        raise _unreadable(path, _load_error(exc)) from None


def _unreadable(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path}: not a readable checkpoint, truncated or corrupt ({reason})")


def _load_error(exc: BaseException) -> str:
    """The telling sentence of a ``torch.load`` error (torch wraps the unpickler's reason in
    paragraphs of advice)."""
    text = str(exc).split("WeightsUnpickler error:")[-1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    sentence = re.split(r"\.\s+(?=[A-Z])", line)[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__


def check_checkpoint(checkpoint: Any, path: str | Path) -> dict[str, Any]:
    """``checkpoint`` if it is one of this project's run checkpoints (format and version)."""
    formats = (CHECKPOINT_FORMAT, *LEGACY_FORMATS)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in formats:
        raise ValueError(f"{path}: format: not a {CHECKPOINT_FORMAT!r} checkpoint")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: version: {checkpoint.get('version')!r}, this code reads {CHECKPOINT_VERSION}"
        )
    return checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A run checkpoint of this project, read with ``weights_only=True`` and checked."""
    return check_checkpoint(load_file(path), path)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """``<directory>/latest.pt`` when it exists."""
    path = Path(directory) / LATEST
    return path if path.is_file() else None

"""Atomic writes: the content goes to a temporary file beside the target, is flushed to
disk, and is renamed over the target, so a reader sees the old file or the whole new one,
never half of it, and a writer that dies leaves the old file as it was."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary binary file beside ``path``, fsync it, and rename
    it to ``path`` (its folder is created). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """``path`` holds ``payload`` as indented JSON (values JSON lacks as ``str``)."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")

"""The folder one training run writes (rank 0 only)::

    RUN/config.json          the resolved config (and model config, split, schedule)
    RUN/checkpoints/         step_XXXXXX.pt, latest.pt (exact resume, model.training.checkpointing)
    RUN/tb/                  TensorBoard events: loss terms, lr, grids/s, validation figures
    RUN/<task.picture_dir>/  step_XXXXXX.png pictures of a validation grid
    RUN/train_log.jsonl      one line per logged step (the same figures as TensorBoard)
    RUN/metrics.json         the final summary

JSON files are written atomically; on resume, log lines past the checkpoint are dropped and
TensorBoard events past it are purged, so a resumed run's logs read as one run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nerfmae_common.files import atomic_write_json, atomic_write_text


def read_png(path: Path) -> np.ndarray:
    """A PNG as ``(H, W, 3)`` uint8, for TensorBoard's image tab."""
    from matplotlib.image import imread

    image = imread(path)[..., :3]
    return (image * 255).round().astype(np.uint8) if image.dtype != np.uint8 else image


class RunFolder:
    """Writes one run's files; open it with :meth:`open` at the run's start position."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.json"
        self.log_path = self.root / "train_log.jsonl"
        self.tensorboard_dir = self.root / "tb"
        self._writer = None
        self._log = None

    def open(self, step: int, resumed: bool) -> None:
        """Create the folder, the TensorBoard writer and the log, continuing at ``step``."""
        from torch.utils.tensorboard import SummaryWriter

        self.root.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(self.tensorboard_dir),
                                     purge_step=step + 1 if resumed else None)  # fmt: skip
        if self.log_path.exists():
            if not resumed:
                self.log_path.unlink()
            else:
                kept = [line for line in self.log_path.read_text().splitlines()
                        if line and json.loads(line)["step"] <= step]  # fmt: skip
                atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))
        self._log = self.log_path.open("a")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._log is not None:
            self._log.close()

    def write_config(self, payload: dict[str, Any]) -> Path:
        return atomic_write_json(self.config_path, payload)

    def write_metrics(self, summary: dict[str, Any]) -> Path:
        return atomic_write_json(self.metrics_path, summary)

    def picture_path(self, picture_dir: str, step: int) -> Path:
        return self.root / picture_dir / f"step_{step:06d}.png"

    def log_step(self, record: dict[str, Any]) -> None:
        """One line of ``train_log.jsonl`` and ``train/<name>`` scalars for the record."""
        step = record["step"]
        for name, value in record.items():
            if name != "step":
                self._writer.add_scalar(f"train/{name}", value, step)
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()

    def log_validation(self, result: dict[str, Any], step: int, picture: Path | None,
                       picture_dir: str) -> None:  # fmt: skip
        """``val/<name>`` scalars of the numbers in ``result``, ``val_<name>/<key>`` scalars of
        its dicts of numbers (per-class figures: one TensorBoard section per figure, a chart
        per class; ``None``, a class absent from the validation scenes, is skipped), and the
        picture as an image."""
        for name, value in result.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"val/{name}", value, step)
            elif isinstance(value, dict):
                for key, number in value.items():
                    if isinstance(number, (int, float)):
                        self._writer.add_scalar(f"val_{name}/{key}", number, step)
        if picture is not None and picture.is_file():
            self._writer.add_image(f"val/{picture_dir}", read_png(picture), step,
                                   dataformats="HWC")  # fmt: skip

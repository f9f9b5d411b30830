"""Voxel super-resolution as a training task (facts section 6.3).

Inputs are the store's grids at the run's resolution ``S``; targets are the same scene ids
in a second store (``target_store_url``) sampled finer, e.g. ``nerfmae extract`` /
build-dataset at a higher ``--resolution``, or ground-truth grids. The factor is the ratio of
the two stores' voxel sizes (the reference's 160 -> 384 is x2.4), the network's output edge
``floor(S x factor)``. Both grids are padded from the same corner and take the same
rotations and flips, so voxel ``(i, j, k)`` of the input and ``factor x (i, j, k)`` of the
target stay the same point of the scene.

Loss: MSE of RGB where the target alpha > 0.01 (alpha is not supervised, as in the
reference). Validation: PSNR of the squared errors pooled over the whole validation set,
beside the reference's mean of per-batch PSNRs (:mod:`model.metrics.superres`), and
top-down pictures of input, prediction and target (``RUN/superres/``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from grid_store import GridStore
from grid_store.dataset import GridDataset
from model.metrics.superres import PooledColourPSNR, occupied_rgb_errors, superres_loss
from model.networks.skip_net import build_superres_net
from model.pictures.dense import save_superres
from model.tasks.base import DenseTask, FinetuneConfig, labelled_subset
from model.training.steps import autocast
from model.training.task import Batch
from model.training.validation import BatchMetric

SCALE_TOLERANCE = 0.02
"""Relative disagreement of the voxel-size ratio between scenes that is still one factor."""


@dataclass
class SuperresConfig(FinetuneConfig):
    """A super-resolution run (see :class:`model.tasks.base.FinetuneConfig`)."""

    task = "superres"
    cli_aliases: ClassVar[dict[str, tuple[str, ...]]] = {
        **FinetuneConfig.cli_aliases, "target_store_url": ("--target-store",),
    }  # fmt: skip
    trajectory_fields: ClassVar[tuple[str, ...]] = (
        *FinetuneConfig.trajectory_fields, "target_store_url",
    )  # fmt: skip

    target_store_url: str | None = None
    """The store holding the same scenes at the higher resolution (required)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target_store_url:
            self.fail("target_store_url", "super-resolution needs the store of its targets")


class PairedGrids(Dataset):
    """Sample ``i`` of ``inputs`` with the target grid of the same scene from ``targets``
    (both :class:`GridDataset`, same scene order, seed and augmentation). A batch keeps
    both datasets' batch layout, so ``collate_grids`` hands it over without a copy."""

    def __init__(self, inputs: GridDataset, targets: GridDataset) -> None:
        if inputs.scene_ids != targets.scene_ids:
            raise ValueError("inputs and targets must list the same scenes in the same order")
        self.inputs, self.targets = inputs, targets
        self.scene_ids = inputs.scene_ids

    def set_epoch(self, epoch: int) -> None:
        self.inputs.set_epoch(epoch)
        self.targets.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        lows, highs = self.inputs.__getitems__(indices), self.targets.__getitems__(indices)
        pairs = zip(lows, highs, strict=True)
        return [{"rgba": low["rgba"], "valid": low["valid"], "target": high["rgba"],
                 "scene_id": low["scene_id"]} for low, high in pairs]  # fmt: skip


def _feed_psnr(psnr: PooledColourPSNR, batch: Batch, p: dict) -> None:
    psnr.add_errors(float(p["sse"]), int(p["count"]))


class SuperResolutionTask(DenseTask):
    """Fine-tune (or train from scratch) the skip network to predict a finer grid."""

    name = "superres"
    config_class = SuperresConfig
    description = "predict a finer grid of the same scenes (PSNR on occupied voxels)"
    loss_terms = ("loss",)
    val_keys = ("psnr", "mse", "mean_batch_psnr", "loss")
    selection_key = "psnr"
    picture_dir = "superres"

    def __init__(self, config: SuperresConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.target_store = GridStore(config.target_store_url, mode="r")
        self.scale: float | None = None

    @property
    def target_size(self) -> int:
        return math.floor(self.input_size * self.scale + 1e-6)

    def check_scenes(self, scene_ids: Sequence[str]) -> None:
        missing = sorted(set(scene_ids) - set(self.target_store.list_scenes()))
        if missing:
            raise ValueError(
                f"{self.target_store.url}: target_store_url: scenes {missing[:5]} "
                f"({len(missing)} of {len(scene_ids)}) have no target grid"
            )
        ratios = {}
        for scene in scene_ids:
            low = float(self.store.scene_attrs(scene)["voxel_size"])
            high = float(self.target_store.scene_attrs(scene)["voxel_size"])
            ratios[scene] = low / high
        first = next(iter(ratios.values()))
        odd = [s for s, r in ratios.items() if abs(r - first) > SCALE_TOLERANCE * first]
        if odd:
            raise ValueError(
                f"{self.target_store.url}: voxel_size: the target/input ratio of {odd[:3]} "
                f"differs from {first:.4g} (scene {scene_ids[0]}): one factor per run"
            )
        if first <= 1 + SCALE_TOLERANCE:
            raise ValueError(
                f"{self.target_store.url}: voxel_size: targets are not finer than the inputs "
                f"(ratio {first:.4g})"
            )
        self.scale = round(first, 3)

    def _paired(self, scenes: list[str], augment: bool) -> PairedGrids:
        c = self.config
        inputs = GridDataset(c.store_url, scenes, size=self.input_size, augment=augment,
                             seed=c.seed, alpha_step=self.alpha_step)  # fmt: skip
        targets = GridDataset(c.target_store_url, scenes, size=self.target_size,
                              augment=augment, seed=c.seed, alpha_step=self.alpha_step)  # fmt: skip
        return PairedGrids(inputs, targets)

    def datasets(self, train_scenes, val_scenes):
        c = self.config
        self.labelled_scenes = labelled_subset(train_scenes, c.train_scenes, c.label_fraction)
        train = self._paired(self.labelled_scenes, c.augment)
        val = self._paired(val_scenes, False) if val_scenes else None
        self.refuse_oversized([train.inputs, *((val.inputs,) if val else ())])
        return train, val

    def refuse_oversized(self, datasets: list[GridDataset]) -> None:
        """Input grids larger than the cube would be cut to its corner (and their targets
        with them): refused, naming a resolution that holds them."""
        big = {scene: shape for d in datasets for scene, shape in d.oversized().items()}
        if not big:
            return
        scene, shape = max(big.items(), key=lambda item: max(item[1]))
        c = self.mae_config
        stride = c.patch_size * 2 ** (len(c.depths) - 1)
        fits = math.ceil(max(shape) / stride) * stride
        raise ValueError(
            f"{self.config.store_url}: {len(big)} scenes' grids exceed the {self.input_size}^3 "
            f"cube (largest {'x'.join(map(str, shape))}, scene {scene!r}); super-resolution "
            f"reads each grid as one cube: pass --resolution {fits} (or more), or store "
            "smaller grids"
        )

    def extra_sample_bytes(self) -> int:
        return 4 * 4 * self.target_size**3 + self.target_size**3  # the target grid and its valid

    def probe_batch(self, micro_batch: int, device: torch.device) -> Batch:
        t = self.target_size
        target = torch.zeros((micro_batch, 4, t, t, t), device=device)
        return {**super().probe_batch(micro_batch, device), "target": target}

    def make_network(self) -> nn.Module:
        return build_superres_net(self.mae_config, self.scale)

    def model_config(self) -> dict[str, Any]:
        return {**super().model_config(), "scale": self.scale}

    def losses(self, model, batch, device):
        pred = model(batch["rgba"].to(device, non_blocking=True)).float()  # (B, 4, S', S', S')
        return {"loss": superres_loss(pred, batch["target"].to(device, non_blocking=True))}

    def predict(self, model, batch, device, amp_dtype):
        rgba = batch["rgba"].to(device)  # (B, 4, S, S, S)
        target = batch["target"].to(device)  # (B, 4, S', S', S')
        with autocast(device, amp_dtype):
            pred = model(rgba).float()  # (B, 4, S', S', S')
        sse, count = occupied_rgb_errors(pred, target)  # once, for the loss and the PSNR
        return {"rgba": rgba, "pred": pred, "target": target, "sse": sse, "count": count,
                "losses": {"loss": sse / count.clamp_min(1)}}  # fmt: skip

    def metric(self) -> BatchMetric:
        return BatchMetric(PooledColourPSNR(), _feed_psnr)

    def draw(self, path: Path, batch: Batch, prediction: dict, title: str) -> Path:
        p = prediction
        return save_superres(path, p["rgba"][0], p["pred"][0], p["target"][0], title)

    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        info.update(scale=self.scale, target_store_url=self.config.target_store_url,
                    target_size=self.target_size if self.scale else None)  # fmt: skip
        return info

    @classmethod
    def task_rows(cls, summary: dict[str, Any]) -> list[tuple[str, Any]]:
        return [
            ("val PSNR, pooled (dB)", summary.get("val_psnr")),
            ("val PSNR, mean of batches (dB)", summary.get("val_mean_batch_psnr")),
            ("val MSE", summary.get("val_mse")),
            ("scale", summary.get("scale")),
        ]

    @classmethod
    def headline(cls, summary: dict[str, Any]) -> str:
        return f"val PSNR {summary.get('val_psnr')} dB"

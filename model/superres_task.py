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
beside the reference's mean of per-batch PSNRs (:mod:`model.superres_metrics`), and
top-down pictures of input, prediction and target (``RUN/superres/``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from grid_store import GridStore
from grid_store.dataset import GridDataset
from model.finetune import DenseTask, FinetuneConfig, labelled_subset
from model.skip_net import build_superres_net
from model.superres_metrics import PooledColourPSNR, occupied_rgb_errors, superres_loss
from model.task_pictures import save_superres
from model.trainer import autocast

SCALE_TOLERANCE = 0.02
"""Relative disagreement of the voxel-size ratio between scenes that is still one factor."""


class PairedGrids(Dataset):
    """Sample ``i`` of ``inputs`` with the target grid of the same scene from ``targets``
    (both :class:`GridDataset`, same scene order, seed and augmentation)."""

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
        low, high = self.inputs[index], self.targets[index]
        return {"rgba": low["rgba"], "valid": low["valid"], "target": high["rgba"],
                "scene_id": low["scene_id"]}  # fmt: skip


class SuperResolutionTask(DenseTask):
    """Fine-tune (or train from scratch) the skip network to predict a finer grid."""

    name = "superres"
    loss_terms = ("loss",)
    val_keys = ("psnr", "mse", "mean_batch_psnr", "loss")
    picture_dir = "superres"

    def __init__(self, config: FinetuneConfig, ctx) -> None:
        super().__init__(config, ctx)
        self.target_store = GridStore(config.target_store_url, mode="r")
        self.scale: float | None = None

    @property
    def target_size(self) -> int:
        return math.floor(self.resolution * self.scale + 1e-6)

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
        inputs = GridDataset(c.store_url, scenes, size=self.resolution, augment=augment,
                             seed=c.seed)  # fmt: skip
        targets = GridDataset(c.target_store_url, scenes, size=self.target_size,
                              augment=augment, seed=c.seed)  # fmt: skip
        return PairedGrids(inputs, targets)

    def datasets(self, train_scenes, val_scenes):
        c = self.config
        self.labelled_scenes = labelled_subset(train_scenes, c.train_scenes, c.label_fraction)
        train = self._paired(self.labelled_scenes, c.augment)
        return train, (self._paired(val_scenes, False) if val_scenes else None)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rgba": torch.stack([s["rgba"] for s in samples]),  # (B, 4, S, S, S)
            "valid": torch.stack([s["valid"] for s in samples]),  # (B, S, S, S)
            "target": torch.stack([s["target"] for s in samples]),  # (B, 4, S', S', S')
            "scene_id": [s["scene_id"] for s in samples],
        }

    def make_network(self) -> nn.Module:
        return build_superres_net(self.mae_config, self.scale)

    def losses(self, model, batch, device):
        pred = model(batch["rgba"].to(device, non_blocking=True)).float()  # (B, 4, S', S', S')
        return {"loss": superres_loss(pred, batch["target"].to(device, non_blocking=True))}

    def evaluate(self, model, loader, ctx, amp_dtype, picture_path, title):
        psnr = PooledColourPSNR()
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # (sse, values, batches)
        for i, batch in enumerate(loader):
            rgba = batch["rgba"].to(ctx.device)  # (B, 4, S, S, S)
            target = batch["target"].to(ctx.device)  # (B, 4, S', S', S')
            with autocast(ctx.device, amp_dtype):
                pred = model(rgba).float()  # (B, 4, S', S', S')
            sse, count = occupied_rgb_errors(pred, target)
            sums += torch.stack([sse.double(), count.double(), torch.ones_like(sse).double()])
            psnr.update(pred, target)
            if i == 0 and picture_path is not None and ctx.is_main:
                save_superres(picture_path, rgba[0], pred[0], target[0],
                              f"{title} scene {batch['scene_id'][0]}")  # fmt: skip
        sse, values, batches = ctx.all_reduce_sum(sums).tolist()
        scores = psnr.compute()  # this rank's batches: the mean of batch PSNRs stays per rank
        mse = sse / values if values else math.nan
        scores.update(
            mse=mse,
            psnr=-10 * math.log10(mse) if values and mse > 0 else math.nan,
            values=int(values),
            loss=mse if batches else None,
        )
        return scores

    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        info.update(scale=self.scale, target_store_url=self.config.target_store_url,
                    target_size=self.target_size if self.scale else None)  # fmt: skip
        return info

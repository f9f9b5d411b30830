"""One optimiser step: autocast, gradient accumulation over micro-batches, clip and update.

Randomness inside a step: the task's generators named in ``shared`` (the MAE's mask) restart
from the same state for every micro-batch of one optimiser step, so accumulating ``k``
micro-batches is the update of one batch ``k`` times larger (one mask per step, as the
reference draws one per batch); they end where one forward pass leaves them. Every other
generator (detection's rotation/scale draws) runs on, so each micro-batch gets its own draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from model.training.distributed import no_gradient_sync

LossFn = Callable[[nn.Module, dict[str, Any]], dict[str, torch.Tensor]]

AMP_MODES = ("auto", "bf16", "off")


def resolve_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for full fp32 (``auto``: bf16 on CUDA only)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp: {amp!r} is not one of {AMP_MODES}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; nothing for ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulate_task_gradients(
    model: nn.Module,
    micro_batches: Sequence[dict[str, Any]],
    losses: LossFn,
    loss_terms: Sequence[str],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    shared: dict[str, torch.Generator] | None = None,
) -> torch.Tensor:
    """Forward and backward over the micro-batches of one optimiser step.

    ``shared`` generators restart from the same state for every micro-batch (see the module
    doc). Gradients are the mean over micro-batches (DDP all-reduces only after the last).

    Returns:
        ``(len(loss_terms),)`` detached means of the terms over the micro-batches.
    """
    n = len(micro_batches)
    generators = shared or {}
    start = {name: g.get_state() for name, g in generators.items()}
    terms = torch.zeros(len(loss_terms), device=device)
    for i, batch in enumerate(micro_batches):
        for name, g in generators.items():
            g.set_state(start[name])
        with no_gradient_sync(model, last_micro_batch=i == n - 1):
            with autocast(device, amp_dtype):
                out = losses(model, batch)
            (out["loss"] / n).backward()
        terms += torch.stack([out[t].detach().float() for t in loss_terms]) / n
    return terms


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    clip_grad_norm: float,
) -> tuple[torch.Tensor, float]:
    """Clip, step the optimiser and the (per-step) schedule; returns ``(grad norm, lr used)``."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach(), lr

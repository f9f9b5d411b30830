"""How sharply each encoder stage attends: the entropy of its window attention.

An untrained Swin block attends almost uniformly inside its window (its query-key logits are
near 0), so at the start of training it averages its neighbours and the gradient reaches
every token. Pretraining can grow the query and key projections until each token takes most
of its weight from one or two others: a downstream task fine-tuned from there starts in a
saturated softmax, whatever the features encode. The figure per stage is the entropy of the
attention rows over ``log N`` (``N`` tokens a window): 1 for uniform attention, 0 for each
token attending to one; averaged over the stage's blocks, windows, heads and query tokens of
the rooms given, with the shifted windows' region masking included (which is why even an
untrained network's shifted blocks score below 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.networks.encoder import EncoderFront
from model.networks.swin3d import WindowAttention3D


def normalised_entropy(weights: Tensor) -> Tensor:
    """Mean over rows of ``H(row) / log N`` for attention ``weights`` ``(..., N, N)`` whose
    rows sum to 1: a 0-d tensor in [0, 1]."""
    n = weights.shape[-1]
    if n < 2:
        raise ValueError(f"attention over {n} token(s) has no entropy to compare")
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(dim=-1)
    return entropy.mean() / math.log(n)


@torch.no_grad()
def attention_entropy(network: EncoderFront, rgba: Tensor) -> list[float]:
    """Per encoder stage, the normalised attention entropy (see the module doc) of
    ``network`` on the ``(B, 4, S, S, S)`` grids ``rgba`` (unmasked, as fine-tuning sees them)."""
    stages = network.encoder.stages
    sums = [0.0] * len(stages)
    counts = [0] * len(stages)

    def meter(stage: int):
        def hook(module: WindowAttention3D, args: tuple[Tensor, ...]) -> None:
            sums[stage] += float(normalised_entropy(module.attention_weights(args[0])))
            counts[stage] += 1

        return hook

    handles = [
        block.attn.register_forward_pre_hook(meter(i))
        for i, stage in enumerate(stages)
        for block in stage
        if isinstance(getattr(block, "attn", None), WindowAttention3D)
    ]  # fmt: skip
    was_training = network.training
    try:
        network.eval()
        network.encoder_stages(rgba)
    finally:
        network.train(was_training)
        for handle in handles:
            handle.remove()
    return [total / count if count else math.nan for total, count in zip(sums, counts, strict=True)]

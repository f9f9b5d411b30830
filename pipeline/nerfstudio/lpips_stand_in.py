"""nerfstudio models without LPIPS's download.

nerfacto (and nerfstudio's instant-ngp) build torchmetrics' LPIPS whenever the model is
built, training or not, and LPIPS loads torchvision's ImageNet AlexNet weights, downloaded
on first use: without the network, building the model dies in ``torch.hub`` with a
``URLError``. LPIPS is only an evaluation metric (nerfacto scores held-out images with it);
it takes no part in training, in the field, or in a grid.

:func:`lpips_stand_in` puts a stand-in in its place while a model is built: it has no
parameters and scores ``nan``, so a run trained with it says ``lpips nan`` in its
evaluation logs rather than a number from a random network, and its checkpoint holds no
``lpips.*`` keys (a run trained online holds them: the loader ignores that metric's keys
on both sides).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

# the metric's own submodule in a model's state dict (``_model.lpips.net...``)
LPIPS_PREFIX = "lpips."


def alexnet_weights_cached() -> bool:
    """Whether torchvision's AlexNet weights (LPIPS's backbone) are in torch's hub cache."""
    import torch.hub
    from torchvision.models import AlexNet_Weights

    name = Path(AlexNet_Weights.DEFAULT.url).name
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()


def _stand_in_class() -> type:
    import torch

    class UnavailableLPIPS(torch.nn.Module):
        """LPIPS without its AlexNet weights: every score is ``nan``; no parameters."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def forward(self, *images: torch.Tensor) -> torch.Tensor:
            return torch.tensor(float("nan"))

    return UnavailableLPIPS


def install_lpips_stand_in() -> None:
    """Replace torchmetrics' LPIPS for the rest of this process (nerfacto imports the class
    from ``torchmetrics.image.lpip`` each time it builds a model)."""
    import torchmetrics.image.lpip as lpip

    lpip.LearnedPerceptualImagePatchSimilarity = _stand_in_class()


@contextlib.contextmanager
def lpips_stand_in() -> Iterator[None]:
    """Within the block, models are built with the LPIPS stand-in; restored after."""
    import torchmetrics.image.lpip as lpip

    original = lpip.LearnedPerceptualImagePatchSimilarity
    lpip.LearnedPerceptualImagePatchSimilarity = _stand_in_class()
    try:
        yield
    finally:
        lpip.LearnedPerceptualImagePatchSimilarity = original


__all__ = ["LPIPS_PREFIX", "alexnet_weights_cached", "install_lpips_stand_in", "lpips_stand_in"]

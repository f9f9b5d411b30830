"""``ns-train`` that also trains offline: ``python -m pipeline.nerfstudio.ns_train nerfacto ...``
(in the nerfstudio environment, ``make nerfstudio``).

Plain ``ns-train nerfacto`` dies without the network before its first step: building the
model builds LPIPS, which downloads AlexNet weights (:mod:`.lpips_stand_in`). Where those
weights are not in torch's hub cache, this entry point builds the model with the LPIPS
stand-in (evaluation logs say ``lpips nan``; training is unchanged); where they are, it
changes nothing. Every argument goes to nerfstudio's own ``ns-train`` as it is.
"""

from __future__ import annotations

import logging
import sys

from pipeline.nerfstudio.lpips_stand_in import alexnet_weights_cached, install_lpips_stand_in

log = logging.getLogger(__name__)

CPU_MODEL_FLAGS = (
    "--pipeline.model.log2-hashmap-size", "14",
    "--pipeline.model.num-levels", "8",
    "--pipeline.model.max-res", "256",
    "--pipeline.model.num-proposal-samples-per-ray", "64", "32",
    "--pipeline.model.num-nerf-samples-per-ray", "32",
)  # fmt: skip
"""nerfacto small enough for a CPU (~0.14 s a step with 256 rays, one thread): a smaller
hash table, fewer levels and fewer samples per ray. With nerfstudio's torch modules
(``--pipeline.model.implementation torch``; tiny-cuda-nn needs CUDA), which callers add
as they choose the device."""


def main(argv: list[str] | None = None) -> None:
    """Run nerfstudio's ``ns-train`` with ``argv`` (default: this process's arguments)."""
    sys.argv = ["ns-train", *(sys.argv[1:] if argv is None else argv)]
    if not alexnet_weights_cached():
        log.warning(
            "torchvision's AlexNet weights are not cached (and cannot be fetched offline): "
            "LPIPS scores nan in this run's evaluations; training is unaffected"
        )
        install_lpips_stand_in()
    from nerfstudio.scripts.train import entrypoint

    entrypoint()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()

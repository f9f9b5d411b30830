"""The networks: pure ``nn.Module`` s that import only torch (and einops).

- :mod:`~model.networks.swin3d`: the 3D Swin Transformer encoder; :mod:`~model.networks.pos_embed`
  its fixed sin-cos table; :mod:`~model.networks.encoder`: the front every network shares.
- :mod:`~model.networks.decoder`: the UNETR decoder (one copy of blocks 4-2).
- :mod:`~model.networks.mae`: the MAE (masking, loss) and :class:`MAEConfig`.
- :mod:`~model.networks.skip_net`: the dense downstream network and its heads.
- :mod:`~model.networks.detector`: the FPN and NeRF-RPN's FCOS head.
- :mod:`~model.networks.presets`: the registry of architectures (``tiny``, ``swin_t``, ``swin_s``).
"""

from model.networks.mae import MAEConfig, MAEOutput, NeRFMAE
from model.networks.presets import PRESETS, build_mae, get_config, list_presets
from model.networks.swin3d import SwinTransformer3D

__all__ = [
    "PRESETS",
    "MAEConfig",
    "MAEOutput",
    "NeRFMAE",
    "SwinTransformer3D",
    "build_mae",
    "get_config",
    "list_presets",
]

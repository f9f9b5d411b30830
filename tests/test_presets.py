"""Every preset of the registry (not a hard-coded list, as timm's tests run every model) builds,
runs forward and backward at its smallest input, and gives every trainable parameter a
finite gradient; each network the tasks build on a preset accepts its encoder unchanged."""

from __future__ import annotations

import pytest
import torch

from model.networks.detector import Detector, DetectorConfig
from model.networks.presets import PRESETS, build_mae, get_config, list_presets
from model.networks.skip_net import build_semantic_net


def _smallest(name: str) -> int:
    config = get_config(name)
    return config.patch_size * 2 ** (len(config.depths) - 1)


def test_registry_lists_factories_of_fresh_configs():
    assert list_presets() == sorted(PRESETS)
    for name in list_presets():
        first, second = PRESETS[name](), PRESETS[name]()
        assert first == second and first is not second and first.depths is not second.depths


@pytest.mark.parametrize("name", list_presets())
def test_preset_runs_forward_and_backward_with_finite_gradients(name):
    torch.manual_seed(0)
    s = _smallest(name)
    model = build_mae(name, resolution=s)
    rgba = torch.rand(1, 4, s, s, s)
    valid = torch.ones(1, s, s, s, dtype=torch.bool)
    out = model(rgba, valid, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.pred.shape == (1, 4, s, s, s)
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert not model.pos_embed.requires_grad  # the sin-cos table stays fixed


@pytest.mark.parametrize("name", list_presets())
def test_downstream_networks_share_the_preset_encoder(name):
    s = _smallest(name)
    config = get_config(name, resolution=s)
    with torch.device("meta"):  # shapes only: no memory for swin_s
        mae = build_mae(config)
        encoder_keys = {k: v.shape for k, v in mae.state_dict().items() if k.startswith("encoder.")}
        for network in (build_semantic_net(config, 5),
                        build_semantic_net(config, 5, "encoder_path"),
                        Detector(config, DetectorConfig())):  # fmt: skip
            own = {k: v.shape for k, v in network.state_dict().items()
                   if k.startswith("encoder.")}  # fmt: skip
            assert own == encoder_keys

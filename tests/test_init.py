"""Every module a method trains starts as its authors' code starts it (kdsearch.nn.init)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdsearch.methods import create_method, list_methods
from kdsearch.nn import resnet_init_
from kdsearch.settings import single_trial

# Modules that do not start as ResNet convs, on purpose: DMDD's stated starts (identities,
# zero residual links, the channel mean: training starts from the teacher's own maps) and
# ADPS's UNet-style PSM and fusion convs, at PyTorch's default (see adps.py).
OTHER_STARTS = {"dmdd": ("splits.", "_pmn.", "pyramids.", "compress"), "adps": ("psm.", "fuse.")}


def _method(name: str, profile: str = "smoke") -> nn.Module:
    trial = single_trial(name, profile, {"device": "cpu", "pretrained": "none"})
    torch.manual_seed(0)
    return create_method(name, trial.train.image_size, trial.method_config)


def _kaiming_fan_out_std(conv: nn.Conv2d) -> float:
    return math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))


def _trained(method: nn.Module, kind: type[nn.Module]) -> list[tuple[str, nn.Module]]:
    fixed = OTHER_STARTS.get(method.__class__.__name__.lower(), ())
    return [(name, module) for name, module in method.named_modules()
            if type(module) is kind and any(p.requires_grad for p in module.parameters(recurse=False))
            and not any(part in name for part in fixed)]


@pytest.mark.parametrize("name", list_methods())
def test_every_trained_conv_starts_as_a_kaiming_fan_out_draw(name: str) -> None:
    method = _method(name)
    convs = [(n, c) for n, c in _trained(method, nn.Conv2d) if c.weight.numel() >= 2000]
    assert len(convs) >= 5
    ratios = {n: c.weight.std().item() / _kaiming_fan_out_std(c) for n, c in convs}
    assert all(0.9 < r < 1.1 for r in ratios.values()), {n: round(r, 3) for n, r in ratios.items() if not 0.9 < r < 1.1}
    for norm_name, norm in _trained(method, nn.BatchNorm2d):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)), norm_name
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias)), norm_name


@pytest.mark.parametrize("name", ["rd4ad", "mrkd"])
def test_the_paper_networks_start_as_the_authors_code(name: str) -> None:
    """WRN50 at the paper budget: the decoder's first conv (2048 → 512, 1×1) has std √(2/512)."""
    method = _method(name, "paper")
    network = method.network
    first = network.decoder.stages[0][0].body[0]
    assert first.weight.shape == (512, 2048, 1, 1)
    assert first.weight.std().item() == pytest.approx(0.0625, rel=0.02)
    trained = [network.bottleneck, network.decoder] + ([method.generators] if name == "mrkd" else [])
    convs = [c for module in trained for c in module.modules() if type(c) is nn.Conv2d]
    ratios = sorted(c.weight.std().item() / _kaiming_fan_out_std(c) for c in convs)
    assert ratios[len(ratios) // 2] == pytest.approx(1.0, abs=0.02)  # was 0.41 with PyTorch's default
    # The authors' loop leaves the upsampling transposed convs at PyTorch's default.
    for up in (c for c in network.decoder.modules() if isinstance(c, nn.ConvTranspose2d)):
        fan_in = up.weight.shape[1] * up.weight.shape[2] * up.weight.shape[3]
        assert up.weight.abs().max().item() <= 1.0 / math.sqrt(fan_in) + 1e-7


def test_resnet_init_leaves_biases_and_transposed_convs_at_the_default() -> None:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.ConvTranspose2d(128, 64, 2, stride=2))
    torch.manual_seed(0)
    default = nn.Sequential(nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.ConvTranspose2d(128, 64, 2, stride=2))
    block[1].weight.data.fill_(3.0)
    resnet_init_(block)
    assert block[0].weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)
    assert torch.equal(block[0].bias, default[0].bias)
    assert torch.equal(block[1].weight, torch.ones(128))
    assert torch.equal(block[2].weight, default[2].weight)


def test_adps_psm_keeps_pytorchs_default_init() -> None:
    method = _method("adps")
    head = method.psm.head
    fan_in = head.weight.shape[1] * head.weight.shape[2] * head.weight.shape[3]
    # kaiming_uniform_(a=√5): |w| <= 1/√fan_in, far below a fan-out Kaiming draw's spread.
    assert head.weight.abs().max().item() <= 1.0 / math.sqrt(fan_in) + 1e-7

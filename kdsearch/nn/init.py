"""How trained modules start: the ResNet initialisation of RD4AD's and MRKD's code.

The authors' ``resnet.py`` / ``de_resnet.py`` (the OCBE ``BN_layer``, the reversed
decoder and MRKD's generation modules) end every constructor with one loop: each
``nn.Conv2d`` weight drawn from Kaiming-normal with ``mode="fan_out"`` for ReLU, each
BatchNorm / GroupNorm weight 1 and bias 0. What the loop leaves alone keeps PyTorch's
default: conv biases, and the 2×2 transposed convs that upsample (``ConvTranspose2d``
is not an ``nn.Conv2d``). torchvision's and timm's ResNets start the same way, so the
students built from them already do.
"""
from __future__ import annotations

from torch import nn

__all__ = ["resnet_init_"]


def resnet_init_(module: nn.Module) -> nn.Module:
    """Initialise ``module`` in place as the authors' ResNet constructors do; returns it."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return module

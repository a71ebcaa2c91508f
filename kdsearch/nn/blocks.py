"""Residual blocks shared by bottlenecks and reversed decoders.

One block type covers both ResNet families (``basic``: two 3×3 convs; ``bottleneck``:
1×1 → 3×3 → 1×1) and both directions: a strided 3×3 conv downsamples, a 2×2 transposed
conv upsamples, as in the reversed decoder of RD4AD (Deng & Li, CVPR 2022, Sec. 3.2).
"""
from __future__ import annotations

from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _resample(in_channels: int, out_channels: int, kernel: int, scale: str) -> nn.Module:
    if scale == "up":
        return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
    stride = 2 if scale == "down" else 1
    padding = kernel // 2
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)


class ResidualBlock(nn.Module):
    """A ResNet block that keeps, halves (``scale="down"``) or doubles (``"up"``) resolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kind: ``"basic"`` or ``"bottleneck"``.
        width: inner width of a bottleneck block (ignored for basic blocks).
        scale: ``"same"``, ``"down"`` or ``"up"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: str = "bottleneck", width: int | None = None,
                 scale: str = "same") -> None:
        super().__init__()
        if kind not in ("basic", "bottleneck"):
            raise ValueError(f"block kind must be 'basic' or 'bottleneck', got {kind!r}")
        if scale not in ("same", "down", "up"):
            raise ValueError(f"scale must be 'same', 'down' or 'up', got {scale!r}")
        if kind == "basic":
            layers = [
                _resample(in_channels, out_channels, 3, scale), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            ]
        else:
            width = width or out_channels // 4
            layers = [
                nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                _resample(width, width, 3, scale), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
            ]
        self.body = nn.Sequential(*layers)
        if scale != "same" or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(_resample(in_channels, out_channels, 1, scale), nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation(self.body(x) + self.shortcut(x))


def residual_stage(in_channels: int, out_channels: int, depth: int, kind: str, width: int | None, scale: str) -> nn.Sequential:
    """``depth`` residual blocks; only the first one changes resolution and channel count."""
    blocks = [ResidualBlock(in_channels, out_channels, kind, width, scale)]
    blocks += [ResidualBlock(out_channels, out_channels, kind, width, "same") for _ in range(depth - 1)]
    return nn.Sequential(*blocks)

"""Reversed ResNet student decoder of RD4AD (Deng & Li, CVPR 2022, Sec. 3.2).

A mirror of the teacher's stages: each stage upsamples ×2 with a transposed conv in its
first block and emits the features that are compared with the teacher's at that level.
"""
from __future__ import annotations

import torch
from torch import nn

from kdsearch.nn.blocks import residual_stage
from kdsearch.nn.init import resnet_init_


class ReverseDecoder(nn.Module):
    """Student decoder producing one feature map per teacher level.

    Args:
        in_channels: channels of the bottleneck code.
        channels: teacher channels per level, shallow to deep (the decoder emits these).
        depths: blocks per decoder stage, in construction order (deepest stage first).
        kind: ``"basic"`` or ``"bottleneck"``.
        width_factor: bottleneck inner-width multiplier (2 for wide ResNets).
    """

    def __init__(self, in_channels: int, channels: list[int], depths: list[int], kind: str = "bottleneck",
                 width_factor: float = 1.0) -> None:
        super().__init__()
        if len(depths) != len(channels):
            raise ValueError(f"need one depth per level: {len(channels)} levels, depths {depths}")
        self.stages = nn.ModuleList()
        previous = in_channels
        for out_channels, depth in zip(reversed(channels), depths):
            width = int(out_channels // 4 * width_factor) if kind == "bottleneck" else None
            self.stages.append(residual_stage(previous, out_channels, depth, kind, width, "up"))
            previous = out_channels
        resnet_init_(self)

    def forward(self, code: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = code
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]

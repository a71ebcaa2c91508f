"""The one-class bottleneck embedding (OCBE) of RD4AD (Deng & Li, CVPR 2022, Sec. 3.3).

Multi-scale feature fusion: each shallower teacher feature is brought to the deepest
level's resolution and width by stride-2 3×3 conv-BN-ReLU steps, the levels are
concatenated, and one residual stage (stride 2) compresses them into the compact code
the student decoder starts from. Sizes come from the teacher's ``feature_info``.
"""
from __future__ import annotations

import torch
from torch import nn

from kdsearch.nn.blocks import conv_bn_relu, residual_stage
from kdsearch.nn.init import resnet_init_


class OneClassBottleneck(nn.Module):
    """OCBE: multi-scale fusion + one-class embedding.

    Args:
        channels: teacher channels per level, shallow to deep (e.g. ``[256, 512, 1024]``).
        reductions: teacher strides per level; consecutive levels must differ by 2×.
        depth: residual blocks in the embedding stage (RD4AD uses the teacher's last-stage depth).
        kind: ``"basic"`` or ``"bottleneck"`` blocks, matching the teacher family.
        width_factor: bottleneck inner-width multiplier (2 for wide ResNets).
    """

    def __init__(self, channels: list[int], reductions: list[int], depth: int = 3, kind: str = "bottleneck",
                 width_factor: float = 1.0) -> None:
        super().__init__()
        for shallow, deep in zip(reductions, reductions[1:]):
            if deep != 2 * shallow:
                raise ValueError(f"OCBE needs levels that halve resolution step by step, got strides {reductions}")
        self.align = nn.ModuleList()
        for level in range(len(channels) - 1):
            steps = [conv_bn_relu(channels[i], channels[i + 1], stride=2) for i in range(level, len(channels) - 1)]
            self.align.append(nn.Sequential(*steps))
        self.out_channels = 2 * channels[-1]
        width = int(self.out_channels // 4 * width_factor) if kind == "bottleneck" else None
        self.embed = residual_stage(len(channels) * channels[-1], self.out_channels, depth, kind, width, "down")
        resnet_init_(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        aligned = [align(f) for align, f in zip(self.align, features[:-1])] + [features[-1]]
        return self.embed(torch.cat(aligned, dim=1))

"""Non-overlapping patch grids and stage-by-stage access to timm feature extractors.

ADPS (asymmetric distillation, IEEE TNNLS) feeds its student k×k patches of the image
and puts the patch features back where the patches came from. Both directions are
pure reshapes, so a batch of B images becomes one batch of B·k² patches with no
per-sample Python.
"""
from __future__ import annotations

import torch
from torch import nn


def _check_grid(height: int, width: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"the patch grid needs k >= 1, got {k}")
    if height % k or width % k:
        raise ValueError(f"a {height}×{width} map cannot be cut into {k}×{k} equal patches")


def patchify(x: torch.Tensor, k: int) -> torch.Tensor:
    """Cut (B, C, H, W) into k×k non-overlapping patches: (B·k², C, H/k, W/k).

    Patches of one image are consecutive, in row-major grid order.
    """
    if k == 1:
        return x
    b, c, h, w = x.shape
    _check_grid(h, w, k)
    ph, pw = h // k, w // k
    patches = x.reshape(b, c, k, ph, k, pw).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b * k * k, c, ph, pw)


def unpatchify(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B·k², C, h, w) → (B, C, k·h, k·w), each patch in place."""
    if k == 1:
        return x
    n, c, ph, pw = x.shape
    if n % (k * k):
        raise ValueError(f"{n} patches do not make whole {k}×{k} grids")
    b = n // (k * k)
    grid = x.reshape(b, k, k, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, k * ph, k * pw)


class StagedFeatures(nn.Module):
    """A timm ``features_only`` network split into one segment per returned feature level.

    Segment ``i`` runs everything after level ``i - 1`` up to and including level ``i``
    (segment 0 includes the stem), so a caller can change the input between levels,
    e.g. cut the map into patches for some levels only. The segments own the modules;
    the timm wrapper itself is not kept, so each parameter is registered once.

    Args:
        backbone: a timm feature extractor (``FeatureListNet``) built with ``features_only``.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        info = backbone.feature_info
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())
        # FeatureDictNet stores submodules under names with '.' replaced by '_'.
        wanted = [name.replace(".", "_") for name in info.module_name()]
        segments, current = [], []
        for name, module in backbone.named_children():
            if len(segments) == len(wanted):
                break
            current.append(module)
            if name == wanted[len(segments)]:
                segments.append(nn.Sequential(*current))
                current = []
        if len(segments) != len(wanted):
            raise ValueError(f"could not find feature modules {wanted} among the backbone's children")
        self.stages = nn.ModuleList(segments)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

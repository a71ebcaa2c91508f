"""Feature-comparison maps and losses shared by the methods.

``1 - cos`` maps, their upsampled sum, the Gaussian smoothing RD4AD applies (σ = 4,
kernel truncated at 4σ, symmetric border as in ``scipy.ndimage.gaussian_filter``), and
the flattened cosine distillation loss of RD4AD (Eq. 2).

Maps are computed in fp32 whatever autocast the caller runs under (:func:`full_precision`):
a bf16 map has 8 mantissa bits, so neighbouring pixels and images tie, and AUROC and
AU-PRO then break those ties arbitrarily.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device``: what runs inside computes in the dtype of its inputs (fp32)."""
    return torch.autocast(device.type, enabled=False)


def cosine_distance_map(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``1 - cos`` over channels, in fp32: (B, C, h, w) × 2 → (B, h, w)."""
    with full_precision(teacher.device):
        return 1.0 - F.cosine_similarity(teacher.float(), student.float(), dim=1)


def upsample_maps(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample (B, h_i, w_i) maps to ``size`` in fp32: returns (L, B, H, W)."""
    with full_precision(maps[0].device):
        return torch.stack(
            [F.interpolate(m.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=True).squeeze(1)
             for m in maps])


def _symmetric_pad_index(length: int, radius: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(-radius, length + radius, device=device)
    period = 2 * length
    index = torch.remainder(index, period)
    return torch.where(index >= length, period - 1 - index, index)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps in fp32; ``sigma <= 0`` returns the input."""
    if sigma <= 0:
        return maps
    radius = gaussian_kernel_radius(sigma)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.float().unsqueeze(1)
    height, width = x.shape[-2:]
    with full_precision(maps.device):  # autocast would run these convolutions in bf16
        x = x.index_select(2, _symmetric_pad_index(height, radius, maps.device))
        x = F.conv2d(x, kernel.view(1, 1, -1, 1))
        x = x.index_select(3, _symmetric_pad_index(width, radius, maps.device))
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x.squeeze(1)


def flattened_cosine_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """RD4AD loss: Σ over levels of the batch mean of ``1 - cos`` between flattened maps."""
    if len(teacher) != len(student):
        raise ValueError(f"{len(teacher)} teacher levels vs {len(student)} student levels")
    total = teacher[0].new_zeros(())
    for t, s in zip(teacher, student):
        total = total + (1.0 - F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)).mean()
    return total


def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values of each (B, H, W) map: (B,)."""
    flat = maps.flatten(1)
    if k < 1 or k > flat.shape[1]:
        raise ValueError(f"top-k needs 1 <= k <= {flat.shape[1]} pixels, got k={k}")
    return flat.topk(k, dim=1).values.mean(dim=1)


def gaussian_kernel_radius(sigma: float) -> int:
    """Radius of the truncated kernel used by :func:`gaussian_blur`."""
    return 0 if sigma <= 0 else int(4.0 * sigma + 0.5)


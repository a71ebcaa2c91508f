"""ImageNet normalisation of image batches, on whatever device they live."""
from __future__ import annotations

import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_STATS: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _stats(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) tensors, made once per device and dtype."""
    key = (device, dtype)
    if key not in _STATS:
        mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=dtype, device=device).view(1, 3, 1, 1)
        _STATS[key] = (mean, std)
    return _STATS[key]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise a batch of RGB images.

    Args:
        images: (B, 3, H, W), either uint8 in [0, 255] or floating point in [0, 1], on
            any device.

    Returns:
        ``(images / 255 if uint8 - mean) / std`` per channel, float32 for uint8 input
        (the input's dtype for floating input), on the input's device.

    Raises:
        ValueError: ``images`` is not (B, 3, H, W).
        TypeError: ``images`` is neither uint8 nor floating point.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"normalize expects (B, 3, H, W) images, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.to(torch.float32).div_(255.0)
    elif images.is_floating_point():
        x = images
    else:
        raise TypeError(f"normalize expects uint8 or floating-point images, got {images.dtype}")
    mean, std = _stats(x.device, x.dtype)
    return (x - mean) / std

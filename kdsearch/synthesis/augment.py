"""Batched colour augmentations of texture sources, a cheap stand-in for DRAEM's imgaug set.

DRAEM's public training code draws 3 distinct augmenters out of 10 for each anomaly
source image: gamma contrast (0.5-2.0, per channel), brightness multiply (0.8-1.2) and
add (-30..30 grey levels), PIL sharpness, hue and saturation shift (-50..50, per
channel), solarize (p=0.5, threshold 32-128), posterize, invert, PIL autocontrast, PIL
equalize, and an affine rotation of -45..45 degrees. Here the same ten run as torch ops
on a whole batch on its own device; each image gets its own 3 operations and its own
parameters. Operations run in this fixed order rather than DRAEM's random order, and
hue/saturation is a rotation and scaling of chroma in YIQ space rather than imgaug's
HSV arithmetic: both change the colour statistics the same way but are not
pixel-identical to imgaug.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdsearch.synthesis._common import uniform

__all__ = ["random_color_augment", "NUM_COLOR_OPS"]

NUM_COLOR_OPS = 10

# PIL's ImageFilter.SMOOTH kernel, the blur that ImageEnhance.Sharpness blends against.
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
# RGB <-> YIQ (NTSC) matrices; chroma lives in the I and Q planes.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _gamma(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return x.clamp_min(0.0) ** p["gamma"].view(-1, 3, 1, 1)


def _brightness(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return x * p["mul"].view(-1, 1, 1, 1) + p["add"].view(-1, 1, 1, 1)


def _sharpness(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    kernel = _SMOOTH.to(x.device, x.dtype).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    # PIL's enhancement formula: factor 0 gives the blurred image, 1 the original.
    return torch.lerp(blurred, x, p["sharp"].view(-1, 1, 1, 1))


def _hue_saturation(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    to_yiq = _RGB_TO_YIQ.to(x.device, x.dtype)
    to_rgb = _YIQ_TO_RGB.to(x.device, x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = p["hue"]
    cos = torch.cos(angle).view(-1, 1, 1)
    sin = torch.sin(angle).view(-1, 1, 1)
    scale = p["sat"].view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    rotated = torch.stack((yiq[:, 0], scale * (cos * i - sin * q), scale * (sin * i + cos * q)), dim=1)
    return torch.einsum("ij,bjhw->bihw", to_rgb, rotated)


def _solarize(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    # imgaug's Solarize(0.5, ...) inverts above the threshold for half of the images.
    active = p["solarize_on"].view(-1, 1, 1, 1)
    above = x >= p["solarize_threshold"].view(-1, 1, 1, 1)
    return torch.where(active & above, 1.0 - x, x)


def _posterize(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    step = (2.0 ** (8 - p["bits"])).view(-1, 1, 1, 1)
    return torch.floor(torch.round(x.clamp(0.0, 1.0) * 255.0) / step) * step / 255.0


def _invert(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return 1.0 - x


def _autocontrast(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    # A flat channel has nothing to stretch; PIL leaves it as it is.
    return torch.where(span > 1e-6, (x - low) / span.clamp_min(1e-6), x)


def _equalize(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    batch, channels, height, width = x.shape
    levels = torch.round(x.clamp(0.0, 1.0) * 255.0).long().view(batch * channels, -1)
    hist = torch.zeros(batch * channels, 256, device=x.device, dtype=x.dtype)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=x.dtype))
    cdf = hist.cumsum(dim=1)
    # Map each level to its cumulative share, shifted so the darkest occupied level
    # stays black (the usual histogram-equalisation normalisation).
    first = torch.where(hist > 0, cdf, torch.full_like(cdf, float(height * width))).amin(dim=1, keepdim=True)
    lut = ((cdf - first) / (height * width - first).clamp_min(1.0)).clamp(0.0, 1.0)
    return lut.gather(1, levels).view(batch, channels, height, width)


def _rotate(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    angle = p["rotate"]
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack((torch.stack((cos, -sin, zero), 1), torch.stack((sin, cos, zero), 1)), 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # Zero fill outside the rotated source, as imgaug's Affine default (constant 0) does.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_OPS = (_gamma, _brightness, _sharpness, _hue_saturation, _solarize, _posterize, _invert,
        _autocontrast, _equalize, _rotate)


def random_color_augment(images: torch.Tensor, generator: torch.Generator, num_ops: int = 3) -> torch.Tensor:
    """Apply ``num_ops`` distinct random colour operations (of DRAEM's ten) to each image.

    Every parameter is drawn for every image whether used or not, so the number of draws
    from ``generator`` depends only on the batch size and results are reproducible.

    Args:
        images: float (B, 3, H, W) in [0, 1], any device.
        generator: source of randomness (any device).
        num_ops: operations per image, 0 to 10 (DRAEM: 3).

    Returns:
        float (B, 3, H, W) in [0, 1] on the images' device.

    Raises:
        ValueError: ``num_ops`` outside [0, 10].
    """
    if not 0 <= num_ops <= NUM_COLOR_OPS:
        raise ValueError(f"num_ops must be in [0, {NUM_COLOR_OPS}], got {num_ops}")
    batch = images.shape[0]
    device = images.device
    choice = uniform((batch, NUM_COLOR_OPS), generator, device).argsort(dim=1)[:, :num_ops]
    selected = torch.zeros(batch, NUM_COLOR_OPS, dtype=torch.bool, device=device)
    selected.scatter_(1, choice, True)
    params = {
        "gamma": uniform((batch, 3), generator, device, 0.5, 2.0),
        "mul": uniform((batch,), generator, device, 0.8, 1.2),
        "add": uniform((batch,), generator, device, -30.0 / 255.0, 30.0 / 255.0),
        "sharp": uniform((batch,), generator, device, 0.0, 2.0),
        # imgaug's hue value of ±50 on its ±255 scale is about ±70 degrees of hue.
        "hue": uniform((batch,), generator, device, -1.0, 1.0) * (50.0 / 255.0 * math.pi),
        "sat": uniform((batch,), generator, device, 1.0 - 50.0 / 128.0, 1.0 + 50.0 / 128.0),
        "solarize_on": uniform((batch,), generator, device) < 0.5,
        "solarize_threshold": uniform((batch,), generator, device, 32.0 / 255.0, 128.0 / 255.0),
        "bits": torch.floor(uniform((batch,), generator, device, 1.0, 9.0)).clamp(1.0, 8.0),
        "rotate": uniform((batch,), generator, device, -45.0, 45.0) * (math.pi / 180.0),
    }
    out = images
    for k, op in enumerate(_OPS):
        rows = selected[:, k].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        # Running each op on its own rows only keeps the cost near num_ops passes rather
        # than ten; index_copy keeps the batch order.
        sub = {name: value[rows] for name, value in params.items()}
        out = out.index_copy(0, rows, op(out[rows], sub).clamp(0.0, 1.0))
    return out

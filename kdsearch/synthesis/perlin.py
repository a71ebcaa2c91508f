"""Batched 2-D Perlin noise and DRAEM's thresholded Perlin anomaly masks.

DRAEM (Zavrtanik et al., ICCV 2021, Sec. 3.3) draws the anomaly shape as Perlin noise
thresholded at 0.5, with a lattice of 2**k cells per axis (k drawn independently per
axis from [0, 6) in the public code) and a random rotation of the noise image by up
to ±90°, whose corners fill with zeros. Here the whole batch is one vectorised torch
computation: every sample has its own lattice resolution and rotation, gathered from
one gradient tensor, so there is no per-sample Python loop and the work runs on the
images' device.
"""
from __future__ import annotations

import math

import torch

from kdsearch.synthesis._common import randint, rotate_about_centre, uniform

__all__ = ["perlin_noise", "perlin_masks"]


def _fade(t: torch.Tensor) -> torch.Tensor:
    # Perlin's quintic fade: zero first and second derivatives at the lattice points,
    # which is what makes the field (and its thresholded edges) smooth.
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _perlin_field(py: torch.Tensor, px: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Perlin noise at continuous lattice coordinates, one lattice per sample.

    Args:
        py: (B, H, W) vertical lattice coordinate of each pixel (non-negative).
        px: (B, H, W) horizontal lattice coordinate (non-negative).
        generator: source of the random gradient angles.

    Returns:
        (B, H, W) noise scaled by sqrt(2) as in DRAEM's implementation, so values
        lie in about [-1, 1].
    """
    batch = py.shape[0]
    device = py.device
    iy = py.floor()
    ix = px.floor()
    fy = py - iy
    fx = px - ix
    iy = iy.long()
    ix = ix.long()
    # One gradient lattice big enough for the largest sample; smaller samples use its
    # top-left corner. Drawing the full lattice for every sample keeps the number of
    # random draws independent of the data, hence reproducible.
    rows = int(iy.max()) + 2
    cols = int(ix.max()) + 2
    angles = uniform((batch, rows, cols), generator, device, 0.0, 2.0 * math.pi)
    grad_y = torch.cos(angles).reshape(-1)
    grad_x = torch.sin(angles).reshape(-1)
    base = (torch.arange(batch, device=device) * (rows * cols)).view(batch, 1, 1) + iy * cols + ix

    def corner(dy: int, dx: int) -> torch.Tensor:
        index = base + (dy * cols + dx)
        return grad_y[index] * (fy - dy) + grad_x[index] * (fx - dx)

    ty = _fade(fy)
    tx = _fade(fx)
    top = torch.lerp(corner(0, 0), corner(1, 0), ty)
    bottom = torch.lerp(corner(0, 1), corner(1, 1), ty)
    return math.sqrt(2.0) * torch.lerp(top, bottom, tx)


def perlin_noise(shape: tuple[int, int, int], res: tuple[int, int], generator: torch.Generator,
                 device: torch.device | str) -> torch.Tensor:
    """Batched 2-D Perlin noise with ``res`` lattice cells per axis.

    Pixel (i, j) sits at lattice coordinate (i * res_y / H, j * res_x / W), as in DRAEM's
    ``rand_perlin_2d``; unlike that code, H need not be a multiple of res.

    Args:
        shape: (B, H, W).
        res: lattice cells (vertical, horizontal), each >= 1.
        generator: source of the gradient angles (any device).
        device: where the noise is computed and returned.

    Returns:
        float32 (B, H, W), values in about [-1, 1], smooth between neighbouring pixels.

    Raises:
        ValueError: a non-positive size or resolution.
    """
    batch, height, width = shape
    if batch < 0 or height <= 0 or width <= 0 or res[0] < 1 or res[1] < 1:
        raise ValueError(f"perlin_noise needs positive shape and res, got shape={shape}, res={res}")
    rows = torch.arange(height, device=device, dtype=torch.float32) * (res[0] / height)
    cols = torch.arange(width, device=device, dtype=torch.float32) * (res[1] / width)
    py = rows.view(1, height, 1).expand(batch, height, width)
    px = cols.view(1, 1, width).expand(batch, height, width)
    return _perlin_field(py, px, generator)


def _rotated_noise(batch: int, height: int, width: int, res_y: torch.Tensor, res_x: torch.Tensor,
                   generator: torch.Generator, device: torch.device | str, max_angle: float) -> torch.Tensor:
    """Perlin noise with per-sample resolution, then the noise image rotated by an angle in
    [-max_angle, max_angle] degrees, its corners filled with 0 (below any positive threshold),
    as DRAEM's code rotates the finished noise with ``iaa.Affine(rotate=(-90, 90))``."""
    rows = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
    cols = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
    py = (rows * (res_y.view(batch, 1, 1).float() / height)).expand(batch, height, width)
    px = (cols * (res_x.view(batch, 1, 1).float() / width)).expand(batch, height, width)
    noise = _perlin_field(py, px, generator)
    degrees = uniform((batch,), generator, device, -max_angle, max_angle)
    return rotate_about_centre(noise.unsqueeze(1), degrees).squeeze(1)


def perlin_masks(batch: int, size: tuple[int, int], generator: torch.Generator, device: torch.device | str,
                 threshold: float = 0.5, min_scale: int = 0, max_scale: int = 6, *,
                 max_rotation: float = 90.0) -> torch.Tensor:
    """DRAEM anomaly shapes: thresholded Perlin noise, rotated as an image.

    Per sample, the lattice has 2**ky by 2**kx cells with ky, kx drawn independently and
    uniformly from [min_scale, max_scale) (upper bound excluded, as DRAEM's
    ``torch.randint(min_perlin_scale, perlin_scale)``), the noise image is rotated by an
    angle uniform in [-max_rotation, max_rotation] degrees with zero-filled corners, and
    the mask is noise > threshold.

    A mask may be empty (about 5 % of draws at DRAEM's settings): DRAEM's code then
    trains on the image as a normal one, and so do the callers here.

    Args:
        batch: number of masks B.
        size: (H, W).
        generator: source of randomness (any device; draws are moved to ``device``).
        device: where the masks are computed and returned.
        threshold: binarisation level of the noise (DRAEM: 0.5).
        min_scale: smallest exponent k of the 2**k lattice.
        max_scale: exclusive upper bound of k (DRAEM: 6, so at most 32 cells).
        max_rotation: largest absolute rotation in degrees (DRAEM: 90).

    Returns:
        float32 (B, 1, H, W) with values in {0, 1}.

    Raises:
        ValueError: an empty scale range or a non-positive size.
    """
    height, width = size
    if max_scale <= min_scale or min_scale < 0:
        raise ValueError(f"need 0 <= min_scale < max_scale, got {min_scale}, {max_scale}")
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    scale_y = 2 ** randint(max_scale - min_scale, (batch,), generator, device).add(min_scale)
    scale_x = 2 ** randint(max_scale - min_scale, (batch,), generator, device).add(min_scale)
    noise = _rotated_noise(batch, height, width, scale_y, scale_x, generator, device, max_rotation)
    return (noise > threshold).unsqueeze(1).float()

"""Helpers shared by the synthesis modules: input checks, seeded draws, exact masks, rotation."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# One grey level of an 8-bit image. A pixel counts as changed when the mean absolute
# change over its channels exceeds this, the label rule of NSA's ``patch_ex`` (``tol=1``
# on uint8 intensities), used here for DRAEM too so both methods label alike.
DEFAULT_CHANGE_TOLERANCE = 1.0 / 255.0


def check_images(images: torch.Tensor, name: str = "images") -> tuple[int, int, int]:
    """Check that ``images`` is a float batch (B, 3, H, W) and return (B, H, W).

    Raises:
        ValueError: wrong rank, channel count or dtype.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got {images.dtype}")
    return images.shape[0], images.shape[2], images.shape[3]


def as_mask(mask: torch.Tensor, batch: int, height: int, width: int, device: torch.device, name: str) -> torch.Tensor:
    """Return ``mask`` as a bool tensor (B, 1, H, W) on ``device``.

    Accepts (B, 1, H, W) or (B, H, W), any dtype; non-zero means inside.

    Raises:
        ValueError: the shape does not match the images.
    """
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if tuple(mask.shape) != (batch, 1, height, width):
        raise ValueError(f"{name} must have shape ({batch}, 1, {height}, {width}), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool and mask.device == torch.device(device):
        return mask  # already a mask there: no copy of a whole category's masks per batch
    return mask.to(device=device) != 0


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
            low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Uniform draws in [low, high) from ``generator``, returned on ``device``.

    The draw happens on the generator's own device and the result moves afterwards, so
    a CPU generator drives synthesis on CUDA images and the same seed gives the same
    anomalies on every device. Every draw in this package is small (lattice gradients,
    per-image parameters), so the transfer costs nothing worth measuring.
    """
    values = torch.rand(shape, generator=generator, device=generator.device)
    return (low + (high - low) * values).to(device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Integers in [0, high) from ``generator`` (drawn on its device), returned on ``device``."""
    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)


def rotate_about_centre(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each (C, H, W) image of a (B, C, H, W) batch about its centre by its own angle.

    imgaug's ``Affine`` defaults: bilinear, zero outside the source, the centre at
    ((W - 1) / 2, (H - 1) / 2) in pixels; a true rotation also when H != W. ``degrees``
    (B,) is on the images' device.
    """
    batch, _, height, width = images.shape
    device = images.device
    theta = (degrees * (math.pi / 180.0)).view(batch, 1, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Source pixel of each output pixel, in pixels about the centre; then grid_sample's
    # align_corners=False coordinates.
    dy = (torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2).view(1, height, 1)
    dx = (torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2).view(1, 1, width)
    sy = cos * dy + sin * dx + (height - 1) / 2
    sx = -sin * dy + cos * dx + (width - 1) / 2
    grid = torch.stack(((2.0 * sx + 1.0) / width - 1.0, (2.0 * sy + 1.0) / height - 1.0), dim=-1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def changed_pixels(before: torch.Tensor, after: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Bool (B, 1, H, W): pixels whose mean absolute change over channels exceeds ``tolerance``."""
    return (after - before).abs().mean(dim=1, keepdim=True) > tolerance


def finalize_exact(images: torch.Tensor, edited: torch.Tensor, region: torch.Tensor,
                   tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the label exact: the mask is precisely the set of pixels that differ.

    Pixels inside ``region`` whose change is at most ``tolerance`` are put back to their
    original value, and pixels outside ``region`` are never touched, so afterwards
    ``mask == (anomalous != images).any(channel)`` holds bit for bit. Resetting a pixel
    moves it by at most ``tolerance`` (one grey level by default), which is invisible,
    whereas labelling it anomalous would teach a segmentation head to fire on nothing.

    Args:
        images: originals (B, 3, H, W).
        edited: candidate anomalous images, same shape.
        region: bool (B, 1, H, W) where edits are allowed.
        tolerance: change threshold (mean over channels, image units).

    Returns:
        ``(anomalous, mask)`` with mask float {0, 1} (B, 1, H, W).
    """
    mask = region & changed_pixels(images, edited, tolerance)
    anomalous = torch.where(mask, edited, images)
    return anomalous, mask.to(images.dtype)


def window_sums(values: torch.Tensor, size: int) -> torch.Tensor:
    """The sum of every ``size`` x ``size`` window of (..., H, W) ``values``: (..., H - size + 1, W - size + 1).

    Prefix sums along each axis, differenced ``size`` apart: exact for integer counts (and
    for float counts below 2**24), and several times faster than pooling on a CPU. Pad
    ``values`` first to choose what lies beyond the edges.
    """
    sums = F.pad(values, (1, 0, 1, 0)).cumsum(-1, dtype=values.dtype)
    sums = sums[..., size:] - sums[..., :-size]
    sums = sums.cumsum(-2, dtype=values.dtype)
    return sums[..., size:, :] - sums[..., :-size, :]


def check_patch_options(num_patches: tuple[int, int], anomaly_probability: float, median_kernel: int,
                        change_tolerance: float) -> None:
    """Raise ``ValueError`` on options NSA's patch functions share."""
    low, high = num_patches
    if not 0 <= low <= high or high < 1:
        raise ValueError(f"num_patches must satisfy 0 <= low <= high, high >= 1, got {num_patches}")
    if not 0.0 <= anomaly_probability <= 1.0:
        raise ValueError(f"anomaly_probability must be in [0, 1], got {anomaly_probability}")
    if median_kernel < 1 or median_kernel % 2 == 0:
        raise ValueError(f"median_kernel must be odd and positive, got {median_kernel}")
    if change_tolerance < 0.0:
        raise ValueError(f"change_tolerance must be >= 0, got {change_tolerance}")


def from_uint8_patched(images: torch.Tensor, patched: np.ndarray, labels: np.ndarray,
                       written: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(anomalous, masks) in ``images``' device and dtype from patched uint8 (B, H, W, 3) and
    bool (B, H, W) numpy arrays: the pixels of ``written`` (the labelled ones when it is
    None) from ``patched``, the others as they were."""
    device, dtype = images.device, images.dtype
    mask = torch.from_numpy(labels).unsqueeze(1).to(device)
    taken = mask if written is None else torch.from_numpy(written).unsqueeze(1).to(device)
    # Made contiguous while still uint8 (a quarter of the bytes to transpose), then scaled.
    moved = torch.from_numpy(patched).permute(0, 3, 1, 2).contiguous().to(device=device, dtype=dtype).div_(255.0)
    return torch.where(taken, moved, images), mask.to(dtype)

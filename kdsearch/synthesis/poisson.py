"""Batched Poisson image blending in torch, reproducing OpenCV's ``seamlessClone``.

NSA blends each pasted patch with OpenCV's seamlessClone, one image at a time on the
CPU, which caps training throughput on a GPU. :func:`poisson_blend` solves the same
discrete Poisson problem for a whole batch with torch ops on the tensors' device, for
the case NSA uses: a full-size source canvas whose patch already sits where it is
pasted, cloned at the centre of the mask's bounding box (so source and destination
regions coincide). What OpenCV's seamlessClone computes there, per image:

- the mask's outer one-pixel frame of the image is cleared, and the problem is solved
  on the mask's bounding rectangle R only; pixels outside R are copied from the
  destination, and so is R's own one-pixel border (the Dirichlet boundary);
- the mask is eroded by a 7x7 box (a 3x3 box three times), pixels outside R counting as
  outside the mask, giving the weight ``m``;
- gradients are forward differences; the guidance field is the destination's gradient
  weighted by ``1 - m`` plus, weighted by ``m``, the source's gradient (NORMAL_CLONE) or,
  for MIXED_CLONE, per pixel and per channel whichever of source and destination has the
  larger ``|gx - gy|`` (not the gradient norm);
- its divergence (backward differences) is the right-hand side of the 5-point Poisson
  equation on R's interior, solved exactly with a 2-D DST-I;
- the float solution is cast to uint8 by truncation with clamping to [0, 255] (not
  rounding), see :func:`quantize_like_opencv`.

Here the unknown is the change ``e = u - destination`` instead of ``u``: since the
destination's own gradients cancel, ``e`` solves the same equation with the divergence of
``m * (g_guide - g_destination)`` as right-hand side and zero on R's border. This is
algebraically the same problem, needs no separate boundary term and is better
conditioned in float32 (``e`` is a correction, not a full intensity).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdsearch.synthesis._common import window_sums

__all__ = ["poisson_blend", "quantize_like_opencv"]

# OpenCV's seamlessClone erodes the mask three times with a 3x3 box: one 7x7 box.
_EROSION_SIZE = 7


def quantize_like_opencv(blended: torch.Tensor) -> torch.Tensor:
    """uint8 image from :func:`poisson_blend`'s float result (0-255 scale), as OpenCV's seamlessClone casts it.

    OpenCV clamps to [0, 255] and truncates (a C cast, not ``saturate_cast``, which would
    round); rounding instead would shift about half the blended pixels by one grey level.
    """
    return blended.clamp(0.0, 255.0).to(torch.uint8)


def poisson_blend(destination: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                  mixed: bool | torch.Tensor = False) -> torch.Tensor:
    """Poisson-blend ``source`` into ``destination`` where ``mask`` is set, for a whole batch.

    Equals ``cv2.seamlessClone(source, destination, mask, centre_of_mask_bbox, flag)`` per
    image (flag MIXED_CLONE where ``mixed``, else NORMAL_CLONE) up to float error, before
    OpenCV's cast to uint8. Use values on the 0-255 scale and :func:`quantize_like_opencv`
    to get OpenCV's uint8 output; on any other scale the float result is the same blend,
    scaled (the problem is linear and the MIXED rule scale-free).

    Batching: each image is solved on its own bounding rectangle R, and rectangles differ
    in size. A DST-I of length n needs an FFT of length 2(n + 1), so FFTs of different
    lengths cannot share one batched call; instead every image gets a window of the
    batch's largest rectangle size, placed inside the image and covering its R, and the
    DST-I is a product with a dense orthonormal sine matrix that is zero outside R's
    interior. That is exact for every size at once and takes four batched matmuls for the
    whole batch, the work a GPU does best, at O(B * C * L^3) for rectangles of side up to
    L against OpenCV's per-image O(C * L^2 log L): no faster than OpenCV per image on a
    CPU, but free of per-image launches and host round trips on a GPU. The only host sync
    reads the window size. Precision: float32 keeps the result within ~2e-4 grey levels
    of the exact solution; TF32 matmuls on CUDA (``torch.backends.cuda.matmul.allow_tf32``,
    off by default) would raise that to ~0.2 and flip many truncated pixels, so keep
    them off here; half precision is too coarse.

    Args:
        destination: float (B, C, H, W), the image blended into.
        source: float (B, C, H, W), the source canvas: the patch placed on the
            destination's grid where it is pasted (only pixels under the mask matter).
        mask: (B, 1, H, W), non-zero inside the pasted region. As in OpenCV, its pixels
            on the image's outer one-pixel frame are ignored.
        mixed: MIXED_CLONE (True) or NORMAL_CLONE (False), for all images or per image
            as a (B,) bool tensor.

    Returns:
        Float (B, C, H, W) in ``destination``'s dtype: the blended images, equal to
        ``destination`` bit for bit outside each mask's bounding rectangle and on its
        border. An empty mask, or a rectangle without interior (side < 3), leaves the
        image unchanged (OpenCV returns the destination or fails there).

    Raises:
        ValueError: mismatched shapes or non-float images.
    """
    if destination.ndim != 4 or source.shape != destination.shape:
        raise ValueError(f"destination and source must be (B, C, H, W) of one shape, got "
                         f"{tuple(destination.shape)} and {tuple(source.shape)}")
    if not destination.is_floating_point() or source.dtype != destination.dtype:
        raise ValueError(f"destination and source must be float of one dtype, got {destination.dtype} and {source.dtype}")
    batch, channels, height, width = destination.shape
    if tuple(mask.shape) != (batch, 1, height, width):
        raise ValueError(f"mask must have shape ({batch}, 1, {height}, {width}), got {tuple(mask.shape)}")
    device, dtype = destination.device, destination.dtype
    inside = mask.to(device) != 0
    inside[..., :, 0] = False
    inside[..., :, -1] = False
    inside[..., 0, :] = False
    inside[..., -1, :] = False

    top, rect_h = _extent(inside.any(dim=-1)[:, 0])
    left, rect_w = _extent(inside.any(dim=-2)[:, 0])
    win_h, win_w = int(rect_h.max()), int(rect_w.max())
    if win_h < 3 or win_w < 3:
        return destination.clone()
    # Windows of the largest rectangle's size, shifted to stay inside the image.
    win_top = top.clamp(max=height - win_h)
    win_left = left.clamp(max=width - win_w)
    rows = win_top[:, None] + torch.arange(win_h, device=device)
    cols = win_left[:, None] + torch.arange(win_w, device=device)
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, -1)

    def window(images: torch.Tensor) -> torch.Tensor:
        return images.flatten(2).gather(2, index.expand(-1, images.shape[1], -1)).view(batch, -1, win_h, win_w)

    dest, src = window(destination), window(source)
    # The window holds all of R and the mask is empty outside R, so eroding the window
    # with "outside" beyond its edges equals eroding the whole image.
    weight = _erode(window(inside)).to(dtype)

    # Everything below lives on the pixels a divergence on the window's interior reads:
    # forward differences on [0, L-2]^2, the divergence on the interior [1, L-2]^2.
    weight = weight[..., :-1, :-1]
    if isinstance(mixed, torch.Tensor) or mixed:
        # OpenCV's MIXED rule compares |gx - gy| = |I(y, x+1) - I(y+1, x)| per channel.
        keep_destination = _skew(src).abs() <= _skew(dest).abs()
        mixed_images = torch.as_tensor(mixed, dtype=torch.bool, device=device).reshape(-1, 1, 1, 1)
        weight = weight * ~(keep_destination & mixed_images)
    # The guidance field minus the destination's own gradient: m * (g_guide - g_dest).
    delta_x, delta_y = _forward_differences(src - dest)
    field_x, field_y = weight * delta_x, weight * delta_y
    divergence = field_x[..., 1:, 1:] - field_x[..., 1:, :-1] + field_y[..., 1:, 1:] - field_y[..., :-1, 1:]

    basis_y, eigen_y, valid_y = _sine_basis(top - win_top, rect_h, win_h, dtype)
    basis_x, eigen_x, valid_x = _sine_basis(left - win_left, rect_w, win_w, dtype)
    # Both eigenvalues are negative on a valid pair; elsewhere the spectrum is zero anyway.
    valid = valid_y[:, :, None] & valid_x[:, None, :]
    inverse_eigen = torch.where(valid, 1.0 / (eigen_y[:, :, None] + eigen_x[:, None, :]), 0.0)
    basis_y, basis_x = basis_y[:, None], basis_x[:, None]
    spectrum = (basis_y @ divergence @ basis_x) * inverse_eigen[:, None]
    # The orthonormal DST-I is its own inverse; rows outside R's interior are zero, so the
    # correction is exactly zero there and those pixels are written back unchanged.
    blended = dest[..., 1:-1, 1:-1] + basis_y @ spectrum @ basis_x

    core_index = index.view(batch, 1, win_h, win_w)[..., 1:-1, 1:-1].reshape(batch, 1, -1)
    out = destination.clone(memory_format=torch.contiguous_format)
    out.view(batch, channels, -1).scatter_(2, core_index.expand(-1, channels, -1), blended.flatten(2))
    return out


def _extent(occupied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First index and length of the span of True along the last axis of (B, N); (0, 0) when none."""
    length = occupied.shape[-1]
    first = occupied.int().argmax(dim=-1)
    last = length - 1 - occupied.flip(-1).int().argmax(dim=-1)
    return first, torch.where(occupied.any(dim=-1), last - first + 1, 0)


def _erode(inside: torch.Tensor) -> torch.Tensor:
    """7x7 box erosion of a (B, 1, L, L') bool mask, outside beyond its edges.

    Three 3x3 erosions, as OpenCV's seamlessClone does, are one 7x7 box erosion; a pixel
    stays when its box holds no outside pixel (exact integer counts by :func:`window_sums`).
    """
    reach = _EROSION_SIZE // 2
    outside = F.pad((~inside).to(torch.int32), (reach, reach, reach, reach), value=1)
    return window_sums(outside, _EROSION_SIZE) == 0


def _skew(images: torch.Tensor) -> torch.Tensor:
    """gx - gy of (..., L, L') images at the pixels [0, L-2] x [0, L'-2]: the corner pixel cancels."""
    return images[..., :-1, 1:] - images[..., 1:, :-1]


def _forward_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y forward differences of (..., L, L) images at the pixels [0, L-2]^2, where both exist."""
    corner = images[..., :-1, :-1]
    return images[..., :-1, 1:] - corner, images[..., 1:, :-1] - corner


def _sine_basis(offset: torch.Tensor, size: torch.Tensor, length: int,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal DST-I matrices for the interiors of spans, embedded in a common window's interior.

    For span b of ``size[b]`` pixels starting at ``offset[b]`` in a window of ``length``,
    its ``n = size - 2`` interior pixels sit at ``offset + 1 .. offset + n``; the matrix,
    indexed by the window's interior pixels ``1 .. length - 2``, is
    ``sqrt(2 / (n + 1)) * sin(pi * i * k / (n + 1))`` on that block and zero elsewhere,
    so multiplying by it transforms each span alone. Also returns the eigenvalues of the
    1-D Dirichlet second difference, ``2 cos(pi k / (n + 1)) - 2``, written as
    ``-4 sin^2(pi k / (2 (n + 1)))`` to avoid cancellation at low k, and the block's
    membership.

    Returns:
        (B, L-2, L-2) matrices, (B, L-2) eigenvalues (0 outside the block) and (B, L-2) bool.
    """
    interior = (size - 2).clamp(min=0)
    local = (torch.arange(1, length - 1, device=offset.device)[None, :] - offset[:, None]).int()
    valid = (local >= 1) & (local <= interior[:, None])
    k = torch.where(valid, local, 0)
    period = (2 * (interior + 1)).int()
    # i * k reduced modulo the sine's period in integers keeps the angle within [0, 2 pi)
    # and thus exact to float rounding, however large i * k gets.
    phase = (k[:, :, None] * k[:, None, :]) % period[:, None, None]
    half_turns = (interior + 1).to(dtype)
    basis = torch.sqrt(2.0 / half_turns)[:, None, None] * torch.sin(math.pi * phase.to(dtype) / half_turns[:, None, None])
    eigen = -4.0 * torch.sin(0.5 * math.pi * k.to(dtype) / half_turns[:, None]) ** 2
    return basis, eigen, valid

"""NSA's pasting and Poisson blending for a whole batch on the training device.

:func:`~kdsearch.synthesis.nsa.nsa_synthesize` draws every patch on the CPU
(:mod:`kdsearch.synthesis.nsa_patches`: a source, a cut, its rescale with OpenCV, a
place: small arrays and a few random numbers). With ``blend="torch"`` the rest runs
here, on the images' device, one round of patches at a time (each image's next patch):
pasting the patches onto canvases, the batched Poisson solve of
:func:`~kdsearch.synthesis.poisson.poisson_blend`, the test that a patch changed enough
pixels, and at the end the exact label with NSA's median filter. The batch never leaves
the device; per round the host sends the packed patches and their places and reads back
one flag per image. So a GPU trial needs little CPU per image, and the per-image Python
left is the drawing.

The steps are the OpenCV path's (:mod:`kdsearch.synthesis.nsa_opencv`: same draws, same
change rule, same median filter, equal to ``cv2.medianBlur`` on the binary label); only
the solve differs, by at most one grey level per blended patch.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kdsearch.synthesis._common import as_mask, window_sums
from kdsearch.synthesis.nsa_patches import Patch, PatchStream
from kdsearch.synthesis.poisson import poisson_blend, quantize_like_opencv

__all__ = ["DeviceCanvas", "binary_median", "blend_on_device"]

_CHANNELS = 3


def _least_changed_sum(tolerance_u8: float) -> int:
    """Smallest sum of absolute channel changes (uint8) whose mean exceeds ``tolerance_u8``.

    The OpenCV path compares the float64 mean over three channels with the tolerance;
    comparing the exact integer sum with this bound gives the same answer on any device.
    """
    largest = _CHANNELS * 255
    return next((total for total in range(largest + 1) if total / _CHANNELS > tolerance_u8), largest + 1)


def binary_median(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """The ``kernel`` x ``kernel`` median of a bool (B, 1, H, W) mask, borders replicated as ``cv2.medianBlur``.

    On a binary image the median is a majority vote: set where more than half the window is set.
    """
    reach = kernel // 2
    # Replicate padding needs floats; the counts stay exact small integers.
    padded = F.pad(mask.float(), (reach, reach, reach, reach), mode="replicate")
    return window_sums(padded, kernel) > (kernel * kernel) / 2


class DeviceCanvas:
    """A batch being patched on its device: the current images, and where patches landed.

    Args:
        images: float (B, 3, H, W) in [0, 1], the originals, on the device to work on.
        foreground: optional (B, 1, H, W) mask (any device, non-zero inside); clone masks
            are cut to it.
        mixed: (B,) bool, MIXED_CLONE per image (else NORMAL_CLONE).
        tolerance_u8: a pixel counts as changed when its mean absolute change over the
            channels exceeds this many grey levels.
        min_patch_pixels: fewest changed pixels for a patch to be kept.
    """

    def __init__(self, images: torch.Tensor, foreground: torch.Tensor | None, mixed: torch.Tensor,
                 tolerance_u8: float, min_patch_pixels: int) -> None:
        batch, _, height, width = images.shape
        device = images.device
        # Grey levels as float32 integers: what the OpenCV path holds as uint8, exactly.
        self.original = images.detach().float().mul(255.0).clamp_(0.0, 255.0).round_()
        self.current = self.original.clone()
        self.region = torch.zeros(batch, 1, height, width, dtype=torch.bool, device=device)
        self.foreground = None if foreground is None else as_mask(foreground, batch, height, width, device, "foreground")
        self.mixed = mixed.to(device=device, dtype=torch.bool)
        self.least_changed_sum = _least_changed_sum(tolerance_u8)
        self.min_patch_pixels = min_patch_pixels

    def _changed(self, after: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        return (after - before).abs().sum(1, keepdim=True) >= self.least_changed_sum

    def paste(self, round_: list[tuple[int, Patch]]) -> list[bool]:
        """Paste and blend one patch into each named image at once; whether each was kept.

        Args:
            round_: (image index, patch) pairs, at most one per image.

        Returns:
            Per pair, True when the blend changed at least ``min_patch_pixels`` pixels
            inside the clone mask; only those patches are kept.
        """
        device = self.current.device
        _, _, height, width = self.current.shape
        count = len(round_)
        max_h = max(patch.pixels.shape[0] for _, patch in round_)
        max_w = max(patch.pixels.shape[1] for _, patch in round_)
        packed = np.zeros((count, max_h, max_w, _CHANNELS), np.uint8)
        geometry = np.empty((count, 5), np.int64)
        for row, (index, patch) in enumerate(round_):
            h, w = patch.pixels.shape[:2]
            packed[row, :h, :w] = patch.pixels
            geometry[row] = (index, patch.top, patch.left, h, w)
        image, top, left, h, w = torch.from_numpy(geometry).to(device).unbind(1)
        pixels = torch.from_numpy(packed).to(device).permute(0, 3, 1, 2).float()

        # Each pixel's place within its image's patch (negative or too large outside it).
        rows = torch.arange(height, device=device)[None, :] - top[:, None]
        cols = torch.arange(width, device=device)[None, :] - left[:, None]
        in_rows, in_cols = (rows >= 0) & (rows < h[:, None]), (cols >= 0) & (cols < w[:, None])
        on_patch = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        # The clone mask leaves out the patch's one-pixel border, as on the OpenCV path.
        inner_rows, inner_cols = (rows >= 1) & (rows < h[:, None] - 1), (cols >= 1) & (cols < w[:, None] - 1)
        clone = (inner_rows[:, :, None] & inner_cols[:, None, :])[:, None]
        if self.foreground is not None:
            clone &= self.foreground[image]
        lookup = rows.clamp(0, max_h - 1)[:, :, None] * max_w + cols.clamp(0, max_w - 1)[:, None, :]
        on_grid = pixels.flatten(2).gather(2, lookup.view(count, 1, -1).expand(-1, _CHANNELS, -1))

        current = self.current[image]
        canvas = torch.where(on_patch, on_grid.view(count, _CHANNELS, height, width), current)
        blended = quantize_like_opencv(poisson_blend(current, canvas, clone, self.mixed[image])).float()
        changed = self._changed(blended, current) & clone
        kept = changed.flatten(1).sum(1) >= self.min_patch_pixels
        # One image per pair, so these writes never collide.
        self.current[image] = torch.where(kept[:, None, None, None], blended, current)
        self.region[image] |= clone & kept[:, None, None, None]
        return kept.tolist()

    def finish(self, images: torch.Tensor, median_kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomalous, masks) as :func:`~kdsearch.synthesis.nsa.nsa_synthesize` returns them.

        The label is the set of pixels that changed inside the pasted regions; NSA's
        median filter may only drop speckle from it, so it stays exactly the changed set.
        """
        changed = self.region & self._changed(self.current, self.original)
        if median_kernel > 1:
            changed &= binary_median(changed, median_kernel)
        blended = self.current.to(images.dtype).div_(255.0)
        return torch.where(changed, blended, images), changed.to(images.dtype)


def _paste_in_rounds(images: dict[int, PatchStream], paste: Callable[[list[tuple[int, Patch]]], list[bool]]) -> None:
    """Drive every image's patches in rounds: each round pastes all images' next patch at once.

    An image's patches stay in order (each pastes into the image the previous one left);
    ``paste`` gets (image index, patch) pairs and answers whether each was kept.
    """
    pending = {}
    for index, steps in images.items():
        patch = next(steps, None)
        if patch is not None:
            pending[index] = patch
    while pending:
        order = list(pending)
        kept = paste([(index, pending[index]) for index in order])
        pending = {}
        for index, was_kept in zip(order, kept):
            try:
                pending[index] = images[index].send(was_kept)
            except StopIteration:
                pass


def blend_on_device(images: torch.Tensor, foreground: torch.Tensor | None, mixed: list[bool],
                    patches_for: Callable[[int], PatchStream | None], tolerance_u8: float, min_patch_pixels: int,
                    median_kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste and blend every image's patches on the images' device, in rounds: ``(anomalous, masks)``.

    Args:
        images: float (B, 3, H, W) in [0, 1], on the device to work on.
        foreground: optional (B, 1, H, W) destination foreground, any device.
        mixed: per image, MIXED_CLONE (True) or NORMAL_CLONE.
        patches_for: image index -> its patch stream, or None when it gets no anomaly.
        tolerance_u8: a pixel counts as changed above this mean absolute change (grey levels).
        min_patch_pixels: fewest changed pixels for a patch to be kept.
        median_kernel: odd size of the speckle filter on the label (1 disables).
    """
    canvas = DeviceCanvas(images, foreground, torch.tensor(mixed), tolerance_u8, min_patch_pixels)
    streams = {b: steps for b in range(images.shape[0]) if (steps := patches_for(b)) is not None}
    _paste_in_rounds(streams, canvas.paste)
    return canvas.finish(images, median_kernel)

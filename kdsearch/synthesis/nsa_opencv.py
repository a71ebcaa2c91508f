"""NSA's OpenCV blend: each image's patches pasted and blended by ``cv2.seamlessClone``, per image on threads.

:func:`~kdsearch.synthesis.nsa.nsa_synthesize` draws the patches
(:mod:`kdsearch.synthesis.nsa_patches`); here each image takes its patches in order, on
uint8 HWC arrays on the CPU, and gets its exact label with NSA's median filter. The
batched counterpart on the training device is :mod:`kdsearch.synthesis.nsa_device`.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from kdsearch.synthesis._common import from_uint8_patched
from kdsearch.synthesis.nsa_patches import Patch, PatchStream

__all__ = ["blend_with_opencv"]


def _changed(after: np.ndarray, before: np.ndarray, where: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels of ``where`` whose mean absolute change over channels exceeds ``tolerance`` (uint8 HWC images).

    Computed on ``where``'s bounding box only (a patch is a small part of the image): the
    values are those of the whole-image mean, at a fraction of its cost.
    """
    changed = np.zeros(where.shape, bool)
    rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
    if rows.size == 0:
        return changed
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    change = np.abs(after[box].astype(np.int16) - before[box].astype(np.int16)).mean(axis=-1)
    changed[box] = where[box] & (change > tolerance)
    return changed


def _paste(current: np.ndarray, patch: Patch, dest_fg: np.ndarray | None, mixed: bool,
           tolerance_u8: float, min_patch_pixels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``patch`` Poisson-blended into ``current`` by OpenCV: (new image, clone mask), or None when refused."""
    h, w = patch.pixels.shape[:2]
    y0, x0 = patch.top, patch.left
    clone = np.zeros(current.shape[:2], np.uint8)
    clone[y0 + 1:y0 + h - 1, x0 + 1:x0 + w - 1] = 255
    if dest_fg is not None:
        clone &= dest_fg * np.uint8(255)
    canvas = current.copy()
    canvas[y0:y0 + h, x0:x0 + w] = patch.pixels
    # seamlessClone centres the mask's bounding box on ``center``; with a full-size source
    # whose patch already sits at the target, this centre makes the source and destination
    # boxes coincide, so the patch lands exactly where placed.
    bx, by, bw, bh = cv2.boundingRect(clone)
    try:
        # seamlessClone writes into its mask argument (seen with OpenCV 5.0: the mask came
        # back eroded), so it gets a copy.
        blended = cv2.seamlessClone(canvas, current, clone.copy(), (bx + bw // 2, by + bh // 2),
                                    cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE)
    except cv2.error:
        return None  # degenerate masks; NSA skips them too
    inside = clone > 0
    if int(np.count_nonzero(_changed(blended, current, inside, tolerance_u8))) < min_patch_pixels:
        return None  # negligible change: the source looked like the destination here
    return blended, inside


def _patch_image(original: np.ndarray, steps: PatchStream, dest_fg: np.ndarray | None, mixed: bool,
                 tolerance_u8: float, min_patch_pixels: int, median_kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HWC) with its patches blended in turn: (patched image, bool label)."""
    current = original
    region = np.zeros(original.shape[:2], bool)
    try:
        patch = next(steps)
        while True:
            pasted = _paste(current, patch, dest_fg, mixed, tolerance_u8, min_patch_pixels)
            if pasted is not None:
                current, inside = pasted
                region |= inside
            patch = steps.send(pasted is not None)
    except StopIteration:
        pass
    changed = _changed(current, original, region, tolerance_u8)
    if median_kernel > 1:
        # NSA median-filters its label; intersecting with the changed set lets the
        # filter only drop speckle, never add unchanged pixels, keeping labels exact.
        changed &= cv2.medianBlur(changed.astype(np.uint8), median_kernel) > 0
    return current, changed


def blend_with_opencv(images: torch.Tensor, originals: np.ndarray, foreground: np.ndarray | None, mixed: list[bool],
                      patches_for: Callable[[int], PatchStream | None], tolerance_u8: float, min_patch_pixels: int,
                      median_kernel: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste and blend every image's patches with OpenCV: ``(anomalous, masks)`` as ``nsa_synthesize`` returns them.

    Args:
        images: the float (B, 3, H, W) batch, giving the result's device and dtype.
        originals: the batch as uint8 (B, H, W, 3).
        foreground: optional bool (B, H, W) destination foreground; clone masks are cut to it.
        mixed: per image, MIXED_CLONE (True) or NORMAL_CLONE.
        patches_for: image index -> its patch stream, or None when it gets no anomaly.
        tolerance_u8: a pixel counts as changed above this mean absolute change (grey levels).
        min_patch_pixels: fewest changed pixels for a patch to be kept.
        median_kernel: odd size of the speckle filter on the label (1 disables).
        workers: threads blending images at once (clipped to [1, B]).
    """
    batch = originals.shape[0]
    results = originals.copy()
    labels = np.zeros(originals.shape[:3], bool)

    def one(b: int) -> None:
        # Made here, on the worker thread, so that the image's patches are drawn in parallel too.
        steps = patches_for(b)
        if steps is None:
            return
        dest_fg = None if foreground is None else foreground[b].astype(np.uint8)
        results[b], labels[b] = _patch_image(originals[b], steps, dest_fg, mixed[b], tolerance_u8,
                                             min_patch_pixels, median_kernel)

    # OpenCV releases the GIL, so threads draw and blend images on as many cores as there
    # are; each image runs to its end on its own thread (no wait for a round's slowest image).
    workers = max(1, min(batch, workers))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(batch)))
    else:
        for b in range(batch):
            one(b)
    return from_uint8_patched(images, results, labels)

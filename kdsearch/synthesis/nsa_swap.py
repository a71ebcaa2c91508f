"""NSA's ``swap`` mode with the patch cut from the image itself: MRKD's official synthesis.

MRKD's published training code (``main.py`` of its authors' repository) calls NSA's
``patch_ex`` with ``mode="swap"``, ``same=True``, ``resize=False``, ``shift=True`` and
per-category widths, patch counts and backgrounds. Each patch is a rectangle of the
image copied, unchanged and unblended, to another place of the same image:

- half-widths are (0.03 + Gamma(shape 2, scale 0.05)) x side, clipped per axis to the
  category's bounds (shares of the side, rounded to pixels), drawn once per patch;
- the cut's centre is uniform in [min half-width, side - min half-width) per axis, the
  rectangle clipped to the image; with an object mask, the cut must hold more than
  ``min_object_fraction`` object, else it is drawn again (200 tries, then the patch is
  dropped);
- the destination centre is uniform with the whole rectangle inside the image (one pixel
  margin); with an object mask, more than ``min_overlap_fraction`` of the cut's object
  must land on the destination's object (200 tries);
- only pixels that are object at the source or at the destination are copied;
- the first patch is always attempted, each further one with probability 1/2;
- the cut always comes from the original image, not from one already patched.

The anomalous image is the code's: every copied pixel stays copied, whatever the label
says. The label is the code's too: within each destination box (a later box overwriting
an earlier one) the copied pixels whose mean change exceeds one grey level, then
median-filtered 5x5. The filter removes isolated changed pixels and can fill small gaps,
so unlike kdsearch's other synthesis the label is not exactly where the image changed:
on capsule-like images about 2 % of the changed pixels are unlabelled. MRKD never reads
the label: only the anomalous image enters its bottleneck.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from kdsearch.synthesis._common import (
    DEFAULT_CHANGE_TOLERANCE,
    as_mask,
    check_images,
    check_patch_options,
    from_uint8_patched,
)
from kdsearch.synthesis.foreground import to_uint8_hwc

__all__ = ["nsa_swap_synthesize"]

# patch_ex gives up on a cut or a destination after this many draws.
_TRIES = 200


def _box_sums(table: np.ndarray, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]


def _swap_patches(image: np.ndarray, objects: np.ndarray | None, rng: np.random.Generator, num_patches: tuple[int, int],
                  half_bounds: tuple[tuple[int, int], tuple[int, int]], gamma_params: tuple[float, float, float],
                  min_object_fraction: float, min_overlap_fraction: float
                  ) -> tuple[np.ndarray, list[tuple[tuple[slice, slice], np.ndarray]]]:
    """One image (uint8 HWC) with patches of itself moved: (the patched copy, [(destination box,
    the box's copied pixels)] in the order they were pasted)."""
    height, width = image.shape[:2]
    (min_y, max_y), (min_x, max_x) = half_bounds
    table = None if objects is None else cv2.integral(objects.astype(np.uint8))
    patched = image.copy()
    boxes: list[tuple[tuple[slice, slice], np.ndarray]] = []
    shape, scale, offset = gamma_params
    low, high = num_patches
    for patch in range(high):
        if patch >= low and rng.integers(2) == 0:
            continue
        half_y = int(min(max((offset + rng.gamma(shape, scale)) * height, min_y), max_y))
        half_x = int(min(max((offset + rng.gamma(shape, scale)) * width, min_x), max_x))
        cy = rng.integers(min_y, height - min_y, size=_TRIES)
        cx = rng.integers(min_x, width - min_x, size=_TRIES)
        y0, y1 = np.clip(cy - half_y, 0, height), np.clip(cy + half_y, 0, height)
        x0, x1 = np.clip(cx - half_x, 0, width), np.clip(cx + half_x, 0, width)
        if table is not None:
            area = np.maximum((y1 - y0) * (x1 - x0), 1)
            hits = np.flatnonzero(_box_sums(table, y0, y1, x0, x1) / area > min_object_fraction)
            if hits.size == 0:
                continue
            cut = hits[0]
        else:
            cut = 0
        sy0, sy1, sx0, sx1 = int(y0[cut]), int(y1[cut]), int(x0[cut]), int(x1[cut])
        h, w = sy1 - sy0, sx1 - sx0
        if h < 1 or w < 1 or h // 2 + 1 >= height - h // 2 - 1 or w // 2 + 1 >= width - w // 2 - 1:
            continue
        dy = rng.integers(h // 2 + 1, height - h // 2 - 1, size=_TRIES) - h // 2
        dx = rng.integers(w // 2 + 1, width - w // 2 - 1, size=_TRIES) - w // 2
        if objects is not None:
            source_objects = objects[sy0:sy1, sx0:sx1]
            held = int(source_objects.sum())
            # The source test again (with resize off it is the cut's test), then the overlap.
            if held == 0 or held / (h * w) <= min_object_fraction:
                continue
            for place in range(_TRIES):
                top, left = int(dy[place]), int(dx[place])
                overlap = int((objects[top:top + h, left:left + w] & source_objects).sum())
                if overlap / held > min_overlap_fraction:
                    break
            else:
                continue
            copy = source_objects | objects[top:top + h, left:left + w]
        else:
            top, left = int(dy[0]), int(dx[0])
            copy = np.ones((h, w), bool)
        region = patched[top:top + h, left:left + w]
        region[copy] = image[sy0:sy1, sx0:sx1][copy]
        boxes.append(((slice(top, top + h), slice(left, left + w)), copy))
    return patched, boxes


def nsa_swap_synthesize(images: torch.Tensor, rng: np.random.Generator, *, foreground: torch.Tensor | None = None,
                        anomaly_probability: float = 1.0, num_patches: tuple[int, int] = (1, 1),
                        half_width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.4), (0.03, 0.4)),
                        gamma_params: tuple[float, float, float] = (2.0, 0.05, 0.03),
                        min_object_fraction: float = 0.7, min_overlap_fraction: float = 0.25,
                        median_kernel: int = 5,
                        change_tolerance: float = DEFAULT_CHANGE_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Move patches of each image within itself, as MRKD's official NSA call does.

    Args:
        images: float (B, 3, H, W) in [0, 1] (not normalised), any device.
        rng: numpy generator, the only source of randomness.
        foreground: optional (B, 1, H, W) object mask (NSA's ``skip_background`` rule); cuts
            and destinations must then lie on the object, and only object pixels move.
        anomaly_probability: chance that an image gets patches (MRKD: every image).
        num_patches: (low, high): ``low`` patches always, then each of the remaining
            ``high - low`` with probability 1/2 (MRKD's ``NUM_PATCHES`` N is (1, N)).
        half_width_bounds: ((min, max) vertical, (min, max) horizontal) half-widths as
            shares of the side (MRKD's ``WIDTH_BOUNDS_PCT``).
        gamma_params: (shape, scale, offset) of the half-width distribution.
        min_object_fraction: least object share of a cut (``MIN_OBJECT_PCT``).
        min_overlap_fraction: least share of the cut's object landing on object (``MIN_OVERLAP_PCT``).
        median_kernel: odd size of the speckle filter on the label (1 disables).
        change_tolerance: a pixel counts as changed above this mean absolute change (image units).

    Returns:
        ``(anomalous, masks)``: float (B, 3, H, W) in [0, 1] and float {0, 1} (B, 1, H, W)
        on the images' device and in their dtype. ``anomalous`` holds every copied pixel;
        ``masks`` is NSA's label (changed copied pixels, median-filtered), which can miss
        isolated changed pixels and cover a few unchanged ones.

    Raises:
        ValueError: bad shapes or options.
    """
    batch, height, width = check_images(images)
    check_patch_options(num_patches, anomaly_probability, median_kernel, change_tolerance)
    (lo_y, hi_y), (lo_x, hi_x) = half_width_bounds
    if not (0.0 < lo_y <= hi_y < 0.5 and 0.0 < lo_x <= hi_x < 0.5):
        raise ValueError(f"half_width_bounds must be shares with 0 < min <= max < 0.5, got {half_width_bounds}")
    # patch_ex rounds the bounds to pixels; at least one pixel keeps a patch on tiny images.
    half_bounds = ((max(1, round(lo_y * height)), max(1, round(hi_y * height))),
                   (max(1, round(lo_x * width)), max(1, round(hi_x * width))))
    objects = None
    if foreground is not None:
        objects = as_mask(foreground, batch, height, width, torch.device("cpu"), "foreground")[:, 0].numpy()
    originals = to_uint8_hwc(images)
    selected = rng.random(batch) < anomaly_probability
    image_seeds = rng.integers(0, 2**63 - 1, size=batch)
    tolerance = change_tolerance * 255.0
    results = originals.copy()
    copied = np.zeros((batch, height, width), bool)
    labels = np.zeros((batch, height, width), bool)
    for b in range(batch):
        if not selected[b] or (objects is not None and not objects[b].any()):
            continue
        patched, boxes = _swap_patches(originals[b], None if objects is None else objects[b],
                                       np.random.default_rng(int(image_seeds[b])), num_patches, half_bounds,
                                       gamma_params, min_object_fraction, min_overlap_fraction)
        # NSA's label: per box, the box's copied pixels that changed against the original (a
        # later box overwrites an earlier one, changes included), then the median filter.
        label = labels[b]
        for box, copy in boxes:
            copied[b][box] |= copy
            change = np.abs(patched[box].astype(np.int16) - originals[b][box].astype(np.int16)).mean(axis=-1)
            label[box] = copy & (change > tolerance)
        if median_kernel > 1:
            label[:] = cv2.medianBlur(label.astype(np.uint8), median_kernel) > 0
        results[b] = patched
    return from_uint8_patched(images, results, labels, copied)

"""Validation-only defects (smear, stripe, speckles, worn patch) painted on any normal image.

Validation anomalies select models and settings, so they must come from a family that
neither trains a method nor is tested: not DRAEM's or NSA's anomalies (what the methods
train on), and not the built-in dataset's test defects (scratch, hole, contamination,
discolouration, :mod:`kdsearch.data.synthetic_defects`). Each kind here changes an image
in a way none of those does: a smear blurs and flattens the surface, a stripe is a
straight band with shifted brightness, speckles are a cluster of tiny dots, and a worn
patch replaces the texture by its own mean colour. This module imports nothing from the
dataset's painters, and a test checks that the two families share no kind and no code.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

__all__ = ["VALIDATION_PAINTERS", "paint_defects"]

#: A pixel belongs to the defect when the painter moved one of its channels by this much (0-255 scale).
_VISIBLE = 6.0

Painter = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _blob(shape: tuple[int, int], rng: np.random.Generator, radius: float) -> np.ndarray:
    """A filled ellipse of mean radius ``radius`` at a random place, wholly inside the frame."""
    height, width = shape
    axes = (max(1, int(radius * rng.uniform(0.7, 1.3))), max(1, int(radius * rng.uniform(0.7, 1.3))))
    centre = (int(rng.uniform(axes[0], max(axes[0] + 1, width - axes[0]))),
              int(rng.uniform(axes[1], max(axes[1] + 1, height - axes[1]))))
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_8)
    return canvas > 0


def paint_smear(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smeared area, 20-35 % of the side across: blurred and pulled toward a lighter grey."""
    side = min(image.shape[:2])
    region = _blob(image.shape[:2], rng, side * rng.uniform(0.10, 0.18))
    kernel = 2 * max(1, side // 24) + 1
    smeared = cv2.GaussianBlur(image, (kernel, kernel), 0)
    smeared = smeared * 0.6 + np.float32(rng.uniform(150, 230)) * 0.4
    return np.where(region[..., None], smeared, image), region


def paint_stripe(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A straight band across the whole frame, 3-6 % of the side wide, lighter or darker."""
    height, width = image.shape[:2]
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    yy, xx = np.mgrid[0:height, 0:width]
    offset = (xx - width / 2) * normal[0] + (yy - height / 2) * normal[1]
    centre = rng.uniform(-0.3, 0.3) * min(height, width)
    region = np.abs(offset - centre) <= max(1.0, min(height, width) * rng.uniform(0.015, 0.03))
    shift = np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(60, 100))
    return np.where(region[..., None], image + shift, image), region


def paint_speckles(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """8-20 dots of 1-3 % of the side in one cluster, each near black or near white."""
    height, width = image.shape[:2]
    side = min(height, width)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    painted, region = image.copy(), np.zeros((height, width), bool)
    for _ in range(int(rng.integers(8, 21))):
        canvas = np.zeros((height, width), np.uint8)
        centre = (int(np.clip(cx + rng.normal(0, side * 0.06), 0, width - 1)),
                  int(np.clip(cy + rng.normal(0, side * 0.06), 0, height - 1)))
        cv2.circle(canvas, centre, max(1, int(side * rng.uniform(0.005, 0.015))), 255, -1, cv2.LINE_8)
        dot = canvas > 0
        painted[dot] = np.float32(rng.choice([15.0, 240.0]))
        region |= dot
    return painted, region


def paint_worn(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A worn patch, 15-25 % of the side across: the surface's texture gone, only its mean colour."""
    region = _blob(image.shape[:2], rng, min(image.shape[:2]) * rng.uniform(0.075, 0.125))
    mean = image[region].mean(axis=0)
    return np.where(region[..., None], mean[None, None, :], image), region


VALIDATION_PAINTERS: dict[str, Painter] = {
    "smear": paint_smear,
    "stripe": paint_stripe,
    "speckles": paint_speckles,
    "worn": paint_worn,
}
"""Validation defect kind to painter; none is a kind of the built-in dataset's test defects."""


def paint_defects(images01: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One validation defect on each image, the four kinds in turn.

    Args:
        images01: (N, 3, H, W) float images in [0, 1].
        generator: seeds every draw, so the same generator state gives the same defects.

    Returns:
        ``(anomalous01, masks)``: the painted images, equal to the input outside the mask,
        and (N, 1, H, W) float masks in {0, 1}: the painted pixels whose value visibly
        changed, each mask with at least one pixel.
    """
    n, _, height, width = images01.shape
    kinds = list(VALIDATION_PAINTERS)
    out, masks = images01.clone(), torch.zeros((n, 1, height, width), dtype=images01.dtype)
    for index in range(n):
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        image = images01[index].permute(1, 2, 0).cpu().numpy().astype(np.float32) * 255.0
        painted, region = VALIDATION_PAINTERS[kinds[index % len(kinds)]](image, rng)
        change = np.clip(painted, 0.0, 255.0) - image
        visible = np.abs(change).max(axis=2)
        mask = region & (visible >= _VISIBLE)
        if not mask.any():  # nothing visible changed (a flat image): keep the most changed pixel
            mask.flat[int(np.where(region, visible, -1.0).argmax())] = True
        shift = torch.from_numpy(change * mask[..., None] / 255.0).permute(2, 0, 1).to(images01)
        out[index] = (images01[index] + shift).clamp_(0.0, 1.0)  # + 0 outside the mask: those pixels stay exact
        masks[index, 0] = torch.from_numpy(mask)
    return out, masks

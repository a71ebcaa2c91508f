"""Object foregrounds that confine synthetic anomalies to the object.

DMDD's foreground-aware anomaly synthesis (FAS, Sec. 3.4.1) extracts the foreground
with GrabCut (Rother et al., 2004) and multiplies the Perlin mask with it. NSA
(Schlüter et al., 2022) uses a cheaper rule for object categories: a pixel is object
when its mean intensity differs from a known background brightness by more than a
threshold, cleaned with a 7x7 median filter (``skip_background`` in its code). Both are
here; both fall back to an all-ones mask when they find (almost) no foreground or
(almost) only foreground, which is what happens on texture categories, so that
synthesis then covers the whole image as without FAS.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

__all__ = ["grabcut_foreground", "object_foreground_threshold", "to_uint8_hwc"]


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] or uint8, any device -> contiguous uint8 (B, H, W, 3) on CPU."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    # Transposed where the images are (a GPU does it in place of the CPU); a no-op for channels-last memory.
    hwc = images.detach().permute(0, 2, 3, 1)
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
        # The same values as round(clamp(x, 0, 1) * 255), with the transpose folded into the first pass.
        hwc = hwc.mul(255.0).clamp_(0.0, 255.0).round_().to(torch.uint8)
    return np.ascontiguousarray(hwc.contiguous().cpu().numpy())


def _map_images(fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, workers: int | None) -> list[np.ndarray]:
    # OpenCV releases the GIL inside grabCut and medianBlur, so threads give real
    # parallelism without pickling images to worker processes.
    if workers is None:
        workers = min(len(batch), os.cpu_count() or 1)
    if workers <= 1 or len(batch) <= 1:
        return [fn(image) for image in batch]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, batch))


def _fallback(fg: np.ndarray, area: int, min_fraction: float, max_fraction: float) -> np.ndarray:
    fraction = float(fg.sum()) / max(area, 1)
    if fraction < min_fraction or fraction > max_fraction:
        return np.ones_like(fg)
    return fg


def grabcut_foreground(images: torch.Tensor, *, iterations: int = 3, margin: float = 0.05,
                       min_fraction: float = 0.02, max_fraction: float = 0.98,
                       workers: int | None = None) -> torch.Tensor:
    """Per-image foreground by ``cv2.grabCut`` initialised with an inset rectangle.

    Pixels outside the rectangle (``margin`` of the width/height on each side, at least
    one pixel) are definite background; GrabCut labels the inside. Definite and probable
    foreground count as foreground. When the foreground covers less than
    ``min_fraction`` or more than ``max_fraction`` of the rectangle, the image is taken
    to have no separable object (textures: GrabCut then returns nearly nothing) and its
    mask is all ones, so synthesis falls back to the full image.

    GrabCut seeds its colour models with k-means on OpenCV's per-thread RNG; the RNG is
    reset before every image, so the result of an image never depends on the images
    processed before it, nor on the thread that ran it.

    Cost: about 30-300 ms per 256 x 256 image on one CPU core (more for busy images);
    compute it once per category (see ``AnomalySynthesizer.precompute_foreground``).

    Args:
        images: (B, 3, H, W) float in [0, 1] or uint8, any device.
        iterations: GrabCut iterations.
        margin: inset of the initial rectangle, as a share of each side, in [0, 0.5).
        min_fraction: below this foreground share of the rectangle, fall back to ones.
        max_fraction: above this share, fall back to ones.
        workers: threads (default: one per CPU core, at most B).

    Returns:
        float32 (B, 1, H, W) in {0, 1} on the images' device.

    Raises:
        ValueError: bad shapes or parameters, or an image too small for the rectangle.
    """
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    batch = to_uint8_hwc(images)
    _, height, width, _ = batch.shape
    dy = max(1, int(round(margin * height)))
    dx = max(1, int(round(margin * width)))
    if height - 2 * dy < 2 or width - 2 * dx < 2:
        raise ValueError(f"images of {height}x{width} are too small for a GrabCut rectangle with margin {margin}")
    rect = (dx, dy, width - 2 * dx, height - 2 * dy)
    area = rect[2] * rect[3]

    def one(image: np.ndarray) -> np.ndarray:
        cv2.setRNGSeed(0)
        labels = np.zeros((height, width), np.uint8)
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        cv2.grabCut(image, labels, rect, background_model, foreground_model, iterations, cv2.GC_INIT_WITH_RECT)
        fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
        return _fallback(fg, area, min_fraction, max_fraction)

    masks = np.stack(_map_images(one, batch, workers))
    return torch.from_numpy(masks).to(device=images.device, dtype=torch.float32).unsqueeze(1)


def object_foreground_threshold(images: torch.Tensor, *, background: float | None = None,
                                threshold: float = 0.1, median_kernel: int = 7, border: float = 0.04,
                                min_fraction: float = 0.02, max_fraction: float = 0.98) -> torch.Tensor:
    """NSA-style foreground: mean intensity far from the background brightness.

    A pixel is foreground when |mean over channels - background| > ``threshold``; the
    mask is then median-filtered (NSA: 7x7) to remove grain. NSA sets the background
    per category (bright 200/255 with threshold 60/255 for bottle, screw, capsule,
    zipper; dark 20/255 with 20/255 for hazelnut, pill, toothbrush, metal nut); with
    ``background=None`` it is estimated per image as the median brightness of a border
    band ``border`` wide, which suits the centred objects of MVTec-style data. The same
    all-ones fallback as :func:`grabcut_foreground` applies (fractions of the image).

    The rule is evaluated on the uint8 image in grey levels, as NSA's code evaluates
    ``|mean - b| > t`` with integers b and t: the channel sum is compared with
    3 x 255 x ``background`` and 3 x 255 x ``threshold``, with no rounding in between. A
    pixel exactly ``threshold`` away is background, as in NSA; ``background`` and
    ``threshold`` given as the float nearest to b/255 and t/255 (``200 / 255``) reproduce
    NSA's integers exactly (x 255 gives them back).

    Args:
        images: (B, 3, H, W) float in [0, 1] or uint8, any device.
        background: background brightness in [0, 1], or None to estimate it per image.
        threshold: brightness difference (in [0, 1] units) that makes a pixel object.
        median_kernel: odd median filter size (1 disables).
        border: width of the border band used to estimate the background, as a share of each side.
        min_fraction: below this foreground share of the image, fall back to ones.
        max_fraction: above this share, fall back to ones.

    Returns:
        float32 (B, 1, H, W) in {0, 1} on the images' device.

    Raises:
        ValueError: bad shapes or parameters.
    """
    if median_kernel < 1 or median_kernel % 2 == 0:
        raise ValueError(f"median_kernel must be odd and positive, got {median_kernel}")
    batch = to_uint8_hwc(images)
    _, height, width, _ = batch.shape
    # Channel sums (exact integers) against three times the levels in grey levels: NSA's
    # |mean - b| > t without a rounded mean or a rounded b/255 in between.
    sums = batch.sum(axis=-1, dtype=np.int32)  # (B, H, W)
    if background is None:
        band_y = max(1, int(round(border * height)))
        band_x = max(1, int(round(border * width)))
        ring = np.ones((height, width), bool)
        ring[band_y:height - band_y, band_x:width - band_x] = False
        levels = np.median(sums[:, ring], axis=1)  # three times the median brightness, in grey levels
    else:
        levels = np.full(len(batch), 3.0 * (float(background) * 255.0))
    limit = 3.0 * (float(threshold) * 255.0)

    def one(image_sums: np.ndarray, level: float) -> np.ndarray:
        mask = (np.abs(image_sums - level) > limit).astype(np.uint8)
        if median_kernel > 1:
            mask = cv2.medianBlur(mask, median_kernel)
        return _fallback(mask, height * width, min_fraction, max_fraction)

    masks = np.stack([one(s, float(level)) for s, level in zip(sums, levels)])
    return torch.from_numpy(masks).to(device=images.device, dtype=torch.float32).unsqueeze(1)

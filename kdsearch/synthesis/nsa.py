"""Natural Synthetic Anomalies (NSA; Schlüter et al., ECCV 2022), as MRKD's image-level masking uses them.

Patches of random size and aspect are cut from *other* normal images of the category,
rescaled, moved to a random place on the object and Poisson-blended in with
``cv2.seamlessClone`` (or, with the whole batch on the training device, the same solve
batched in torch: :mod:`kdsearch.synthesis.nsa_device`, :mod:`kdsearch.synthesis.poisson`).
Facts taken from the public NSA code (``patch_ex``):

- patch half-widths are (0.03 + Gamma(shape 2, scale 0.05)) x side, clipped per axis to
  bounds of (0.03, 0.4) x side (the per-category default), drawn independently per
  axis, so the aspect ratio is random;
- a rescale factor N(1, 0.5) clipped to [0.7, 1.3] is applied keeping the aspect;
- the first patch is always attempted and each further one with probability 1/2, up to
  3-4 patches per category;
- objects use NORMAL_CLONE (source gradients) and textures MIXED_CLONE, because mixed
  gradients leave artefacts on objects (NSA README / appendix A.1);
- the patch mask's one-pixel border is zeroed and masks under 50 pixels are skipped,
  because seamlessClone fails or smears on them;
- a pixel is labelled anomalous when its mean absolute change over channels exceeds one
  grey level, followed by a 5x5 median filter.

Choices made here: the destination is restricted to the given foreground (pixels
outside it never change, and at least ``min_overlap_fraction`` of the patch rectangle
must lie on it); with ``source_foreground`` the cut must contain at least
``min_object_fraction`` object, as NSA's ``min_object_pct``; a patch that fails (no
placement found, too small, or changing fewer than ``min_patch_pixels`` pixels) is
redrawn up to ``max_attempts`` times and otherwise dropped. The label is exact: the
median filter may only remove pixels from the changed set, removed pixels are restored,
so the mask equals the set of changed pixels.

This module checks the inputs, makes the draws that concern the whole batch and hands the
images to one of two blends: the patches themselves are drawn in
:mod:`kdsearch.synthesis.nsa_patches` and pasted either by OpenCV, per image on threads
(:mod:`kdsearch.synthesis.nsa_opencv`), or in batched rounds on the images' device
(:mod:`kdsearch.synthesis.nsa_device`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kdsearch.synthesis._common import (
    DEFAULT_CHANGE_TOLERANCE,
    as_mask,
    check_images,
    check_patch_options,
)
from kdsearch.synthesis.foreground import to_uint8_hwc
from kdsearch.synthesis.nsa_device import blend_on_device
from kdsearch.synthesis.nsa_opencv import blend_with_opencv
from kdsearch.synthesis.nsa_patches import Patcher, PatchStream, image_patches, integral

__all__ = ["nsa_synthesize", "NSA_MODES", "NSA_BLENDS", "SYNTHESIS_WORKERS_ENV", "default_workers", "resolve_blend"]


#: Environment variable that caps the threads of per-image synthesis (a Ray trial sets it
#: to its CPUs, so trials sharing a node do not each take every core).
SYNTHESIS_WORKERS_ENV = "KDSEARCH_SYNTHESIS_WORKERS"


def default_workers() -> int:
    """Threads for per-image OpenCV work: ``$KDSEARCH_SYNTHESIS_WORKERS``, else every core this process may use."""
    configured = os.environ.get(SYNTHESIS_WORKERS_ENV)
    if configured:
        return max(1, int(configured))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


NSA_MODES = ("auto", "normal", "mixed", "random", "swap")
#: Who solves the Poisson blends: OpenCV per image, torch batched on the images' device, or auto.
NSA_BLENDS = ("auto", "opencv", "torch")
# Below this foreground share an image is treated as an object (NORMAL_CLONE) in auto mode.
_TEXTURE_FOREGROUND_SHARE = 0.99


def resolve_blend(blend: str, device: torch.device) -> str:
    """``auto`` → ``torch`` on CUDA (the batch stays on the GPU, blended in batched rounds),
    ``opencv`` on a CPU (per image on every core: faster there than the batched solve)."""
    if blend not in NSA_BLENDS:
        raise ValueError(f"blend must be one of {NSA_BLENDS}, got {blend!r}")
    if blend == "auto":
        return "torch" if device.type == "cuda" else "opencv"
    return blend


def _check_sources(sources: torch.Tensor, height: int, width: int) -> None:
    if sources.ndim != 4 or sources.shape[1] != 3 or tuple(sources.shape[2:]) != (height, width):
        raise ValueError(f"sources must have shape (M, 3, {height}, {width}), got {tuple(sources.shape)}")
    if sources.shape[0] < 1:
        raise ValueError("sources must hold at least one image")


def _checked_indices(image_indices: Sequence[int] | torch.Tensor | None, batch: int, count: int) -> list[int] | None:
    """``image_indices`` as a list of ints, checked against the batch and the ``count`` sources."""
    if image_indices is None:
        return None
    indices = [int(i) for i in (image_indices.tolist() if torch.is_tensor(image_indices) else image_indices)]
    if len(indices) != batch:
        raise ValueError(f"image_indices must have {batch} entries, got {len(indices)}")
    if any(not 0 <= i < count for i in indices):
        raise ValueError(f"image_indices must lie in [0, {count}), got {indices}")
    return indices


@dataclass(frozen=True)
class _BatchDraws:
    """Per image: whether it gets anomalies, how many patches, its clone-mode coin and its own seed."""

    selected: np.ndarray
    counts: np.ndarray
    coins: np.ndarray
    image_seeds: np.ndarray


def _draw_batch(rng: np.random.Generator, batch: int, anomaly_probability: float,
                num_patches: tuple[int, int]) -> _BatchDraws:
    # Drawn for the whole batch before any patch, so which images get anomalies, how many
    # patches and which clone mode depend on the seed only, not on earlier images' patches;
    # each image then draws from its own generator, so images can be patched in parallel
    # and the batch is the same for any number of workers or either blend.
    low, high = num_patches
    selected = rng.random(batch) < anomaly_probability
    counts = low + (rng.random((batch, high - low)) < 0.5).sum(axis=1)
    coins = rng.random(batch) < 0.5
    image_seeds = rng.integers(0, 2**63 - 1, size=batch)
    return _BatchDraws(selected, counts, coins, image_seeds)


def _clone_modes(mode: str, coins: np.ndarray, foreground: np.ndarray | None) -> list[bool]:
    """Per image, MIXED_CLONE (True) or NORMAL_CLONE."""
    def mixed(b: int) -> bool:
        if mode == "auto":
            return foreground is None or foreground[b].mean() >= _TEXTURE_FOREGROUND_SHARE  # a texture
        return bool(coins[b]) if mode == "random" else mode == "mixed"
    return [mixed(b) for b in range(len(coins))]


def _patch_streams(patcher: Patcher, draws: _BatchDraws, foreground: np.ndarray | None,
                   image_indices: list[int] | None, originals: np.ndarray | None,
                   max_attempts: int) -> Callable[[int], PatchStream | None]:
    """Image index -> its patch stream, or None when the image gets no anomaly."""
    def patches(b: int) -> PatchStream | None:
        if not draws.selected[b] or (foreground is not None and not foreground[b].any()):
            return None
        return image_patches(patcher.with_rng(np.random.default_rng(int(draws.image_seeds[b]))), int(draws.counts[b]),
                             max_attempts, None if image_indices is None else image_indices[b],
                             None if originals is None else originals[b],
                             None if foreground is None else integral(foreground[b]))
    return patches


def nsa_synthesize(images: torch.Tensor, sources: torch.Tensor, rng: np.random.Generator, *,
                   foreground: torch.Tensor | None = None, source_foreground: torch.Tensor | None = None,
                   image_indices: Sequence[int] | torch.Tensor | None = None, anomaly_probability: float = 1.0,
                   num_patches: tuple[int, int] = (1, 4), mode: str = "auto",
                   half_width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.4), (0.03, 0.4)),
                   gamma_params: tuple[float, float, float] = (2.0, 0.05, 0.03),
                   resize_bounds: tuple[float, float] = (0.7, 1.3), min_object_fraction: float = 0.5,
                   min_overlap_fraction: float = 0.25, min_patch_pixels: int = 50, max_attempts: int = 10,
                   placement_candidates: int = 64, median_kernel: int = 5,
                   change_tolerance: float = DEFAULT_CHANGE_TOLERANCE, blend: str = "auto",
                   workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson-blend patches of other normal images into each image (NSA).

    Every patch is drawn on the CPU (source, cut, rescale, place). With the OpenCV blend
    each image is then pasted and blended per image, on ``workers`` threads; with the
    torch blend the batch stays on its device, where a round pastes and blends every
    image's next patch at once (:class:`~kdsearch.synthesis.nsa_device.DeviceCanvas`).
    Every draw comes from ``rng`` (one child generator per image), so a fixed seed
    reproduces the batch exactly, whatever the number of workers, and both blends see the
    same draws.

    Args:
        images: float (B, 3, H, W) in [0, 1] (not normalised), any device.
        sources: normal images of the same category, (M, 3, H, W) float in [0, 1] or
            uint8, any device; patches come from a source other than the image itself.
        rng: numpy generator, the only source of randomness.
        foreground: optional (B, 1, H, W) destination foreground; nothing outside it
            changes. An image with an empty foreground stays unchanged.
        source_foreground: optional (M, 1, H, W) foreground of the sources; cuts must
            then contain more than ``min_object_fraction`` object.
        image_indices: index of each image within ``sources`` (so its own index is never
            picked); without it a source equal to the image is avoided by comparison.
        anomaly_probability: chance that an image gets anomalies (MRKD's α is the share
            of anomalous training images).
        num_patches: (low, high): ``low`` patches always, then each of the remaining
            ``high - low`` with probability 1/2 (NSA: (1, 3) or (1, 4)).
        mode: "normal" (NORMAL_CLONE), "mixed" (MIXED_CLONE), "random" (a coin per
            image, NSA's 'mix') or "auto": mixed where the image has no object
            foreground (none given, or covering >= 99% of it: a texture), normal otherwise,
            which is NSA's textures/objects split.
        half_width_bounds: ((min, max) vertical, (min, max) horizontal) half-widths as
            shares of the image side.
        gamma_params: (shape, scale, offset) of the half-width distribution.
        resize_bounds: clip range of the rescale factor.
        min_object_fraction: least object share of a cut (only with ``source_foreground``).
        min_overlap_fraction: least foreground share of the destination rectangle.
        min_patch_pixels: smallest clone mask and smallest changed area of a patch.
        max_attempts: redraws of a failed patch before it is dropped.
        placement_candidates: random positions tried at once per cut and per placement.
        median_kernel: odd size of the speckle filter on the label (1 disables).
        change_tolerance: a pixel counts as changed when its mean absolute change over
            channels exceeds this (image units; default one grey level).
        blend: "opencv" (``cv2.seamlessClone``), "torch" (pasting, the change test and the
            label on the images' device, blends by :func:`~kdsearch.synthesis.poisson.poisson_blend`:
            equal to OpenCV's up to one grey level on under 1 % of the blended pixels) or
            "auto" (:func:`resolve_blend`).
        workers: threads drawing and blending images at once with the OpenCV blend (default
            :func:`default_workers`).

    Returns:
        ``(anomalous, masks)``: float (B, 3, H, W) in [0, 1] and float {0, 1}
        (B, 1, H, W), on the images' device and in their dtype.

    Raises:
        ValueError: bad shapes, sizes or options.
    """
    batch, height, width = check_images(images)
    _check_sources(sources, height, width)
    if mode not in NSA_MODES or mode == "swap":
        raise ValueError(f"mode must be one of {NSA_MODES[:-1]} (swap: nsa_swap_synthesize), got {mode!r}")
    check_patch_options(num_patches, anomaly_probability, median_kernel, change_tolerance)
    blend = resolve_blend(blend, images.device)
    image_indices = _checked_indices(image_indices, batch, sources.shape[0])
    if source_foreground is not None:
        source_foreground = as_mask(source_foreground, sources.shape[0], height, width, torch.device("cpu"),
                                    "source_foreground")
    fg_np = None
    if foreground is not None:
        fg_np = as_mask(foreground, batch, height, width, torch.device("cpu"), "foreground")[:, 0].numpy()

    options = {
        "half_width_bounds": half_width_bounds, "gamma_params": gamma_params, "resize_bounds": resize_bounds,
        "min_object_fraction": min_object_fraction, "min_overlap_fraction": min_overlap_fraction,
        "min_patch_pixels": min_patch_pixels, "placement_candidates": placement_candidates,
    }
    patcher = Patcher(sources, source_foreground, rng, height, width, options)
    # Only the OpenCV path, or a comparison with the sources (no indices), needs the batch
    # as uint8 on the CPU; on the device path the batch stays where it is.
    originals = to_uint8_hwc(images) if blend == "opencv" or image_indices is None else None
    draws = _draw_batch(rng, batch, anomaly_probability, num_patches)
    mixed = _clone_modes(mode, draws.coins, fg_np)
    patches_for = _patch_streams(patcher, draws, fg_np, image_indices, originals, max_attempts)
    tolerance_u8 = change_tolerance * 255.0
    if blend == "torch":
        return blend_on_device(images, foreground, mixed, patches_for, tolerance_u8, min_patch_pixels, median_kernel)
    return blend_with_opencv(images, originals, fg_np, mixed, patches_for, tolerance_u8, min_patch_pixels,
                             median_kernel, workers if workers is not None else default_workers())

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
"""
from __future__ import annotations

import copy
import os
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor

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
from kdsearch.synthesis.nsa_device import DeviceCanvas, Patch

__all__ = ["nsa_synthesize", "NSA_MODES", "NSA_BLENDS", "default_workers", "resolve_blend"]


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


def _clip(value: float, low: float, high: float) -> float:
    """``np.clip`` of one number (the high bound wins when low > high), without its per-call overhead."""
    return min(max(value, low), high)


def _integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column, for O(1) box sums."""
    return cv2.integral(mask.astype(np.uint8))


def _box_fraction(table: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int, w: int) -> np.ndarray:
    total = table[y0 + h, x0 + w] - table[y0, x0 + w] - table[y0 + h, x0] + table[y0, x0]
    return total / float(h * w)


class _Patcher:
    """Per-call state: options, the random generator and converted source images."""

    def __init__(self, sources: torch.Tensor, source_foreground: torch.Tensor | None, rng: np.random.Generator,
                 height: int, width: int, options: dict) -> None:
        self.sources = sources
        self.rng = rng
        self.height = height
        self.width = width
        self.opt = options
        # Foregrounds as a numpy view of the (bool, CPU) masks: no copy per call.
        self.source_foreground = None if source_foreground is None else source_foreground[:, 0].numpy()
        # Sources are converted to uint8 HWC (and their foregrounds to integral images)
        # only when first picked, so a large category pool costs nothing up front; uint8
        # channels-last sources on the CPU (a synthesizer's pool) are already that, as a view.
        self._cache: dict[int, np.ndarray] = {}
        self._source_tables: dict[int, np.ndarray] = {}
        hwc = sources.permute(0, 2, 3, 1)
        self._hwc_view = hwc.numpy() if sources.dtype == torch.uint8 and sources.device.type == "cpu" \
            and hwc.is_contiguous() else None
        (lo_y, hi_y), (lo_x, hi_x) = options["half_width_bounds"]
        self.half_min = (max(1, round(lo_y * height)), max(1, round(lo_x * width)))
        self.half_max = (max(self.half_min[0] + 1, round(hi_y * height)),
                         max(self.half_min[1] + 1, round(hi_x * width)))

    def with_rng(self, rng: np.random.Generator) -> _Patcher:
        """The same patcher (sharing its converted sources) drawing from ``rng``."""
        twin = copy.copy(self)
        twin.rng = rng
        return twin

    def source(self, index: int) -> np.ndarray:
        if self._hwc_view is not None:
            return self._hwc_view[index]
        if index not in self._cache:
            self._cache[index] = to_uint8_hwc(self.sources[index:index + 1])[0]
        return self._cache[index]

    def source_table(self, index: int) -> np.ndarray | None:
        if self.source_foreground is None:
            return None
        if index not in self._source_tables:
            self._source_tables[index] = _integral(self.source_foreground[index])
        return self._source_tables[index]

    def pick_source(self, own_index: int | None, dest: np.ndarray) -> int:
        count = self.sources.shape[0]
        if count == 1:
            return 0
        if own_index is not None:
            # Uniform over the other images: draw from count - 1 and skip the own index.
            index = int(self.rng.integers(count - 1))
            return index + 1 if index >= own_index else index
        # Without indices, avoid a source identical to the image (the batch drawn from
        # the sources themselves); a few redraws make a repeat vanishingly rare.
        for _ in range(8):
            index = int(self.rng.integers(count))
            if not np.array_equal(self.source(index), dest):
                return index
        return index

    def half_width(self, axis: int, side: int) -> int:
        shape, scale, offset = self.opt["gamma_params"]
        value = (offset + self.rng.gamma(shape, scale)) * side
        return int(_clip(value, self.half_min[axis], self.half_max[axis]))

    def cut(self, src: np.ndarray, table: np.ndarray | None) -> np.ndarray | None:
        """A random rectangle of ``src``, or None when no cut holds enough object."""
        hy = self.half_width(0, self.height)
        hx = self.half_width(1, self.width)
        k = self.opt["placement_candidates"]
        cy = self.rng.integers(self.half_min[0], self.height - self.half_min[0], size=k)
        cx = self.rng.integers(self.half_min[1], self.width - self.half_min[1], size=k)
        # Centres lie inside the image, so only one side of each edge can leave it.
        y0, y1 = np.maximum(cy - hy, 0), np.minimum(cy + hy, self.height)
        x0, x1 = np.maximum(cx - hx, 0), np.minimum(cx + hx, self.width)
        valid = ((y1 - y0) >= 3) & ((x1 - x0) >= 3)
        if table is not None:
            area = np.maximum((y1 - y0) * (x1 - x0), 1)
            inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
            valid &= inside / area > self.opt["min_object_fraction"]
        hits = np.flatnonzero(valid)
        if hits.size == 0:
            return None
        i = hits[0]
        return src[y0[i]:y1[i], x0[i]:x1[i]]

    def rescale(self, patch: np.ndarray) -> np.ndarray:
        low, high = self.opt["resize_bounds"]
        height, width = patch.shape[:2]
        scale = _clip(float(self.rng.normal(1.0, 0.5)), low, high)
        # Keep the aspect ratio while clipping both sides to the patch size bounds
        # (full widths, twice the half-width bounds) and to the image minus a margin.
        min_h, max_h = 2 * self.half_min[0], min(2 * self.half_max[0], self.height - 4)
        min_w, max_w = 2 * self.half_min[1], min(2 * self.half_max[1], self.width - 4)
        new_h = _clip(round(scale * height), min_h, max_h)
        new_w = _clip(round(new_h / height * width), min_w, max_w)
        new_h = _clip(round(new_w / width * height), min_h, max_h)
        if (new_h, new_w) == (height, width):
            return patch
        return cv2.resize(patch, (new_w, new_h), interpolation=cv2.INTER_LINEAR)

    def place(self, h: int, w: int, dest_table: np.ndarray | None) -> tuple[int, int] | None:
        """Top-left corner for an h x w patch one pixel inside the image, on the foreground."""
        if h + 2 > self.height or w + 2 > self.width:
            return None
        k = self.opt["placement_candidates"]
        y0 = self.rng.integers(1, self.height - h, size=k)
        x0 = self.rng.integers(1, self.width - w, size=k)
        if dest_table is None:
            return int(y0[0]), int(x0[0])
        ok = np.flatnonzero(_box_fraction(dest_table, y0, x0, h, w) >= self.opt["min_overlap_fraction"])
        if ok.size == 0:
            return None
        return int(y0[ok[0]]), int(x0[ok[0]])

    def draw(self, own_index: int | None, original: np.ndarray | None, dest_table: np.ndarray | None) -> Patch | None:
        """One patch for an image: a rescaled cut of another image and where it goes.

        Every random number of a patch is drawn here, on the CPU, whoever blends it.
        Returns None when a draw fails: no cut holds enough object, no placement lies on
        the foreground, or the clone mask (the patch's interior on the foreground) would
        hold fewer than ``min_patch_pixels`` pixels.

        Args:
            own_index: the image's index among the sources (never picked), or None.
            original: the image as uint8 HWC, compared with sources when ``own_index`` is None.
            dest_table: summed-area table of the image's foreground, or None (whole image).
        """
        index = self.pick_source(own_index, original)
        pixels = self.cut(self.source(index), self.source_table(index))
        if pixels is None:
            return None
        pixels = self.rescale(pixels)
        h, w = pixels.shape[:2]
        corner = self.place(h, w, dest_table)
        if corner is None:
            return None
        top, left = corner
        # The clone mask is the patch without its one-pixel border (as NSA: avoids edge
        # artefacts), on the foreground; counted here from the table, without building it.
        if dest_table is None:
            clone_pixels = max(h - 2, 0) * max(w - 2, 0)
        else:
            y0, y1, x0, x1 = top + 1, top + h - 1, left + 1, left + w - 1
            clone_pixels = int(dest_table[y1, x1] - dest_table[y0, x1] - dest_table[y1, x0] + dest_table[y0, x0])
        if clone_pixels < self.opt["min_patch_pixels"]:
            return None
        return Patch(pixels, top, left)


def _image_patches(patcher: _Patcher, count: int, max_attempts: int, own_index: int | None,
                   original: np.ndarray | None, dest_table: np.ndarray | None) -> Generator[Patch, bool, None]:
    """One image's patches in order: yields each patch to paste and is sent whether it was kept.

    A patch whose draw fails or whose paste is refused (a negligible change) is redrawn, up
    to ``max_attempts`` times, and otherwise dropped. As a generator, the same draws serve
    a driver that pastes one image at a time (OpenCV) or a round of every image's next
    patch at once (on the device).
    """
    for _ in range(count):
        for _attempt in range(max_attempts):
            patch = patcher.draw(own_index, original, dest_table)
            if patch is not None and (yield patch):
                break


def _paste_opencv(current: np.ndarray, patch: Patch, dest_fg: np.ndarray | None, mixed: bool,
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


def resolve_blend(blend: str, device: torch.device) -> str:
    """``auto`` → ``torch`` on CUDA (the batch stays on the GPU, blended in batched rounds),
    ``opencv`` on a CPU (per image on every core: faster there than the batched solve)."""
    if blend not in NSA_BLENDS:
        raise ValueError(f"blend must be one of {NSA_BLENDS}, got {blend!r}")
    if blend == "auto":
        return "torch" if device.type == "cuda" else "opencv"
    return blend


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
    if sources.ndim != 4 or sources.shape[1] != 3 or tuple(sources.shape[2:]) != (height, width):
        raise ValueError(f"sources must have shape (M, 3, {height}, {width}), got {tuple(sources.shape)}")
    if sources.shape[0] < 1:
        raise ValueError("sources must hold at least one image")
    if mode not in NSA_MODES or mode == "swap":
        raise ValueError(f"mode must be one of {NSA_MODES[:-1]} (swap: nsa_swap_synthesize), got {mode!r}")
    check_patch_options(num_patches, anomaly_probability, median_kernel, change_tolerance)
    low, high = num_patches
    blend = resolve_blend(blend, images.device)
    if image_indices is not None:
        image_indices = [int(i) for i in (image_indices.tolist() if torch.is_tensor(image_indices) else image_indices)]
        if len(image_indices) != batch:
            raise ValueError(f"image_indices must have {batch} entries, got {len(image_indices)}")
        if any(not 0 <= i < sources.shape[0] for i in image_indices):
            raise ValueError(f"image_indices must lie in [0, {sources.shape[0]}), got {image_indices}")
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
        "tolerance_u8": change_tolerance * 255.0,
    }
    patcher = _Patcher(sources, source_foreground, rng, height, width, options)
    # Only the OpenCV path, or a comparison with the sources (no indices), needs the batch
    # as uint8 on the CPU; on the device path the batch stays where it is.
    originals = to_uint8_hwc(images) if blend == "opencv" or image_indices is None else None

    # Drawn for the whole batch before any patch, so which images get anomalies, how many
    # patches and which clone mode depend on the seed only, not on earlier images' patches;
    # each image then draws from its own generator, so images can be patched in parallel
    # and the batch is the same for any number of workers or either blend.
    selected = rng.random(batch) < anomaly_probability
    counts = low + (rng.random((batch, high - low)) < 0.5).sum(axis=1)
    coins = rng.random(batch) < 0.5
    image_seeds = rng.integers(0, 2**63 - 1, size=batch)

    def clone_mode(b: int) -> bool:
        """MIXED_CLONE (True) or NORMAL_CLONE for image b."""
        if mode == "auto":
            return fg_np is None or fg_np[b].mean() >= _TEXTURE_FOREGROUND_SHARE  # a texture
        return bool(coins[b]) if mode == "random" else mode == "mixed"

    def patches(b: int) -> Generator[Patch, bool, None] | None:
        """Image b's patch generator, or None when it gets no anomaly."""
        if not selected[b] or (fg_np is not None and not fg_np[b].any()):
            return None
        return _image_patches(patcher.with_rng(np.random.default_rng(int(image_seeds[b]))), int(counts[b]),
                              max_attempts, None if image_indices is None else image_indices[b],
                              None if originals is None else originals[b],
                              None if fg_np is None else _integral(fg_np[b]))

    mixed = [clone_mode(b) for b in range(batch)]
    if blend == "torch":
        canvas = DeviceCanvas(images, foreground, torch.tensor(mixed), change_tolerance * 255.0, min_patch_pixels)
        _paste_in_rounds({b: steps for b in range(batch) if (steps := patches(b)) is not None}, canvas.paste)
        return canvas.finish(images, median_kernel)

    results = originals.copy()
    labels = np.zeros((batch, height, width), bool)

    def one(b: int) -> None:
        steps = patches(b)
        if steps is None:
            return
        dest_fg = None if fg_np is None else fg_np[b].astype(np.uint8)
        current = originals[b]
        region = np.zeros((height, width), bool)
        try:
            patch = next(steps)
            while True:
                pasted = _paste_opencv(current, patch, dest_fg, mixed[b], options["tolerance_u8"], min_patch_pixels)
                if pasted is not None:
                    current, inside = pasted
                    region |= inside
                patch = steps.send(pasted is not None)
        except StopIteration:
            pass
        changed = _changed(current, originals[b], region, options["tolerance_u8"])
        if median_kernel > 1:
            # NSA median-filters its label; intersecting with the changed set lets the
            # filter only drop speckle, never add unchanged pixels, keeping labels exact.
            changed &= cv2.medianBlur(changed.astype(np.uint8), median_kernel) > 0
        labels[b] = changed
        results[b] = current

    # OpenCV releases the GIL, so threads draw and blend images on as many cores as there
    # are; each image runs to its end on its own thread (no wait for a round's slowest image).
    workers = max(1, min(batch, workers if workers is not None else default_workers()))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(batch)))
    else:
        for b in range(batch):
            one(b)

    return from_uint8_patched(images, results, labels)


def _paste_in_rounds(images: dict[int, Generator[Patch, bool, None]],
                     paste: Callable[[list[tuple[int, Patch]]], list[bool]]) -> None:
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

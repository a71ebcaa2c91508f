"""NSA's patch drawing: every random number of :func:`~kdsearch.synthesis.nsa.nsa_synthesize`'s patches.

A patch is a rescaled cut of another normal image of the category and the place it goes
(:class:`Patch`). All of it is drawn here, on the CPU, so the OpenCV blend
(:mod:`kdsearch.synthesis.nsa_opencv`) and the batched one on the device
(:mod:`kdsearch.synthesis.nsa_device`) see the same draws. The rules (half-widths,
rescale, object share of a cut, overlap with the destination foreground) are those
listed in :mod:`kdsearch.synthesis.nsa`.
"""
from __future__ import annotations

import copy
from collections.abc import Generator
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from kdsearch.synthesis.foreground import to_uint8_hwc

__all__ = ["Patch", "PatchStream", "Patcher", "image_patches", "integral"]


@dataclass(frozen=True)
class Patch:
    """A patch to paste: uint8 (h, w, 3) pixels whose top-left corner goes to (top, left)."""

    pixels: np.ndarray
    top: int
    left: int


#: One image's patches in order; each is sent back whether its paste was kept.
PatchStream = Generator[Patch, bool, None]


def _clip(value: float, low: float, high: float) -> float:
    """``np.clip`` of one number (the high bound wins when low > high), without its per-call overhead."""
    return min(max(value, low), high)


def integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column, for O(1) box sums."""
    return cv2.integral(mask.astype(np.uint8))


def _box_fraction(table: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int, w: int) -> np.ndarray:
    total = table[y0 + h, x0 + w] - table[y0, x0 + w] - table[y0 + h, x0] + table[y0, x0]
    return total / float(h * w)


class Patcher:
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

    def with_rng(self, rng: np.random.Generator) -> Patcher:
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
            self._source_tables[index] = integral(self.source_foreground[index])
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


def image_patches(patcher: Patcher, count: int, max_attempts: int, own_index: int | None,
                  original: np.ndarray | None, dest_table: np.ndarray | None) -> PatchStream:
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

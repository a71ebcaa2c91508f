"""Decode a category's manifest into uint8 / bool tensors at one image size.

Files decode in a thread pool (OpenCV releases the GIL). The result is a plain dict of
tensors and string lists, the unit the tensor cache stores.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from kdsearch.data import decode
from kdsearch.data.samples import Manifest, Sample
from kdsearch.errors import UserError, warn

log = logging.getLogger(__name__)

_PARALLEL_FROM = 16
"""Fewer files than this decode in the calling thread."""


def _decode_one(sample: Sample, size: int, preprocessing: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    full_image = decode.read_image(sample.image)
    image = decode.resize_image(full_image, size, preprocessing)
    if sample.mask is None:
        mask = np.zeros((size, size), dtype=bool)
        label = 0 if sample.label is None else sample.label
    else:
        full = decode.read_mask(sample.mask)
        if full.shape != full_image.shape[:2]:
            raise UserError(
                f"mask {sample.mask} is {full.shape[1]}x{full.shape[0]} px but its image {sample.image} is "
                f"{full_image.shape[1]}x{full_image.shape[0]}; the metrics need the mask of this very image: "
                f"restore the dataset's original mask")
        label = int(full.any()) if sample.label is None else sample.label
        mask = decode.resize_mask(full, size, preprocessing) if label else np.zeros((size, size), dtype=bool)
    return image, mask, label, sample.defect_type if label else "good"


def decode_samples(samples: Sequence[Sample], size: int, preprocessing: str = decode.DEFAULT_PREPROCESSING,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Decode and resize every sample (``preprocessing``: one of :data:`decode.PREPROCESSINGS`).

    Returns:
        ``(images, masks, labels, defect_types)``: uint8 (N, 3, S, S) RGB, bool (N, S, S),
        int64 (N,), and the defect type per sample (``"good"`` when normal).
    """
    n = len(samples)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    labels = np.zeros(n, dtype=np.int64)
    defects = ["good"] * n

    def work(i: int) -> None:
        images[i], masks[i], labels[i], defects[i] = _decode_one(samples[i], size, preprocessing)

    if n < _PARALLEL_FROM:
        for i in range(n):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for future in [pool.submit(work, i) for i in range(n)]:
                future.result()
    empty = [s for s, label, m in zip(samples, labels, masks) if label and s.mask is not None and not m.any()]
    if empty:
        warn(f"{len(empty)} image(s) filed as defects have an empty mask (first: {empty[0].mask}); they count as "
             f"anomalous for image AUROC and add no defect pixel (some datasets ship such masks)")
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(masks),
        torch.from_numpy(labels),
        defects,
    )


def tensorize(manifest: Manifest, size: int, preprocessing: str = decode.DEFAULT_PREPROCESSING) -> dict[str, object]:
    """Decode a manifest: the normal training images and the whole test split.

    Training samples that decode as anomalous (KolektorSDD2 ground truth with positive
    pixels) are dropped.

    Returns:
        A dict with ``train_images``, ``train_names``, ``test_images``, ``test_masks``,
        ``test_labels``, ``test_defects``, ``test_names``.
    """
    log.info("decoding %d images at %d px from %s", len(manifest.train) + len(manifest.test), size, manifest.root)
    train_images, _, train_labels, _ = decode_samples(manifest.train, size, preprocessing)
    keep = torch.nonzero(train_labels == 0).flatten()
    test_images, test_masks, test_labels, test_defects = decode_samples(manifest.test, size, preprocessing)
    return {
        "train_images": train_images.index_select(0, keep),
        "train_names": [manifest.train[i].name for i in keep.tolist()],
        "test_images": test_images,
        "test_masks": test_masks,
        "test_labels": test_labels,
        "test_defects": test_defects,
        "test_names": [s.name for s in manifest.test],
    }

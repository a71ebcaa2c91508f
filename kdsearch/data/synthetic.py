"""The built-in synthetic dataset: four categories in the MVTec AD layout, made on demand.

Two textures (``weave``: plain-weave fabric, ``stone``: polished granite) and two objects
(``washer``: a steel tab washer, ``pill``: an oblong tablet), 256 x 256 RGB PNGs. Normal
images vary in pattern phase, orientation, position, scale, colour and lighting, so a
raw-pixel comparison with the mean normal image is far from a perfect detector. Four
defect types (``scratch``, ``hole``, ``contamination``, ``color``) are small (0.1-2.5 % of
the image, about 0.5 % typically) and plain to see, yet mostly within the range of
brightness and colour that normal images already show. Every ground-truth mask is
exactly the set of pixels where the defective image differs from the clean rendering of
the same sample (:func:`render_sample` with ``defect=None``).

Per category: 80 normal training images; a test split of 25 normal images and 8 images
per defect type. Everything is a pure function of fixed seeds, so two generations give
identical files. :func:`ensure_synthetic` writes the whole dataset into a temporary
folder and renames it into place, so concurrent first uses never see a partial dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kdsearch.catalog import CATALOG
from kdsearch.data.synthetic_defects import PAINTERS
from kdsearch.data.synthetic_scenes import RENDERERS, SIZE
from kdsearch.errors import UserError

SYNTHETIC_VERSION = 2
"""Bump when the images change; the default folder name carries it."""

SYNTHETIC_DIRNAME = f"synthetic-v{SYNTHETIC_VERSION}"
"""Folder under the cache directory that holds the generated dataset."""

MARKER = "kdsearch-synthetic.json"
"""File written last into a complete dataset; its presence means the dataset is usable."""

_FACTS = CATALOG["synthetic"]

CATEGORY_KINDS: dict[str, str] = {c: _FACTS.kind(c) for c in _FACTS.published_categories}
"""Category name to ``"texture"`` or ``"object"``."""

CATEGORIES: tuple[str, ...] = tuple(CATEGORY_KINDS)
DEFECT_TYPES: tuple[str, ...] = tuple(PAINTERS)

N_TRAIN = 80
N_TEST_GOOD = 25
N_TEST_PER_DEFECT = 8
MIN_CHANGE = 8
"""Smallest change, in grey levels, of any pixel inside a defect (so the mask is visible)."""


@dataclass(frozen=True)
class SyntheticItem:
    """One planned image of the synthetic dataset.

    Attributes:
        category: Category name.
        split: ``"train"`` or ``"test"``.
        defect: ``"good"`` or a defect type.
        index: Number within (split, defect), also the file stem.
        seed: Seed of everything random about this image.
    """

    category: str
    split: str
    defect: str
    index: int
    seed: int

    @property
    def image_relpath(self) -> str:
        """Path of the image, relative to the dataset root."""
        return f"{self.category}/{self.split}/{self.defect}/{self.index:03d}.png"

    @property
    def mask_relpath(self) -> str | None:
        """Path of the ground-truth mask relative to the dataset root; None for normal images."""
        if self.defect == "good":
            return None
        return f"{self.category}/ground_truth/{self.defect}/{self.index:03d}_mask.png"


def _seed(*parts: object) -> int:
    text = "/".join(["kdsearch-synthetic", str(SYNTHETIC_VERSION), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _check_category(category: str) -> None:
    if category not in CATEGORY_KINDS:
        raise UserError(
            f"unknown synthetic category {category!r}; choose one of {', '.join(CATEGORIES)}"
        )


def plan_category(category: str) -> list[SyntheticItem]:
    """Every image of ``category``, in the order they are generated."""
    _check_category(category)
    groups = [("train", "good", N_TRAIN), ("test", "good", N_TEST_GOOD)]
    groups += [("test", defect, N_TEST_PER_DEFECT) for defect in DEFECT_TYPES]
    return [
        SyntheticItem(category, split, defect, i, _seed(category, split, defect, i))
        for split, defect, count in groups
        for i in range(count)
    ]


def render_sample(category: str, seed: int, defect: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one sample.

    Args:
        category: Synthetic category name.
        seed: Sample seed (see :func:`plan_category`).
        defect: A defect type, or None (or ``"good"``) for the defect-free rendering.
            The same seed with and without a defect gives images that differ exactly
            on the returned mask.

    Returns:
        ``(image, mask)``: uint8 (256, 256, 3) RGB and bool (256, 256).
    """
    _check_category(category)
    scene_seq, defect_seq = np.random.SeedSequence(seed).spawn(2)
    scene = RENDERERS[category](np.random.default_rng(scene_seq))
    clean = scene.finish()
    if defect is None or defect == "good":
        return clean, np.zeros((SIZE, SIZE), dtype=bool)
    if defect not in PAINTERS:
        raise ValueError(f"unknown synthetic defect {defect!r}; expected one of {DEFECT_TYPES}")
    painted, region = PAINTERS[defect](scene, np.random.default_rng(defect_seq))
    ys, xs = np.nonzero(region)
    box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
    inside = region[box][..., None]
    lit = painted[box] * scene.gain[box] + scene.noise[box]
    patch = np.clip(np.rint(lit), 0, 255).astype(np.int16)
    ref = clean[box].astype(np.int16)
    weak = inside & (np.abs(patch - ref).max(axis=-1, keepdims=True) < MIN_CHANGE)
    push = np.where(ref.mean(axis=-1, keepdims=True) > 127, -MIN_CHANGE, MIN_CHANGE)
    patch = np.where(inside, np.where(weak, ref + push, patch), ref)
    image = clean.copy()
    image[box] = np.clip(patch, 0, 255).astype(np.uint8)
    return image, region


# Fast lossless PNG: light deflate, Huffman-only, one fixed row filter (3x faster to
# encode than OpenCV's default for these noisy images, at about the same size).
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array, _PNG_PARAMS):
        raise OSError(f"could not write {path}")


def write_category(root: str | Path, category: str) -> None:
    """Generate every image and mask of ``category`` under ``root`` (MVTec AD layout)."""
    root = Path(root)
    for item in plan_category(category):
        image, mask = render_sample(category, item.seed, item.defect)
        _write_png(root / item.image_relpath, image)
        if item.mask_relpath is not None:
            _write_png(root / item.mask_relpath, mask.astype(np.uint8) * 255)


def generate_synthetic(root: str | Path) -> Path:
    """Generate the whole dataset into ``root`` (created if needed) and write its marker last."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:
        write_category(root, category)
    info = {"version": SYNTHETIC_VERSION, "categories": CATEGORY_KINDS, "defects": list(DEFECT_TYPES),
            "size": SIZE, "train": N_TRAIN, "test_good": N_TEST_GOOD, "test_per_defect": N_TEST_PER_DEFECT}
    (root / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    return root


def ensure_synthetic(root: str | Path) -> Path:
    """Return ``root`` holding the complete synthetic dataset, generating it atomically if absent.

    Generation goes to a temporary sibling folder that is renamed to ``root`` when
    complete; if another process finished first, its copy is kept and ours discarded.

    Raises:
        UserError: ``root`` exists with other content, or cannot be created.
    """
    root = Path(root).expanduser()
    if (root / MARKER).is_file():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(
            f"{root} exists but is not a kdsearch synthetic dataset (no {MARKER} in it); "
            "remove it, or point --data-root / the cache directory somewhere else"
        )
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    except OSError as exc:
        raise UserError(
            f"cannot create the synthetic dataset at {root}: {exc}; set KDSEARCH_CACHE "
            "(or pass a cache directory) to a writable folder"
        ) from exc
    try:
        generate_synthetic(tmp)
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

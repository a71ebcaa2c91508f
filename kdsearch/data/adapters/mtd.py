"""Magnetic Tile Defects (Huang et al., The Visual Computer 2020; abin24/Magnetic-tile-defect-datasets.).

Supported layout, as published::

    <root>/MT_Free/Imgs/<name>.jpg               defect-free tiles (a <name>.png mask beside each)
    <root>/MT_<Defect>/Imgs/<name>.jpg           Blowhole, Break, Crack, Fray, Uneven
    <root>/MT_<Defect>/Imgs/<name>.png           the mask of <name>.jpg

There is no official train/test split. kdsearch fixes one: a seeded permutation
(seed :data:`SPLIT_SEED`) of the sorted ``MT_Free`` images puts :data:`TRAIN_FRACTION`
(80 %, as many papers do) into training and the rest, with every defective image, into
the test split. The split does not depend on ``split_seed``, so the test set is the same
in every run. One category, ``mtd``, a texture. Images vary in size and are squashed to
S x S.

Published counts (Huang et al., The Visual Computer 2020): 1344 images, 952 in
``MT_Free`` and 392 defective (Blowhole 115, Break 85, Crack 57, Fray 32, Uneven 103).
With the 80 % split that is 762 training and 190 + 392 = 582 test images. The reader
checks the defect-free and defective totals it finds; MRKD (Sec. 4.1) prints 925
defect-free images, most likely a transposition of 952.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdsearch.catalog import CATALOG
from kdsearch.data.registry import DatasetAdapter, check_published_counts, register_dataset
from kdsearch.data.samples import Manifest, Sample, list_images, relative_name
from kdsearch.errors import UserError

TRAIN_FRACTION = 0.8
"""Share of the defect-free tiles used for training."""
SPLIT_SEED = 0
"""Seed of the fixed train/test split of the defect-free tiles."""
PUBLISHED_COUNTS = CATALOG["mtd"].published_counts["mtd"]
"""Image totals of the published dataset (its own split does not exist)."""

_LAYOUT = (
    "the Magnetic Tile Defects layout <root>/MT_Free/Imgs/*.jpg and "
    "<root>/MT_<Defect>/Imgs/<name>.jpg with <name>.png masks"
)
_JPEG = (".jpg", ".jpeg")


@register_dataset
class MagneticTileDefects(DatasetAdapter):
    """MT Defects: ``MT_*`` class folders, a fixed seeded split of ``MT_Free``."""

    facts = CATALOG["mtd"]

    def published_train_count(self, category: str) -> int | None:
        return int(round(TRAIN_FRACTION * PUBLISHED_COUNTS["defect-free images"]))

    def manifest(self, root: Path, category: str) -> Manifest:
        """Train: 80 % of ``MT_Free``; test: the other 20 % and every defective tile."""
        self.check_category(category)
        free_dir = root / "MT_Free" / "Imgs"
        free = list_images(free_dir, _JPEG)
        if len(free) < 2:
            raise UserError(f"need at least 2 images in {free_dir}, found {len(free)}; expected {_LAYOUT}")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(free))
        n_train = min(max(1, int(round(TRAIN_FRACTION * len(free)))), len(free) - 1)
        train_idx, test_idx = sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist())
        train = tuple(Sample(free[i], None, 0, "good", relative_name(free[i], root)) for i in train_idx)
        test = [Sample(free[i], None, 0, "good", relative_name(free[i], root)) for i in test_idx]
        defect_dirs = sorted(d for d in root.glob("MT_*") if d.is_dir() and d.name != "MT_Free")
        if not defect_dirs:
            raise UserError(f"no MT_<Defect> folders in {root}; expected {_LAYOUT}")
        for d in defect_dirs:
            defect = d.name[3:].lower()
            for p in list_images(d / "Imgs", _JPEG):
                mask = p.with_suffix(".png")
                if not mask.is_file():
                    raise UserError(f"defective tile {p} has no mask: expected {mask}; restore it (expected {_LAYOUT})")
                test.append(Sample(p, mask, 1, defect, relative_name(p, root)))
        found = {"defect-free images": len(free), "defective images": len(test) - len(test_idx)}
        check_published_counts(self, category, root, found, self.published_counts(category), self.facts.counts_source)
        return Manifest(root=root, train=train, test=tuple(test))

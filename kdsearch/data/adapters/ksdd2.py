"""KolektorSDD2 (Bozic et al., Computers in Industry 2021).

Supported layout (the authors' loader ``data/input_ksdd2.py`` in
vicoslab/mixed-segdec-net-comind2021)::

    <root>/train/<id>.png    <root>/train/<id>_GT.png
    <root>/test/<id>.png     <root>/test/<id>_GT.png

Every image has a ground-truth file; a sample is anomalous iff its ground truth has any
positive pixel (defect type ``defect``). Only the normal samples of ``train/`` are used
for training; ``test/`` is the test split as published. One category, ``ksdd2``,
treated as a texture. Images are about 230 x 630 px and are squashed to S x S like
every other input.

Published counts (Bozic et al., Computers in Industry 2021): 3335 images,
``train/`` 2331 (2085 normal + 246 defective), ``test/`` 1004 (894 normal + 110
defective). The image files found in each folder are checked against 2331 and 1004.
"""
from __future__ import annotations

from pathlib import Path

from kdsearch.catalog import CATALOG, split_counts
from kdsearch.data.registry import DatasetAdapter, check_published_counts, register_dataset
from kdsearch.data.samples import Manifest, Sample, labelled_samples, list_images
from kdsearch.errors import UserError

PUBLISHED_COUNTS = CATALOG["ksdd2"].published_counts["ksdd2"]
"""Image files of ``train/`` and ``test/`` in the published dataset (ground truths not counted)."""
_LAYOUT = "the KolektorSDD2 layout <root>/train/<id>.png with <root>/train/<id>_GT.png, and the same under <root>/test/"


def _split(root: Path, split: str) -> tuple[Sample, ...]:
    folder = root / split
    images = [p for p in list_images(folder) if not p.stem.endswith("_GT")]
    if not images:
        raise UserError(f"no images in {folder}; expected {_LAYOUT}")
    return tuple(labelled_samples(images, lambda p: p.with_name(f"{p.stem}_GT.png"), root, "ground truth", _LAYOUT))


@register_dataset
class KolektorSDD2(DatasetAdapter):
    """KolektorSDD2: flat ``train/`` and ``test/`` folders, labels from the ground truth."""

    facts = CATALOG["ksdd2"]

    def published_train_count(self, category: str) -> int | None:
        return 2085  # the normal images of train/ (the defective ones are not trained on)

    def manifest(self, root: Path, category: str) -> Manifest:
        """Every sample of ``train/`` and ``test/`` (normal training samples are picked after decoding)."""
        self.check_category(category)
        train, test = _split(root, "train"), _split(root, "test")
        found = split_counts(len(train), len(test))
        check_published_counts(self, category, root, found, self.published_counts(category), self.facts.counts_source)
        return Manifest(root=root, train=train, test=test)

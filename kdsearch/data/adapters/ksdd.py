"""KolektorSDD (Tabernik et al., Journal of Intelligent Manufacturing 2020).

Supported layout, as published (one folder per electrical commutator)::

    <root>/kos01/Part0.jpg    <root>/kos01/Part0_label.bmp
    <root>/kos01/Part1.jpg    <root>/kos01/Part1_label.bmp
    ...
    <root>/kos50/Part7.jpg    <root>/kos50/Part7_label.bmp

Every image has a label bitmap; an image is defective iff its bitmap has a positive
pixel (defect type ``defect``), the rule KolektorSDD2 uses too. Images are about
500 x 1250 px and are squashed to S x S like every other input.

Split. The dataset has no train/test folders. Its authors evaluate by 3-fold
cross-validation over the commutators and ship the folds as pickled ``split_*.pyb``
files, which also fix how many defective images a *supervised* model trains on;
kdsearch never unpickles them. ADPS (Table III) and the other unsupervised papers do
not say which split they use, so kdsearch keeps the two rules they share with every
MVTec-style benchmark and the authors' part-level folds:

* the 50 parts form three fixed folds, :data:`FOLDS` (17, 17 and 16 parts). They were
  drawn once as ``numpy.random.default_rng(0).permutation`` of 1..50, dealt round robin,
  and are written out as literals so that no library version can move a part;
* fold k's test split is every image of its parts, defect-free and defective;
* the training split is every defect-free image of the other two folds' parts; their
  defective images are dropped after decoding, as KolektorSDD2's training positives are.

Why by part: the images of one commutator show the same physical part under the same
light, so an image-level split would train on near-copies of test surfaces. Why fixed:
every run, seed and method then sees the same test set, as on MVTec AD.

Category ``ksdd`` reads fold 0; ``ksdd_fold1`` and ``ksdd_fold2`` read the others, so the
mean of the three is a full cross-validation in which every image is tested once. Only
``ksdd`` is listed among the categories (sweeps run fold 0 unless a fold is named); all
three are textures. A test fold holds roughly a third of the defective images; how many
exactly depends on which parts are defective, which kdsearch does not read to balance
the folds. The authors' later loader (mixed-segdec-net, ``data/input_ksdd.py``) skips
``kos21/Part7``; kdsearch keeps every image.

Published counts (Tabernik et al. 2020): 50 commutators (``kos01`` ... ``kos50``) and 399
images, 52 defective and 347 defect-free. The reader checks the part folders and images
it finds against 50 and 399.
"""
from __future__ import annotations

import re
from pathlib import Path

from kdsearch.catalog import CATALOG
from kdsearch.data.registry import DatasetAdapter, check_published_counts, register_dataset
from kdsearch.data.samples import Manifest, Sample, labelled_samples, list_images
from kdsearch.errors import UserError

FOLDS: tuple[tuple[int, ...], ...] = (
    (1, 5, 7, 13, 16, 19, 20, 26, 27, 30, 35, 38, 41, 46, 48, 49, 50),
    (2, 3, 6, 8, 9, 18, 22, 23, 24, 25, 31, 32, 36, 42, 43, 44, 45),
    (4, 10, 11, 12, 14, 15, 17, 21, 28, 29, 33, 34, 37, 39, 40, 47),
)
"""Part numbers (``kosNN``) of each cross-validation fold; fold k is tested, the others train."""
_FACTS = CATALOG["ksdd"]
FOLD_CATEGORIES: dict[str, int] = {
    category: fold for fold, category in enumerate((*_FACTS.published_categories, *_FACTS.unlisted_categories))
}
"""Category name -> fold it tests."""
PUBLISHED_COUNTS = _FACTS.published_counts["ksdd"]
"""Part folders and images of the published dataset."""
_PART = re.compile(r"kos(\d+)")
_LAYOUT = (
    "the KolektorSDD layout <root>/kos01 ... <root>/kos50, each holding Part<N>.jpg images "
    "with a Part<N>_label.bmp bitmap beside each"
)


def _part_folders(root: Path) -> dict[int, Path]:
    """``{part number: folder}`` of the ``kosNN`` folders directly under ``root``."""
    parts: dict[int, Path] = {}
    for d in sorted(root.iterdir()):
        match = _PART.fullmatch(d.name)
        if not d.is_dir() or match is None:
            continue
        number = int(match.group(1))
        if not 1 <= number <= PUBLISHED_COUNTS["part folders"]:
            raise UserError(
                f"part folder {d} is not one of kos01 ... kos50; move it out of {root} "
                f"(expected {_LAYOUT})"
            )
        parts[number] = d
    return parts


def _no_parts_error(root: Path) -> UserError:
    """The error for a root without part folders, pointing at a sub-folder that has them."""
    nested = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            if any(_PART.fullmatch(c.name) and c.is_dir() for c in d.iterdir()):
                nested.append(d)
        except OSError:  # an unreadable sub-folder is no hint
            continue
    hint = f"; they are in {nested[0]}, pass that folder as --data-root" if nested else ""
    return UserError(f"no KolektorSDD part folders (kos01 ... kos50) in {root}{hint}; expected {_LAYOUT}")


def _part_samples(folder: Path, root: Path) -> list[Sample]:
    """Every image of one part with its label bitmap; the label decides normal or defective."""
    images = [p for p in list_images(folder) if not p.stem.endswith("_label")]
    if not images:
        raise UserError(f"no images in part folder {folder}; expected {_LAYOUT}")
    return labelled_samples(images, lambda p: p.with_name(f"{p.stem}_label.bmp"), root, "label bitmap", _LAYOUT)


@register_dataset
class KolektorSDD(DatasetAdapter):
    """KolektorSDD: ``kosNN`` part folders, a fixed part-level 3-fold split, labels from the bitmaps."""

    facts = _FACTS

    def check_category(self, category: str) -> None:
        """Accept ``ksdd`` (fold 0) and the fold names ``ksdd_fold1``, ``ksdd_fold2``."""
        if category not in FOLD_CATEGORIES:
            raise UserError(
                f"unknown category {category!r} for dataset {self.name!r}; choose one of "
                f"{', '.join(FOLD_CATEGORIES)} (test fold 0, 1 or 2)"
            )

    def manifest(self, root: Path, category: str) -> Manifest:
        """Test: every image of the fold's parts; train: the other parts (normal ones kept after decoding)."""
        self.check_category(category)
        fold = FOLD_CATEGORIES[category]
        parts = _part_folders(root)
        if not parts:
            raise _no_parts_error(root)
        samples = {number: _part_samples(folder, root) for number, folder in parts.items()}
        found = {"part folders": len(parts), "images": sum(len(s) for s in samples.values())}
        check_published_counts(self, category, root, found, self.published_counts(category), self.facts.counts_source)
        test_parts = set(FOLDS[fold])
        train = tuple(s for n in sorted(samples) if n not in test_parts for s in samples[n])
        test = tuple(s for n in sorted(samples) if n in test_parts for s in samples[n])
        for split, chosen in (("test", test), ("training", train)):
            if not chosen:
                others = (n for f in FOLDS for n in f if n not in test_parts)
                wanted = sorted(test_parts) if split == "test" else sorted(others)
                raise UserError(
                    f"the {split} split of {category!r} (test fold {fold}) is empty: none of its parts "
                    f"{', '.join(f'kos{n:02d}' for n in wanted)} is under {root}; restore them "
                    f"(expected {_LAYOUT})"
                )
        return Manifest(root=root, train=train, test=test)

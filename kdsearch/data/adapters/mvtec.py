"""MVTec AD, and the base of every adapter that reads an MVTec-like folder layout.

Supported layout (Bergmann et al., CVPR 2019; as read by anomalib's ``mvtecad.py``)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Textures: carpet, grid, leather, tile, wood; the ten others are objects.

Published counts (Bergmann et al., CVPR 2019, Table 1; 3629 training and 1725 test
images in all), checked against the files found (see
:func:`kdsearch.data.registry.check_published_counts`)::

    category     train  test (good + defective)
    bottle         209    83 (20 + 63)
    cable          224   150 (58 + 92)
    capsule        219   132 (23 + 109)
    carpet         280   117 (28 + 89)
    grid           264    78 (21 + 57)
    hazelnut       391   110 (40 + 70)
    leather        245   124 (32 + 92)
    metal_nut      220   115 (22 + 93)
    pill           267   167 (26 + 141)
    screw          320   160 (41 + 119)
    tile           230   117 (33 + 84)
    toothbrush      60    42 (12 + 30)
    transistor     213   100 (60 + 40)
    wood           247    79 (19 + 60)
    zipper         240   151 (32 + 119)
"""
from __future__ import annotations

from pathlib import Path

from kdsearch.catalog import CATALOG, split_counts
from kdsearch.data.folder import FolderLayout, folder_categories, read_folder_category
from kdsearch.data.registry import DatasetAdapter, check_published_counts, register_dataset
from kdsearch.data.samples import Manifest


class FolderDataset(DatasetAdapter):
    """An adapter whose files follow :class:`FolderLayout`.

    Attributes:
        layout: The layout's names.
    """

    layout: FolderLayout = FolderLayout(title="MVTec AD")

    def categories(self, root: Path | None) -> list[str]:
        """Categories present under ``root`` (any folder with ``train/<normal>``), or the published list."""
        if root is None:
            return list(self.published_categories)
        return folder_categories(root, self.layout)

    def describe_layout(self) -> str:
        return self.layout.describe()

    def published_train_count(self, category: str) -> int | None:
        published = self.published_counts(category)
        return published["train images"] if published else None

    def manifest(self, root: Path, category: str) -> Manifest:
        """Read ``<root>/<category>`` with this adapter's layout; warn if its counts differ from the published ones."""
        manifest = read_folder_category(root, category, self.layout)
        check_published_counts(
            self, category, root, split_counts(len(manifest.train), len(manifest.test)),
            self.published_counts(category), self.facts.counts_source,
        )
        return manifest


@register_dataset
class MVTecAD(FolderDataset):
    """MVTec AD: 15 categories, masks ``ground_truth/<defect>/<stem>_mask.png``."""

    facts = CATALOG["mvtec"]
    layout = FolderLayout(title=facts.title)

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

from collections.abc import Mapping
from pathlib import Path

from kdsearch.data.folder import FolderLayout, folder_categories, read_folder_category
from kdsearch.data.registry import DatasetAdapter, check_published_counts, register_dataset
from kdsearch.data.samples import Manifest


def split_counts(train: int, test: int) -> dict[str, int]:
    """Train and test image counts under the keys every folder dataset's check uses."""
    return {"train images": train, "test images": test}


class FolderDataset(DatasetAdapter):
    """An adapter whose files follow :class:`FolderLayout`.

    Attributes:
        layout: The layout's names.
        published_counts: ``{category: (train images, test images)}`` of the published
            dataset; a category missing here is not checked.
        counts_source: Where ``published_counts`` come from, for the warning.
    """

    layout: FolderLayout = FolderLayout(title="MVTec AD")
    published_counts: Mapping[str, tuple[int, int]] = {}
    counts_source: str = ""

    def categories(self, root: Path | None) -> list[str]:
        """Categories present under ``root`` (any folder with ``train/<normal>``), or the published list."""
        if root is None:
            return list(self.published_categories)
        return folder_categories(root, self.layout)

    def published_train_count(self, category: str) -> int | None:
        published = self.published_counts.get(category)
        return published[0] if published else None

    def manifest(self, root: Path, category: str) -> Manifest:
        """Read ``<root>/<category>`` with this adapter's layout; warn if its counts differ from the published ones."""
        manifest = read_folder_category(root, category, self.layout)
        published = self.published_counts.get(category)
        check_published_counts(
            self, category, root, split_counts(len(manifest.train), len(manifest.test)),
            split_counts(*published) if published else None, self.counts_source,
        )
        return manifest


@register_dataset
class MVTecAD(FolderDataset):
    """MVTec AD: 15 categories, masks ``ground_truth/<defect>/<stem>_mask.png``."""

    name = "mvtec"
    title = "MVTec AD"
    published_categories = (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    )
    textures = frozenset({"carpet", "grid", "leather", "tile", "wood"})
    layout = FolderLayout(title="MVTec AD")
    published_counts = {
        "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "carpet": (280, 117),
        "grid": (264, 78), "hazelnut": (391, 110), "leather": (245, 124), "metal_nut": (220, 115),
        "pill": (267, 167), "screw": (320, 160), "tile": (230, 117), "toothbrush": (60, 42),
        "transistor": (213, 100), "wood": (247, 79), "zipper": (240, 151),
    }
    counts_source = "Bergmann et al., CVPR 2019, Table 1"

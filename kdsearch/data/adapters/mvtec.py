"""MVTec AD, and the base of every adapter that reads an MVTec-like folder layout.

Supported layout (Bergmann et al., CVPR 2019; as read by anomalib's ``mvtecad.py``)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Textures: carpet, grid, leather, tile, wood; the ten others are objects.
"""
from __future__ import annotations

from pathlib import Path

from kdsearch.data.folder import FolderLayout, folder_categories, read_folder_category
from kdsearch.data.registry import DatasetAdapter, register_dataset
from kdsearch.data.samples import Manifest


class FolderDataset(DatasetAdapter):
    """An adapter whose files follow :class:`FolderLayout`."""

    layout: FolderLayout = FolderLayout(title="MVTec AD")

    def categories(self, root: Path | None) -> list[str]:
        """Categories present under ``root`` (any folder with ``train/<normal>``), or the published list."""
        if root is None:
            return list(self.published_categories)
        return folder_categories(root, self.layout)

    def manifest(self, root: Path, category: str) -> Manifest:
        """Read ``<root>/<category>`` with this adapter's layout."""
        return read_folder_category(root, category, self.layout)


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

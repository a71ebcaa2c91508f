"""MPDD (Metal Parts Defect Detection, Jezek et al., ICUMT 2021).

Same layout as MVTec AD, masks named ``<stem>_mask.png`` (checked against anomalib's
``mpdd.py`` and public MPDD loaders)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

All six categories are objects.
"""
from __future__ import annotations

from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset


@register_dataset
class MPDD(FolderDataset):
    """MPDD: six metal-part categories in the MVTec AD layout."""

    name = "mpdd"
    title = "MPDD"
    published_categories = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
    layout = FolderLayout(title="MPDD")

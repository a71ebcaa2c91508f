"""MPDD (Metal Parts Defect Detection, Jezek et al., ICUMT 2021).

Same layout as MVTec AD, masks named ``<stem>_mask.png`` (checked against anomalib's
``mpdd.py`` and public MPDD loaders)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

All six categories are objects.

Published counts (Jezek et al., ICUMT 2021, dataset statistics; 888 training and 458 test images in
all, the totals DMDD also gives in Sec. 4.1), checked against the files found::

    category       train  test (good + defective)
    bracket_black    289    79 (32 + 47)
    bracket_brown    185    77 (26 + 51)
    bracket_white    110    60 (30 + 30)
    connector        128    44 (30 + 14)
    metal_plate       54    97 (26 + 71)
    tubes            122   101 (32 + 69)
"""
from __future__ import annotations

from kdsearch.catalog import CATALOG
from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset


@register_dataset
class MPDD(FolderDataset):
    """MPDD: six metal-part categories in the MVTec AD layout."""

    facts = CATALOG["mpdd"]
    layout = FolderLayout(title=facts.title)

"""BTAD (beanTech Anomaly Detection, Mishra et al., ICIP 2021).

Supported layout (anomalib's ``btech.py`` and the public BTAD loaders)::

    <root>/<01|02|03>/train/ok/*.bmp|*.png        normal training images
    <root>/<01|02|03>/test/ok/*                   normal test images
    <root>/<01|02|03>/test/ko/*                   anomalous test images
    <root>/<01|02|03>/ground_truth/ko/<stem>.png  masks (.bmp in some copies of product 03)

Image suffixes differ per product (01, 03: bmp; 02: png); a mask is ``<stem>.png`` or
``<stem>.bmp``, whichever exists. The normal class is reported as ``good`` and the single
defect class as ``ko``. All three products are treated as objects.
"""
from __future__ import annotations

from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset


@register_dataset
class BTAD(FolderDataset):
    """BTAD: three products, ``ok`` / ``ko`` class folders, un-suffixed masks."""

    name = "btad"
    title = "BTAD"
    published_categories = ("01", "02", "03")
    layout = FolderLayout(title="BTAD", normal_dir="ok", mask_names=("{stem}.png", "{stem}.bmp"))

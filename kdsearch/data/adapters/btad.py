"""BTAD (beanTech Anomaly Detection, Mishra et al., ICIP 2021).

Supported layout (anomalib's ``btech.py`` and the public BTAD loaders)::

    <root>/<01|02|03>/train/ok/*.bmp|*.png        normal training images
    <root>/<01|02|03>/test/ok/*                   normal test images
    <root>/<01|02|03>/test/ko/*                   anomalous test images
    <root>/<01|02|03>/ground_truth/ko/<stem>.png  masks (.bmp in some copies of product 03)

Image suffixes differ per product (01, 03: bmp; 02: png); a mask is ``<stem>.png`` or
``<stem>.bmp``, whichever exists. The normal class is reported as ``good`` and the single
defect class as ``ko``. All three products are treated as objects.

Published counts, as distributed in ``btad.zip`` (2540 images: 1799 training, 741 test,
290 of them anomalous; DMDD Sec. 4.1 also counts 2540), checked against the files found::

    product  train  test (ok + ko)
    01         400    70 (21 + 49)
    02         399   230 (30 + 200)
    03        1000   441 (400 + 41)

The VT-ADL paper (Mishra et al., ISIE 2021) announces 2830 images, and MRKD repeats
that number; the per-product counts above are those of the released archive.
"""
from __future__ import annotations

from kdsearch.catalog import CATALOG
from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset


@register_dataset
class BTAD(FolderDataset):
    """BTAD: three products, ``ok`` / ``ko`` class folders, un-suffixed masks."""

    facts = CATALOG["btad"]
    layout = FolderLayout(title=facts.title, normal_dir="ok", mask_names=("{stem}.png", "{stem}.bmp"))

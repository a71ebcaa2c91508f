"""MVTec 3D-AD (Bergmann et al., VISAPP 2022), RGB images only.

Supported layout (anomalib's ``depth/mvtec_3d.py``)::

    <root>/<category>/train/good/rgb/*.png
    <root>/<category>/test/good/rgb/*.png
    <root>/<category>/test/<defect>/rgb/*.png
    <root>/<category>/test/<defect>/gt/<stem>.png        masks, same stem as the image

The ``xyz/`` point clouds are ignored, and so is the ``validation/`` folder (more normal
images): kdsearch draws its own validation share from ``train/``, as for every dataset.
All ten categories are objects.

Published counts (Bergmann et al., VISAPP 2022, Table 1; 2656 training, 294 validation
and 1197 test images in all), checked against the RGB files found; ``validation/`` is
not counted::

    category     train  test (good + defective)
    bagel          244   110 (22 + 88)
    cable_gland    223   108 (21 + 87)
    carrot         286   159 (27 + 132)
    cookie         210   131 (28 + 103)
    dowel          288   130 (26 + 104)
    foam           236   100 (20 + 80)
    peach          361   132 (26 + 106)
    potato         300   114 (22 + 92)
    rope           298   101 (32 + 69)
    tire           210   112 (25 + 87)
"""
from __future__ import annotations

from kdsearch.catalog import CATALOG
from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset


@register_dataset
class MVTec3DAD(FolderDataset):
    """MVTec 3D-AD: RGB images under ``rgb/``, masks under the sibling ``gt/``."""

    facts = CATALOG["mvtec3d"]
    layout = FolderLayout(
        title=facts.title, image_subdir="rgb", mask_dir="test/{defect}/gt", mask_names=("{stem}.png",)
    )

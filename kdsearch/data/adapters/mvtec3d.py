"""MVTec 3D-AD (Bergmann et al., VISAPP 2022), RGB images only.

Supported layout (anomalib's ``depth/mvtec_3d.py``)::

    <root>/<category>/train/good/rgb/*.png
    <root>/<category>/test/good/rgb/*.png
    <root>/<category>/test/<defect>/rgb/*.png
    <root>/<category>/test/<defect>/gt/<stem>.png        masks, same stem as the image

The ``xyz/`` point clouds are ignored, and so is the ``validation/`` folder (more normal
images): kdsearch draws its own validation share from ``train/``, as for every dataset.
All ten categories are objects.
"""
from __future__ import annotations

from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset


@register_dataset
class MVTec3DAD(FolderDataset):
    """MVTec 3D-AD: RGB images under ``rgb/``, masks under the sibling ``gt/``."""

    name = "mvtec3d"
    title = "MVTec 3D-AD"
    published_categories = (
        "bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire",
    )
    layout = FolderLayout(
        title="MVTec 3D-AD", image_subdir="rgb", mask_dir="test/{defect}/gt", mask_names=("{stem}.png",)
    )

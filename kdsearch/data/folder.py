"""The one reader of the MVTec AD folder layout, parameterised for its close relatives.

MVTec AD lays each category out as::

    <root>/<category>/train/good/*.png               normal training images
    <root>/<category>/test/good/*.png                normal test images (no masks)
    <root>/<category>/test/<defect>/*.png            anomalous test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

MPDD uses it unchanged; BTAD, MVTec 3D-AD and the built-in synthetic dataset differ only
in names that :class:`FolderLayout` captures (normal folder, an image sub-folder, where
masks live and how they are named). Problems raise :class:`UserError` naming the path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdsearch.data.samples import Manifest, Sample, list_images, relative_name
from kdsearch.errors import UserError


@dataclass(frozen=True)
class FolderLayout:
    """Names that distinguish one MVTec-like layout from another.

    Attributes:
        title: Dataset name for messages, e.g. ``"MVTec AD"``.
        normal_dir: Folder of normal images under ``train/`` and ``test/``.
        image_subdir: Extra folder between a class folder and its images (MVTec 3D-AD:
            ``"rgb"``), or None.
        mask_dir: Mask folder relative to the category folder; ``{defect}`` is replaced.
        mask_names: Candidate mask file names, tried in order; ``{stem}`` is replaced by
            the image's file name without its suffix.
    """

    title: str
    normal_dir: str = "good"
    image_subdir: str | None = None
    mask_dir: str = "ground_truth/{defect}"
    mask_names: tuple[str, ...] = ("{stem}_mask.png",)

    def image_dir(self, category_dir: Path, split: str, cls: str) -> Path:
        """Folder holding the images of one class (``good``, a defect) of one split."""
        folder = category_dir / split / cls
        return folder / self.image_subdir if self.image_subdir else folder

    def describe(self) -> str:
        """The layout in one line, for error messages."""
        sub = f"/{self.image_subdir}" if self.image_subdir else ""
        mask = f"<root>/<category>/{self.mask_dir.format(defect='<defect>')}/{self.mask_names[0].format(stem='<name>')}"
        return (
            f"the {self.title} layout <root>/<category>/train/{self.normal_dir}{sub}/*.png, "
            f"<root>/<category>/test/<defect>{sub}/*.png, masks {mask}"
        )


def folder_categories(root: Path, layout: FolderLayout) -> list[str]:
    """Category folders under ``root`` that have a ``train/<normal_dir>`` folder, sorted."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "train" / layout.normal_dir).is_dir())


def _find_mask(category_dir: Path, defect: str, image: Path, layout: FolderLayout) -> Path:
    folder = category_dir / layout.mask_dir.format(defect=defect)
    candidates = [folder / name.format(stem=image.stem) for name in layout.mask_names]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    expected = " or ".join(str(c) for c in candidates)
    raise UserError(
        f"anomalous test image {image} has no ground-truth mask: expected {expected}; "
        f"restore the mask or the dataset's original layout ({layout.describe()})"
    )


def read_folder_category(root: Path, category: str, layout: FolderLayout) -> Manifest:
    """List the train and test files of ``category`` in an MVTec-like layout.

    Args:
        root: Dataset root holding one folder per category.
        category: Category folder name.
        layout: The layout's names.

    Returns:
        The category's manifest; test samples ordered normal first, then defect folders
        alphabetically, each sorted by file name.

    Raises:
        UserError: Unknown category, no training or test images, or a missing mask.
    """
    category_dir = root / category
    if not category_dir.is_dir():
        found = folder_categories(root, layout)
        raise UserError(
            f"unknown category {category!r}: {category_dir} does not exist; "
            f"categories found in {root}: {', '.join(found) if found else 'none'} "
            f"(expected {layout.describe()})"
        )
    train_dir = layout.image_dir(category_dir, "train", layout.normal_dir)
    train_images = list_images(train_dir)
    if not train_images:
        raise UserError(f"no images in {train_dir}; expected {layout.describe()}")
    train = tuple(Sample(p, None, 0, "good", relative_name(p, root)) for p in train_images)

    test_root = category_dir / "test"
    classes = sorted(d.name for d in test_root.iterdir() if d.is_dir()) if test_root.is_dir() else []
    classes.sort(key=lambda c: c != layout.normal_dir)
    test: list[Sample] = []
    for cls in classes:
        normal = cls == layout.normal_dir
        for p in list_images(layout.image_dir(category_dir, "test", cls)):
            mask = None if normal else _find_mask(category_dir, cls, p, layout)
            test.append(Sample(p, mask, 0 if normal else 1, "good" if normal else cls, relative_name(p, root)))
    if not test:
        raise UserError(f"no test images under {test_root}; expected {layout.describe()}")
    return Manifest(root=root, train=train, test=tuple(test))

"""What an adapter hands to the loader: the files of a category, before decoding."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdsearch.data.decode import IMAGE_SUFFIXES
from kdsearch.errors import UserError


@dataclass(frozen=True)
class Sample:
    """One image file and what is known about it before decoding.

    Attributes:
        image: Path of the image file.
        mask: Path of its ground-truth mask, or None (normal image without a mask file).
        label: 0 normal, 1 anomalous, or None when the label is whether ``mask`` has any
            positive pixel (KolektorSDD2).
        defect_type: Defect type of an anomalous sample (``"good"`` for normal ones).
        name: Path relative to the data root, with ``/`` separators.
    """

    image: Path
    mask: Path | None
    label: int | None
    defect_type: str
    name: str


@dataclass(frozen=True)
class Manifest:
    """All files of one category.

    Attributes:
        root: The data root the names are relative to.
        train: Training samples; only those that turn out normal are kept.
        test: Test samples, in a fixed order.
    """

    root: Path
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]

    def files(self) -> list[Path]:
        """Every image and mask file the category reads."""
        out: list[Path] = []
        for s in (*self.train, *self.test):
            out.append(s.image)
            if s.mask is not None:
                out.append(s.mask)
        return out


def list_images(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly in ``folder`` (suffix match ignores case), sorted; [] if no folder."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (the absolute path if outside)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def labelled_samples(images: list[Path], label_of: Callable[[Path], Path], root: Path, what: str,
                     layout: str) -> list[Sample]:
    """Samples of images that each have a label file, the label deciding normal or defective.

    Args:
        images: the image files.
        label_of: the label file of an image.
        root: the dataset root (for the sample names).
        what: what the label file is called in messages ("label bitmap", "ground truth").
        layout: the expected layout, for messages.

    Raises:
        UserError: an image without its label file.
    """
    samples = []
    for path in images:
        label = label_of(path)
        if not label.is_file():
            raise UserError(f"image {path} has no {what}: expected {label}; restore it (expected {layout})")
        samples.append(Sample(path, label, None, "defect", relative_name(path, root)))
    return samples

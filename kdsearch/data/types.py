"""The decoded data a trial works with: :class:`ImageSet` and :class:`CategoryData`."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A split of one category, decoded and resized, as uint8 tensors on the CPU.

    Attributes:
        images: uint8 (N, 3, S, S), RGB.
        masks: bool (N, S, S), True = anomalous pixel (all False for normal images).
        labels: int64 (N,), 0 normal / 1 anomalous.
        defect_types: Defect type per image; ``"good"`` for normal images.
        names: Source path per image, relative to the data root (for logs and W&B).
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    defect_types: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.labels.shape[0] if self.labels.ndim == 1 else -1
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, S, S), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.masks.dtype != torch.bool or tuple(self.masks.shape) != (self.images.shape[0], *self.images.shape[2:]):
            raise ValueError(
                f"masks must be bool (N, S, S) matching images, got {self.masks.dtype} {tuple(self.masks.shape)}"
            )
        if self.labels.dtype != torch.int64 or n != self.images.shape[0]:
            raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.defect_types) != n or len(self.names) != n:
            raise ValueError(
                f"defect_types ({len(self.defect_types)}) and names ({len(self.names)}) must have N={n} entries"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        """Side length S of the (square) images."""
        return int(self.images.shape[-1])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """A new set holding copies of the given rows, in the given order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        picked = idx.tolist()
        return ImageSet(
            images=self.images.index_select(0, idx),
            masks=self.masks.index_select(0, idx),
            labels=self.labels.index_select(0, idx),
            defect_types=tuple(self.defect_types[i] for i in picked),
            names=tuple(self.names[i] for i in picked),
        )


@dataclass(frozen=True, eq=False)
class CategoryData:
    """The three splits of one category of one dataset at one image size.

    Attributes:
        dataset: Dataset name (one of ``DATASETS``).
        category: Category name.
        image_size: Side length S of every image and mask.
        train: Normal training images minus the held-out validation share.
        val_normal: The seeded held-out share of the normal training images; validation
            anomalies are synthesised from these elsewhere.
        test: The dataset's own test split, read once for the final report.
    """

    dataset: str
    category: str
    image_size: int
    train: ImageSet
    val_normal: ImageSet
    test: ImageSet

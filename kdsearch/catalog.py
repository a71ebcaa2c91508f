"""What kdsearch knows of each dataset before reading a file: its name and title, its
published categories, which of them are textures, and the image counts its authors published.

The adapters of :mod:`kdsearch.data.adapters` take these facts from here, and so do
planning (a trial's category kind), result rows and the analysis tables. This module
imports neither torch nor the data layer, so whatever needs only the facts stays light.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from kdsearch.errors import UserError

TEXTURE = "texture"
OBJECT = "object"


def split_counts(train: int, test: int) -> dict[str, int]:
    """Train and test image counts under the keys every folder dataset's check uses."""
    return {"train images": train, "test images": test}


def _train_test_counts(counts: Mapping[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """``{category: (train, test)}`` as per-category :func:`split_counts`."""
    return {category: split_counts(train, test) for category, (train, test) in counts.items()}


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset as published.

    Attributes:
        name: Registry name, the value of ``--dataset``.
        title: Human-readable name for messages.
        published_categories: The categories of the published dataset, in listing order.
        textures: Categories that are textures; every other category is an object.
        fixed_categories: True when the published (and unlisted) categories are the only
            possible ones (single-category and synthetic datasets); otherwise any folder in
            the dataset's layout is a category.
        unlisted_categories: Names accepted as categories but not listed, since a sweep
            should not run them unless asked (KolektorSDD's second and third test folds).
        published_counts: ``{category: {what is counted: count}}`` of the published dataset,
            which a reader compares with what it finds; a category missing here is not checked.
        counts_source: Where ``published_counts`` come from, named in the warning.
    """

    name: str
    title: str
    published_categories: tuple[str, ...]
    textures: frozenset[str] = frozenset()
    fixed_categories: bool = False
    unlisted_categories: tuple[str, ...] = ()
    published_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    counts_source: str = ""

    @property
    def texture_categories(self) -> tuple[str, ...]:
        """The published textures, in listing order."""
        return tuple(c for c in self.published_categories if c in self.textures)

    @property
    def object_categories(self) -> tuple[str, ...]:
        """The published objects, in listing order."""
        return tuple(c for c in self.published_categories if c not in self.textures)

    def accepts(self, category: str) -> bool:
        """Whether ``category`` can name a category of this dataset, before anything is read."""
        return not self.fixed_categories or category in self.published_categories or category in self.unlisted_categories

    def kind(self, category: str) -> str:
        """``"texture"`` or ``"object"``, for a category this dataset accepts."""
        return TEXTURE if category in self.textures else OBJECT

    def published_kind(self, category: str) -> str | None:
        """The kind of a published category; None for any other name, whose kind only its
        own folder could tell."""
        return self.kind(category) if category in self.published_categories else None


_MVTEC = DatasetFacts(
    name="mvtec",
    title="MVTec AD",
    published_categories=(
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    ),
    textures=frozenset({"carpet", "grid", "leather", "tile", "wood"}),
    published_counts=_train_test_counts({
        "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "carpet": (280, 117),
        "grid": (264, 78), "hazelnut": (391, 110), "leather": (245, 124), "metal_nut": (220, 115),
        "pill": (267, 167), "screw": (320, 160), "tile": (230, 117), "toothbrush": (60, 42),
        "transistor": (213, 100), "wood": (247, 79), "zipper": (240, 151),
    }),
    counts_source="Bergmann et al., CVPR 2019, Table 1",
)

_MPDD = DatasetFacts(
    name="mpdd",
    title="MPDD",
    published_categories=("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
    published_counts=_train_test_counts({
        "bracket_black": (289, 79), "bracket_brown": (185, 77), "bracket_white": (110, 60),
        "connector": (128, 44), "metal_plate": (54, 97), "tubes": (122, 101),
    }),
    counts_source="Jezek et al., ICUMT 2021",
)

_BTAD = DatasetFacts(
    name="btad",
    title="BTAD",
    published_categories=("01", "02", "03"),
    published_counts=_train_test_counts({"01": (400, 70), "02": (399, 230), "03": (1000, 441)}),
    counts_source="the released BTAD archive (Mishra et al., ISIE 2021)",
)

_MVTEC3D = DatasetFacts(
    name="mvtec3d",
    title="MVTec 3D-AD",
    published_categories=(
        "bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire",
    ),
    published_counts=_train_test_counts({
        "bagel": (244, 110), "cable_gland": (223, 108), "carrot": (286, 159), "cookie": (210, 131),
        "dowel": (288, 130), "foam": (236, 100), "peach": (361, 132), "potato": (300, 114),
        "rope": (298, 101), "tire": (210, 112),
    }),
    counts_source="Bergmann et al., VISAPP 2022, Table 1",
)

_KSDD2 = DatasetFacts(
    name="ksdd2",
    title="KolektorSDD2",
    published_categories=("ksdd2",),
    textures=frozenset({"ksdd2"}),
    fixed_categories=True,
    # Image files of train/ and test/ (ground truths not counted).
    published_counts={"ksdd2": split_counts(2331, 1004)},
    counts_source="Bozic et al., Computers in Industry 2021",
)

_MTD = DatasetFacts(
    name="mtd",
    title="Magnetic Tile Defects",
    published_categories=("mtd",),
    textures=frozenset({"mtd"}),
    fixed_categories=True,
    # Totals: the dataset publishes no split of its own.
    published_counts={"mtd": {"defect-free images": 952, "defective images": 392}},
    counts_source="Huang et al., The Visual Computer 2020",
)

# Category i tests fold i; every fold reads the whole dataset, so each checks the same totals.
_KSDD_FOLDS = ("ksdd", "ksdd_fold1", "ksdd_fold2")
_KSDD = DatasetFacts(
    name="ksdd",
    title="KolektorSDD",
    published_categories=_KSDD_FOLDS[:1],
    textures=frozenset(_KSDD_FOLDS),
    fixed_categories=True,
    unlisted_categories=_KSDD_FOLDS[1:],
    published_counts={fold: {"part folders": 50, "images": 399} for fold in _KSDD_FOLDS},
    counts_source="Tabernik et al., J. Intell. Manuf. 2020",
)

_SYNTHETIC = DatasetFacts(
    name="synthetic",
    title="kdsearch synthetic",
    published_categories=("weave", "stone", "washer", "pill"),
    textures=frozenset({"weave", "stone"}),
    fixed_categories=True,
)

CATALOG: Mapping[str, DatasetFacts] = MappingProxyType(
    {facts.name: facts for facts in (_SYNTHETIC, _MVTEC, _MPDD, _BTAD, _KSDD2, _MTD, _MVTEC3D, _KSDD)}
)
"""Every dataset kdsearch reads, by name, the built-in synthetic one first."""

DATASETS: tuple[str, ...] = tuple(CATALOG)
"""Every dataset name kdsearch reads, the built-in synthetic one first."""


def unknown_dataset_error(dataset: str) -> UserError:
    """The error for a dataset name kdsearch does not read."""
    return UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")




def category_kind(dataset: str, category: str) -> str | None:
    """``"texture"`` or ``"object"``; None for an unknown dataset or a category it cannot have."""
    facts = CATALOG.get(dataset)
    if facts is None or not facts.accepts(category):
        return None
    return facts.kind(category)

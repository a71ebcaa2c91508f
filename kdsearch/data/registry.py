"""Registry of dataset adapters: each presents one published dataset as train/test samples.

An adapter is registered with :func:`register_dataset` under its ``name``; the public
:func:`list_categories` dispatches on that name (a category's kind is the catalog's: :func:`kdsearch.catalog.category_kind`).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from kdsearch.catalog import DATASETS as DATASETS  # the registry's names are the catalog's
from kdsearch.catalog import DatasetFacts, unknown_dataset_error
from kdsearch.data.samples import Manifest
from kdsearch.errors import UserError


class DatasetAdapter:
    """Base of the adapters: how to find a dataset's root, categories and files.

    Subclasses set ``facts`` to their dataset's entry in :data:`kdsearch.catalog.CATALOG`
    and implement :meth:`manifest`; the other attributes are copied from ``facts``.

    Attributes:
        facts: The dataset's catalog entry.
        name: Registry name, one of ``DATASETS``.
        title: Human-readable name for messages.
        published_categories: The categories of the published dataset.
        textures: Categories that are textures; every other category is an object.
        fixed_categories: True when ``published_categories`` are the only possible ones
            (single-category and synthetic datasets): any other name is an error before
            anything is read.
    """

    facts: DatasetFacts
    name: str = ""
    title: str = ""
    published_categories: tuple[str, ...] = ()
    textures: frozenset[str] = frozenset()
    fixed_categories: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        facts = cls.__dict__.get("facts")
        if facts is not None:
            cls.name, cls.title = facts.name, facts.title
            cls.published_categories, cls.textures = facts.published_categories, facts.textures
            cls.fixed_categories = facts.fixed_categories

    def resolve_root(self, data_root: str | Path | None, cache_dir: Path) -> Path:
        """The folder to read, checked to exist.

        Raises:
            UserError: No data root given, or it does not exist.
        """
        if data_root is None:
            raise UserError(
                f"dataset {self.name!r} ({self.title}) needs its data root: pass --data-root "
                "pointing at the extracted dataset, or use --dataset synthetic to run on the built-in data"
            )
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise UserError(
                f"data root {root} does not exist or is not a folder; pass --data-root "
                f"pointing at the extracted {self.title} dataset"
            )
        return root.resolve()

    def categories(self, root: Path | None) -> list[str]:
        """Categories found under ``root``, or the published list when ``root`` is None."""
        return list(self.published_categories)

    def describe_layout(self) -> str:
        """The folder layout this adapter reads, for messages."""
        return f"the published {self.title} layout"

    def published_train_count(self, category: str) -> int | None:
        """Normal training images of ``category`` in the published dataset (None when not published)."""
        return None

    def published_counts(self, category: str) -> Mapping[str, int] | None:
        """What the published dataset holds of ``category`` (None when not published)."""
        return self.facts.published_counts.get(category)

    def kind(self, category: str) -> str:
        """``"texture"`` or ``"object"``."""
        self.check_category(category)
        return self.facts.kind(category)

    def check_category(self, category: str) -> None:
        """Raise :class:`UserError` for a category this dataset can never have.

        Folder datasets accept any name here (their categories are whatever folders
        exist, checked when reading); datasets with ``fixed_categories`` accept only
        their published ones.
        """
        if not self.facts.accepts(category):
            raise UserError(
                f"unknown category {category!r} for dataset {self.name!r}; "
                f"choose one of {', '.join(self.published_categories)}"
            )

    def manifest(self, root: Path, category: str) -> Manifest:
        """The files of one category under ``root``."""
        raise NotImplementedError


class PublishedCountWarning(UserWarning):
    """A dataset copy holds other image counts than the published dataset.

    A subclass of its own so that users who knowingly run on a subset can silence it
    (``warnings.filterwarnings("ignore", category=PublishedCountWarning)``).
    """


def check_published_counts(
    adapter: DatasetAdapter,
    category: str,
    root: Path,
    found: Mapping[str, int],
    published: Mapping[str, int] | None,
    source: str,
) -> bool:
    """Warn, once per call, when the counts found on disk differ from the published ones.

    A partial download or a re-split copy still trains and evaluates, but its numbers are
    not comparable with the papers'; the user should know without the run failing.

    Args:
        adapter: The dataset's adapter (its name and title go into the message).
        category: The category read.
        root: The data root, named in the message.
        found: Counts read from disk, keyed by what is counted (e.g. ``"train images"``).
        published: The published counts under the same keys, or None when unknown
            (no check).
        source: Where the published counts come from, e.g. ``"Bergmann et al., CVPR 2019, Table 1"``.

    Returns:
        True when a warning was issued.
    """
    if not published:
        return False
    keys = list(published)
    if all(found.get(k) == published[k] for k in keys):
        return False
    have = " and ".join(f"{found.get(k, 0)} {k}" for k in keys)
    expected = " and ".join(f"{published[k]} {k}" for k in keys)
    warnings.warn(
        f"dataset {adapter.name!r} ({adapter.title}) category {category!r}: found {have} under {root}, "
        f"but the published dataset has {expected} ({source}); results on this copy are not "
        "comparable with published ones - restore the complete dataset, or ignore this warning "
        "if the subset is intended",
        PublishedCountWarning,
        stacklevel=3,
    )
    return True


_REGISTRY: dict[str, DatasetAdapter] = {}

A = TypeVar("A", bound=type[DatasetAdapter])


def register_dataset(cls: A) -> A:
    """Class decorator: instantiate the adapter and register it under ``cls.name``."""
    if cls.name in _REGISTRY:
        warnings.warn(f"dataset adapter {cls.name!r} registered twice; the later one wins", stacklevel=2)
    _REGISTRY[cls.name] = cls()
    return cls


def get_adapter(dataset: str) -> DatasetAdapter:
    """The adapter registered for ``dataset``.

    Raises:
        UserError: Unknown dataset name.
    """
    try:
        return _REGISTRY[dataset]
    except KeyError:
        raise unknown_dataset_error(dataset) from None


def list_categories(dataset: str, data_root: str | Path | None = None) -> list[str]:
    """Categories of ``dataset``.

    Args:
        dataset: One of ``DATASETS``.
        data_root: Where the dataset is. When given, the categories present there are
            listed; when None, the published list (the synthetic dataset needs no root).

    Raises:
        UserError: Unknown dataset, or ``data_root`` given but missing or holding no category.
    """
    adapter = get_adapter(dataset)
    if data_root is None or dataset == "synthetic":
        return adapter.categories(None)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(
            f"data root {root} does not exist or is not a folder; "
            f"pass --data-root pointing at the {adapter.title} dataset"
        )
    found = adapter.categories(root)
    if not found:
        raise UserError(
            f"data root {root} holds no {adapter.title} category: expected {adapter.describe_layout()}; "
            f"pass --data-root pointing at the extracted {adapter.title} dataset"
        )
    return found

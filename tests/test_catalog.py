"""Tests of the dataset catalog: importable without torch, and the one source of every
adapter's categories, textures and published counts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdsearch import catalog
from kdsearch.data import DATASETS, synthetic
from kdsearch.data.registry import get_adapter
from kdsearch.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def test_importing_the_catalog_imports_no_torch() -> None:
    code = ("import sys, kdsearch.catalog; "
            "print(kdsearch.catalog.__file__); print('torch' in sys.modules, 'kdsearch.data' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    where, loaded = run.stdout.strip().splitlines()
    assert Path(where).resolve().is_relative_to(REPO)
    assert loaded == "False False"


def test_the_registry_holds_the_catalog() -> None:
    assert DATASETS == catalog.DATASETS == tuple(catalog.CATALOG)
    assert [get_adapter(name).name for name in catalog.DATASETS] == list(catalog.DATASETS)


@pytest.mark.parametrize("dataset", catalog.DATASETS)
def test_each_adapter_reads_its_facts_from_the_catalog(dataset: str) -> None:
    facts, adapter = catalog.CATALOG[dataset], get_adapter(dataset)
    assert adapter.facts is facts
    assert (adapter.name, adapter.title, adapter.fixed_categories) == (facts.name, facts.title, facts.fixed_categories)
    assert adapter.published_categories == facts.published_categories
    assert adapter.categories(None) == list(facts.published_categories)
    assert adapter.textures == facts.textures
    for category in facts.published_categories:
        assert adapter.published_counts(category) == facts.published_counts.get(category)


@pytest.mark.parametrize("dataset", catalog.DATASETS)
def test_category_kind_agrees_with_the_adapters(dataset: str) -> None:
    """The catalog answers as the adapter does, with None where the adapter refuses the name."""
    facts = catalog.CATALOG[dataset]
    adapter = get_adapter(dataset)
    for category in (*facts.published_categories, *facts.unlisted_categories, "not_a_category"):
        try:
            expected = adapter.kind(category)
        except UserError:
            expected = None
        assert catalog.category_kind(dataset, category) == expected, category
    assert catalog.category_kind("no_such_dataset", "bottle") is None


def test_counts_name_only_categories_the_dataset_accepts() -> None:
    for facts in catalog.CATALOG.values():
        assert all(facts.accepts(c) for c in facts.published_counts), facts.name
        assert facts.textures <= {*facts.published_categories, *facts.unlisted_categories}, facts.name


def test_the_synthetic_generator_makes_the_catalogued_categories() -> None:
    facts = catalog.CATALOG["synthetic"]
    assert synthetic.CATEGORIES == facts.published_categories
    assert {c for c, kind in synthetic.CATEGORY_KINDS.items() if kind == catalog.TEXTURE} == facts.textures


def test_published_kind_names_only_published_categories() -> None:
    mvtec = catalog.CATALOG["mvtec"]
    assert mvtec.texture_categories == ("carpet", "grid", "leather", "tile", "wood")
    assert mvtec.published_kind("carpet") == "texture" and mvtec.published_kind("bottle") == "object"
    assert mvtec.published_kind("my_part") is None and mvtec.kind("my_part") == "object"

"""Tests of the published-count check: a copy whose counts differ gets exactly one
warning naming the dataset, the category and both counts; matching copies and the
built-in synthetic dataset get none, and a differing copy still loads."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from kdsearch.data import clear_memory_cache, load_category, synthetic
from kdsearch.data.adapters import btad, ksdd, ksdd2, mpdd, mtd, mvtec, mvtec3d
from kdsearch.data.registry import PublishedCountWarning, check_published_counts, get_adapter

SIZE = 8


def _write(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((SIZE, SIZE, 3), value, dtype=np.uint8))


def _folder_tree(root: Path, category: str, n_train: int, n_good: int, n_bad: int, *, normal: str = "good",
                 sub: str = "", mask: Callable[[str], str] = lambda stem: f"ground_truth/crack/{stem}_mask.png",
                 defect: str = "crack") -> Path:
    """An MVTec-like category with the given numbers of train, good test and defective test images."""
    cat = root / category
    for i in range(n_train):
        _write(cat / "train" / normal / sub / f"{i:03d}.png")
    for i in range(n_good):
        _write(cat / "test" / normal / sub / f"{i:03d}.png")
    for i in range(n_bad):
        _write(cat / "test" / defect / sub / f"{i:03d}.png", 200)
        _write(cat / mask(f"{i:03d}"), 255)
    return root


def _ksdd2_tree(root: Path, n_train: int, n_test: int) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            _write(root / split / f"{i}.png")
            _write(root / split / f"{i}_GT.png")
    return root


def _mtd_tree(root: Path, n_free: int, n_bad: int) -> Path:
    for i in range(n_free):
        _write(root / "MT_Free" / "Imgs" / f"f{i}.jpg")
    for i in range(n_bad):
        _write(root / "MT_Crack" / "Imgs" / f"c{i}.jpg")
        _write(root / "MT_Crack" / "Imgs" / f"c{i}.png", 255)
    return root


def _ksdd_tree(root: Path, parts: list[int], per_part: int) -> Path:
    for p in parts:
        for i in range(per_part):
            _write(root / f"kos{p:02d}" / f"Part{i}.jpg")
            _write(root / f"kos{p:02d}" / f"Part{i}_label.bmp")
    return root


def _count_warnings(dataset: str, root: Path, category: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_adapter(dataset).manifest(root, category)
    return [str(w.message) for w in caught if issubclass(w.category, PublishedCountWarning)]


# Each case: a tiny tree whose counts differ, and the two counts the message must name.
CASES = {
    "mvtec": (lambda r: _folder_tree(r, "bottle", 5, 2, 3), "bottle",
              "found 5 train images and 5 test images", "209 train images and 83 test images"),
    "mpdd": (lambda r: _folder_tree(r, "tubes", 4, 1, 1), "tubes",
             "found 4 train images and 2 test images", "122 train images and 101 test images"),
    "btad": (lambda r: _folder_tree(r, "02", 3, 1, 2, normal="ok", defect="ko",
                                    mask=lambda s: f"ground_truth/ko/{s}.png"), "02",
             "found 3 train images and 3 test images", "399 train images and 230 test images"),
    "mvtec3d": (lambda r: _folder_tree(r, "foam", 3, 1, 1, sub="rgb", defect="cut",
                                       mask=lambda s: f"test/cut/gt/{s}.png"), "foam",
                "found 3 train images and 2 test images", "236 train images and 100 test images"),
    "ksdd2": (lambda r: _ksdd2_tree(r, 4, 3), "ksdd2",
              "found 4 train images and 3 test images", "2331 train images and 1004 test images"),
    "mtd": (lambda r: _mtd_tree(r, 6, 2), "mtd",
            "found 6 defect-free images and 2 defective images", "952 defect-free images and 392 defective images"),
    "ksdd": (lambda r: _ksdd_tree(r, [1, 2, 4], 2), "ksdd",
             "found 3 part folders and 6 images", "50 part folders and 399 images"),
}


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_differing_counts_warn_once(tmp_path: Path, dataset: str) -> None:
    make, category, found, published = CASES[dataset]
    root = make(tmp_path / dataset)
    messages = _count_warnings(dataset, root, category)
    assert len(messages) == 1, messages
    (message,) = messages
    assert found in message and published in message
    assert f"dataset {dataset!r}" in message and f"category {category!r}" in message
    assert str(root) in message


def test_a_differing_copy_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "env-cache"))
    clear_memory_cache()
    root = _folder_tree(tmp_path / "mvtec", "bottle", 5, 2, 3)
    with pytest.warns(PublishedCountWarning, match="found 5 train images and 5 test images"):
        data = load_category("mvtec", "bottle", SIZE, root, cache_dir=tmp_path / "cache")
    assert len(data.train) + len(data.val_normal) == 5 and len(data.test) == 5


def test_published_counts_give_no_warning(tmp_path: Path) -> None:
    """MVTec AD toothbrush (60 train, 12 good + 30 defective test) and KolektorSDD at their published sizes."""
    root = _folder_tree(tmp_path / "mvtec", "toothbrush", 60, 12, 30)
    assert _count_warnings("mvtec", root, "toothbrush") == []
    kolektor = _ksdd_tree(tmp_path / "ksdd", list(range(1, 51)), 8)
    assert len(_count_warnings("ksdd", kolektor, "ksdd")) == 1  # 400 images, one too many
    for suffix in (".jpg", "_label.bmp"):
        (kolektor / "kos21" / f"Part7{suffix}").unlink()
    assert _count_warnings("ksdd", kolektor, "ksdd") == []


def test_unpublished_categories_are_not_checked(tmp_path: Path) -> None:
    """Folder datasets read any category folder; one without published counts is not compared."""
    root = _folder_tree(tmp_path / "mvtec", "my_part", 2, 1, 1)
    assert _count_warnings("mvtec", root, "my_part") == []


def test_synthetic_dataset_gives_no_warning(isolated_cache: Path) -> None:
    root = synthetic.ensure_synthetic(isolated_cache / synthetic.SYNTHETIC_DIRNAME)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in synthetic.CATEGORIES:
            get_adapter("synthetic").manifest(root, category)
    assert [str(w.message) for w in caught] == []


def test_check_compares_every_published_key(tmp_path: Path) -> None:
    adapter = get_adapter("mvtec")
    published = {"train images": 10, "test images": 4}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not check_published_counts(adapter, "x", tmp_path, dict(published), published, "a paper")
        assert not check_published_counts(adapter, "x", tmp_path, {"train images": 1}, None, "a paper")
        differing = {"train images": 10, "test images": 5}
        assert check_published_counts(adapter, "x", tmp_path, differing, published, "a paper")
    assert len(caught) == 1 and "10 train images and 5 test images" in str(caught[0].message)
    assert "(a paper)" in str(caught[0].message)


def test_every_reader_documents_its_published_counts() -> None:
    """The counts the readers compare with appear in their module docstrings."""
    for module, numbers in ((mvtec, ("209", "83", "3629", "1725")), (mpdd, ("888", "458", "289")),
                            (btad, ("400", "70", "2540")), (mvtec3d, ("2656", "1197", "244")),
                            (ksdd2, ("2331", "1004")), (mtd, ("952", "392")), (ksdd, ("399", "52"))):
        doc = module.__doc__ or ""
        assert all(n in doc for n in numbers), module.__name__

"""Tests of the KolektorSDD reader on tiny part trees written here: the part-level folds,
labels from the bitmaps, the fold categories and the layout errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kdsearch.catalog import category_kind
from kdsearch.data import clear_memory_cache, list_categories, load_category
from kdsearch.data.adapters.ksdd import FOLD_CATEGORIES, FOLDS
from kdsearch.data.registry import PublishedCountWarning, get_adapter
from kdsearch.errors import UserError

H, W = 40, 16  # tall, narrow fixture images, like the published 1250 x 500
S = 16

# Two parts per fold; a part's images are Part0..Part2, defective ones listed here.
PARTS = {FOLDS[0][0]: {1}, FOLDS[0][1]: set(), FOLDS[1][0]: set(), FOLDS[1][1]: {0, 2},
         FOLDS[2][0]: set(), FOLDS[2][1]: {2}}
N_IMAGES = 3


def _red(part: int, index: int) -> int:
    """The red value identifying one fixture image (steps of 8 outlast JPEG rounding)."""
    return 8 + 8 * (N_IMAGES * sorted(PARTS).index(part) + index)


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def make_ksdd(root: Path, parts: dict[int, set[int]] = PARTS) -> Path:
    """kosNN/PartI.jpg with PartI_label.bmp; a defect is a bright block in the bitmap."""
    for part, defective in parts.items():
        for i in range(N_IMAGES):
            image = np.zeros((H, W, 3), dtype=np.uint8)
            image[..., 2] = _red(part, i)  # BGR on disk
            image[..., 1] = 100
            label = np.zeros((H, W), dtype=np.uint8)
            if i in defective:
                label[: H // 2, : W // 2] = 255
            _write(root / f"kos{part:02d}" / f"Part{i}.jpg", image)
            _write(root / f"kos{part:02d}" / f"Part{i}_label.bmp", label)
    return root


def _load(root: Path, category: str = "ksdd") -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishedCountWarning)  # a tiny tree never has 399 images
        return load_category("ksdd", category, S, root, cache_dir=root.parent / "cache", val_fraction=0.0)


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path_factory.mktemp("env-cache")))
    clear_memory_cache()


def test_folds_partition_the_fifty_parts() -> None:
    assert [len(f) for f in FOLDS] == [17, 17, 16]
    assert sorted(n for f in FOLDS for n in f) == list(range(1, 51))
    assert FOLD_CATEGORIES == {"ksdd": 0, "ksdd_fold1": 1, "ksdd_fold2": 2}


@pytest.mark.parametrize("category,fold", sorted(FOLD_CATEGORIES.items()))
def test_fold_split(tmp_path: Path, category: str, fold: int) -> None:
    data = _load(make_ksdd(tmp_path / "ksdd"), category)
    test_parts = [p for p in PARTS if p in FOLDS[fold]]
    train_parts = [p for p in PARTS if p not in FOLDS[fold]]
    # Test: every image of the fold's parts, in part then file order, labels from the bitmaps.
    assert data.test.names == tuple(f"kos{p:02d}/Part{i}.jpg" for p in sorted(test_parts) for i in range(N_IMAGES))
    expected_labels = [int(i in PARTS[p]) for p in sorted(test_parts) for i in range(N_IMAGES)]
    assert data.test.labels.tolist() == expected_labels
    assert data.test.defect_types == tuple("defect" if y else "good" for y in expected_labels)
    block = torch.zeros((S, S), dtype=torch.bool)
    block[: S // 2, : S // 2] = True
    for mask, y in zip(data.test.masks, expected_labels):
        assert torch.equal(mask, block) if y else not mask.any()
    # Train: only the defect-free images of the other folds' parts.
    expected_train = [
        f"kos{p:02d}/Part{i}.jpg" for p in sorted(train_parts) for i in range(N_IMAGES) if i not in PARTS[p]
    ]
    assert data.train.names == tuple(expected_train)
    assert not data.train.labels.any() and not data.train.masks.any()
    assert set(data.train.names).isdisjoint(data.test.names)
    reds = data.train.images[:, 0, S // 2, S // 2].tolist()
    expected_reds = [_red(int(n[3:5]), int(n[-5])) for n in expected_train]
    assert np.allclose(reds, expected_reds, atol=3)  # RGB order, right files


def test_every_image_is_tested_once_over_the_folds(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd")
    tested = [n for c in FOLD_CATEGORIES for n in _load(root, c).test.names]
    assert sorted(tested) == sorted(f"kos{p:02d}/Part{i}.jpg" for p in PARTS for i in range(N_IMAGES))


def test_categories_and_kind(tmp_path: Path) -> None:
    assert list_categories("ksdd") == ["ksdd"]
    assert list_categories("ksdd", make_ksdd(tmp_path / "ksdd")) == ["ksdd"]
    assert {category_kind("ksdd", c) for c in FOLD_CATEGORIES} == {"texture"}
    assert category_kind("ksdd", "ksdd_fold3") is None
    with pytest.raises(UserError, match="unknown category 'ksdd_fold3'.*ksdd, ksdd_fold1, ksdd_fold2"):
        get_adapter("ksdd").check_category("ksdd_fold3")


def test_split_is_fixed_across_seeds(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishedCountWarning)
        a = load_category("ksdd", "ksdd", S, root, cache_dir=tmp_path / "cache", val_fraction=0.5, split_seed=0)
        b = load_category("ksdd", "ksdd", S, root, cache_dir=tmp_path / "cache", val_fraction=0.5, split_seed=9)
    assert a.test.names == b.test.names  # the fold, not split_seed, decides the test set
    assert sorted(a.train.names + a.val_normal.names) == sorted(b.train.names + b.val_normal.names)
    assert a.val_normal.names != b.val_normal.names  # split_seed still draws the validation hold-out


# --------------------------------------------------------------------------- layout errors


def test_missing_data_root_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--data-root"):
        load_category("ksdd", "ksdd", S, None, cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no KolektorSDD part folders \(kos01 \.\.\. kos50\)") as info:
        load_category("ksdd", "ksdd", S, tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert str(tmp_path / "empty") in str(info.value) and "Part<N>_label.bmp" in str(info.value)


def test_nested_root_names_the_right_folder(tmp_path: Path) -> None:
    make_ksdd(tmp_path / "download" / "KolektorSDD")
    with pytest.raises(UserError, match="pass that folder as --data-root") as info:
        _load(tmp_path / "download")
    assert str(tmp_path / "download" / "KolektorSDD") in str(info.value)


def test_image_without_label(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd")
    label = root / f"kos{FOLDS[1][1]:02d}" / "Part2_label.bmp"
    label.unlink()
    with pytest.raises(UserError, match="has no label bitmap") as info:
        _load(root)
    assert str(label.with_name("Part2.jpg")) in str(info.value) and str(label) in str(info.value)


def test_part_folder_without_images(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd")
    (root / "kos33").mkdir()
    with pytest.raises(UserError, match="no images in part folder") as info:
        _load(root)
    assert str(root / "kos33") in str(info.value)


def test_part_number_outside_the_published_range(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd")
    _write(root / "kos51" / "Part0.jpg", np.zeros((H, W, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="not one of kos01 ... kos50") as info:
        _load(root)
    assert str(root / "kos51") in str(info.value)


def test_fold_without_parts(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd", {p: d for p, d in PARTS.items() if p not in FOLDS[2]})
    assert len(_load(root, "ksdd").test) == 2 * N_IMAGES  # the other folds still work
    with pytest.raises(UserError, match="test split of 'ksdd_fold2' \\(test fold 2\\) is empty") as info:
        _load(root, "ksdd_fold2")
    assert f"kos{FOLDS[2][0]:02d}" in str(info.value)


def test_unreadable_label(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd")
    bad = root / f"kos{FOLDS[0][0]:02d}" / "Part1_label.bmp"
    bad.write_bytes(b"not a bitmap")
    with pytest.raises(UserError, match="cannot decode") as info:
        _load(root)
    assert str(bad) in str(info.value)


def test_published_counts_are_checked(tmp_path: Path) -> None:
    root = make_ksdd(tmp_path / "ksdd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_adapter("ksdd").manifest(root, "ksdd")
    messages = [str(w.message) for w in caught if issubclass(w.category, PublishedCountWarning)]
    assert len(messages) == 1
    assert "found 6 part folders and 18 images" in messages[0]
    assert "50 part folders and 399 images" in messages[0] and "'ksdd'" in messages[0]

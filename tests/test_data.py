"""Tests of kdsearch.data: adapters on tiny fixtures in each published layout, the tensor
cache, the validation split, normalisation, and the built-in synthetic dataset."""
from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kdsearch.catalog import category_kind
from kdsearch.data import (
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CategoryData,
    ImageSet,
    clear_memory_cache,
    default_cache_dir,
    list_categories,
    load_category,
    normalize,
)
from kdsearch.data import decode, synthetic
from kdsearch.data.registry import get_adapter
from kdsearch.data.split import split_train_val, validation_count
from kdsearch.errors import UserError

SIZE = 32  # side of the fixture images on disk
S = 16  # image_size the fixtures are loaded at


# --------------------------------------------------------------------------- helpers


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)


def _image(value: int) -> np.ndarray:
    """A flat RGB image whose red channel encodes ``value`` (survives any resize exactly)."""
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = value, 100, 200
    return img


def _mask(kind: str = "square") -> np.ndarray:
    """The fixture's defect mask: the top-left quarter (or nothing)."""
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    if kind == "square":
        m[: SIZE // 2, : SIZE // 2] = 255
    return m


EXPECTED_MASK = np.zeros((S, S), dtype=bool)
EXPECTED_MASK[: S // 2, : S // 2] = True


def make_folder_dataset(
    root: Path,
    category: str,
    *,
    normal: str = "good",
    sub: str = "",
    ext: str = ".png",
    mask_dir: str = "ground_truth/{defect}",
    mask_name: str = "{stem}_mask.png",
    n_train: int = 5,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
) -> Path:
    """An MVTec-like category: train/<normal>, test/<normal>, test/<defect>, masks."""
    defects = {"crack": 2, "scratch": 1} if defects is None else defects
    cat = root / category
    value = 1
    for i in range(n_train):
        _write(cat / "train" / normal / sub / f"{i:03d}{ext}", _image(value))
        value += 1
    for i in range(n_good):
        _write(cat / "test" / normal / sub / f"{i:03d}{ext}", _image(value))
        value += 1
    for defect, count in defects.items():
        for i in range(count):
            _write(cat / "test" / defect / sub / f"{i:03d}{ext}", _image(value))
            _write(cat / mask_dir.format(defect=defect) / mask_name.format(stem=f"{i:03d}"), _mask())
            value += 1
    return root


def make_ksdd2(root: Path) -> Path:
    """KolektorSDD2: flat train/ and test/ with <id>.png and <id>_GT.png."""
    splits = (("train", [10000, 10001, 10002, 10003], {10002}), ("test", [20000, 20001, 20002], {20001, 20002}))
    for split, ids, positive in splits:
        for k, i in enumerate(ids):
            _write(root / split / f"{i}.png", _image(10 + k))
            _write(root / split / f"{i}_GT.png", _mask("square" if i in positive else "empty"))
    return root


def make_mtd(root: Path, n_free: int = 10) -> Path:
    """Magnetic Tile Defects: MT_<Class>/Imgs/<name>.jpg with <name>.png masks."""
    for i in range(n_free):
        _write(root / "MT_Free" / "Imgs" / f"exp{i:02d}.jpg", _image(50 + 10 * i))
        _write(root / "MT_Free" / "Imgs" / f"exp{i:02d}.png", _mask("empty"))
    for defect, count in (("Blowhole", 2), ("Crack", 1)):
        for i in range(count):
            _write(root / f"MT_{defect}" / "Imgs" / f"exp{i:02d}.jpg", _image(20 + i))
            _write(root / f"MT_{defect}" / "Imgs" / f"exp{i:02d}.png", _mask())
    return root


def _red(images: torch.Tensor) -> list[int]:
    """Red value at the centre of each image (identifies fixture images)."""
    return images[:, 0, S // 2, S // 2].tolist()


def _check_shapes(data: CategoryData, n_train_all: int, n_test: int) -> None:
    assert data.image_size == S
    assert len(data.train) + len(data.val_normal) == n_train_all
    assert len(data.test) == n_test
    for part in (data.train, data.val_normal, data.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, S, S)
        assert part.masks.dtype == torch.bool and part.masks.shape[1:] == (S, S)
        assert part.labels.dtype == torch.int64
    for part in (data.train, data.val_normal):
        assert not part.masks.any() and not part.labels.any() and set(part.defect_types) <= {"good"}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache; start each test with an empty in-process cache."""
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path_factory.mktemp("env-cache")))
    clear_memory_cache()


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A cache dir holding the generated synthetic dataset, and the generation time.

    Reuses the session's cache folder when ``KDSEARCH_CACHE`` already points inside
    pytest's temporary tree (a session fixture elsewhere set it), so the dataset is
    generated once per test session; never a folder outside that tree.
    """
    env = os.environ.get("KDSEARCH_CACHE")
    base = tmp_path_factory.getbasetemp().resolve()
    shared = Path(env).resolve() if env else None
    cache = shared if shared is not None and base in shared.parents else tmp_path_factory.mktemp("kdsearch-cache")
    start = time.perf_counter()
    synthetic.ensure_synthetic(cache / synthetic.SYNTHETIC_DIRNAME)
    return cache, time.perf_counter() - start


# --------------------------------------------------------------------------- public API


def test_dataset_names_and_kinds(tmp_path: Path) -> None:
    assert DATASETS == ("synthetic", "mvtec", "mpdd", "btad", "ksdd2", "mtd", "mvtec3d", "ksdd")
    assert [get_adapter(name).name for name in DATASETS] == list(DATASETS)
    assert list_categories("synthetic") == ["weave", "stone", "washer", "pill"]
    kinds = [category_kind("synthetic", c) for c in ("weave", "stone", "washer", "pill")]
    assert kinds == ["texture", "texture", "object", "object"]
    assert len(list_categories("mvtec")) == 15
    textures = {c for c in list_categories("mvtec") if category_kind("mvtec", c) == "texture"}
    assert textures == {"carpet", "grid", "leather", "tile", "wood"}
    assert category_kind("mtd", "mtd") == category_kind("ksdd2", "ksdd2") == "texture"
    assert category_kind("btad", "01") == category_kind("mpdd", "tubes") == "object"
    assert category_kind("mvtec3d", "bagel") == "object"
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        list_categories("nope")
    assert category_kind("synthetic", "carpet") is None  # not one of the built-in dataset's
    make_folder_dataset(tmp_path, "zipper")
    make_folder_dataset(tmp_path, "bottle")
    (tmp_path / "not_a_category").mkdir()
    assert list_categories("mvtec", tmp_path) == ["bottle", "zipper"]
    with pytest.raises(UserError, match=str(tmp_path / "missing")):
        list_categories("mvtec", tmp_path / "missing")


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("KDSEARCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "kdsearch"


# --------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("dataset", ["mvtec", "mpdd"])
def test_mvtec_layout(tmp_path: Path, dataset: str) -> None:
    make_folder_dataset(tmp_path, "bottle")
    data = load_category(dataset, "bottle", S, tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.2)
    _check_shapes(data, n_train_all=5, n_test=5)
    assert (data.dataset, data.category) == (dataset, "bottle")
    assert sorted(_red(data.train.images) + _red(data.val_normal.images)) == [1, 2, 3, 4, 5]
    test = data.test
    assert _red(test.images) == [6, 7, 8, 9, 10]  # good first, then defects alphabetically
    assert test.labels.tolist() == [0, 0, 1, 1, 1]
    assert test.defect_types == ("good", "good", "crack", "crack", "scratch")
    assert test.names[0] == "bottle/test/good/000.png" and test.names[2] == "bottle/test/crack/000.png"
    assert not test.masks[:2].any()
    for m in test.masks[2:]:
        assert torch.equal(m, torch.from_numpy(EXPECTED_MASK))
    assert test.images[0, :, 0, 0].tolist() == [6, 100, 200]  # RGB order


@pytest.mark.parametrize(
    "product,ext,mask_ext", [("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")]
)
def test_btad_layout(tmp_path: Path, product: str, ext: str, mask_ext: str) -> None:
    make_folder_dataset(tmp_path, product, normal="ok", ext=ext, mask_name="{stem}" + mask_ext, defects={"ko": 3})
    data = load_category("btad", product, S, tmp_path, cache_dir=tmp_path / "cache")
    _check_shapes(data, n_train_all=5, n_test=5)
    assert data.test.defect_types == ("good", "good", "ko", "ko", "ko")
    assert data.test.labels.tolist() == [0, 0, 1, 1, 1]
    assert data.test.masks[2:].sum().item() == 3 * EXPECTED_MASK.sum()
    assert list_categories("btad", tmp_path) == [product]


def test_mvtec3d_layout(tmp_path: Path) -> None:
    make_folder_dataset(
        tmp_path, "bagel", sub="rgb", mask_dir="test/{defect}/gt", mask_name="{stem}.png", defects={"hole": 2}
    )
    (tmp_path / "bagel" / "train" / "good" / "xyz").mkdir()
    (tmp_path / "bagel" / "train" / "good" / "xyz" / "000.tiff").write_bytes(b"not read")
    _write(tmp_path / "bagel" / "validation" / "good" / "rgb" / "000.png", _image(99))
    data = load_category("mvtec3d", "bagel", S, tmp_path, cache_dir=tmp_path / "cache")
    _check_shapes(data, n_train_all=5, n_test=4)
    assert 99 not in _red(data.train.images) + _red(data.val_normal.images)
    assert data.test.defect_types == ("good", "good", "hole", "hole")
    assert data.test.names[2] == "bagel/test/hole/rgb/000.png"
    assert torch.equal(data.test.masks[3], torch.from_numpy(EXPECTED_MASK))


def test_ksdd2_layout(tmp_path: Path) -> None:
    make_ksdd2(tmp_path)
    data = load_category("ksdd2", "ksdd2", S, tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.0)
    _check_shapes(data, n_train_all=3, n_test=3)
    assert data.train.names == ("train/10000.png", "train/10001.png", "train/10003.png")  # the positive one is dropped
    assert len(data.val_normal) == 0
    assert data.test.labels.tolist() == [0, 1, 1]
    assert data.test.defect_types == ("good", "defect", "defect")
    assert not data.test.masks[0].any() and torch.equal(data.test.masks[1], torch.from_numpy(EXPECTED_MASK))
    assert list_categories("ksdd2", tmp_path) == ["ksdd2"]


def test_mtd_layout(tmp_path: Path) -> None:
    make_mtd(tmp_path)
    a = load_category("mtd", "mtd", S, tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.0)
    b = load_category("mtd", "mtd", S, tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.0, split_seed=5)
    _check_shapes(a, n_train_all=8, n_test=2 + 3)
    assert a.train.names == b.train.names and a.test.names == b.test.names  # fixed split, not split_seed
    free_test = {n for n, d in zip(a.test.names, a.test.defect_types) if d == "good"}
    assert len(free_test) == 2 and free_test.isdisjoint(a.train.names)
    assert a.test.defect_types[2:] == ("blowhole", "blowhole", "crack")
    assert a.test.labels.tolist() == [0, 0, 1, 1, 1]
    assert a.test.masks[2:].sum().item() == 3 * EXPECTED_MASK.sum()


# --------------------------------------------------------------------------- layout errors


def test_missing_data_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--data-root.*--dataset synthetic"):
        load_category("mvtec", "bottle", S, None, cache_dir=tmp_path)
    with pytest.raises(UserError, match=str(tmp_path / "nowhere")):
        load_category("mvtec", "bottle", S, tmp_path / "nowhere", cache_dir=tmp_path)


def test_a_data_root_without_any_category_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "not_a_category").mkdir()
    with pytest.raises(UserError, match=f"data root {tmp_path} holds no MVTec AD category: expected the MVTec AD "
                                        r"layout <root>/<category>/train/good/\*\.png"):
        list_categories("mvtec", tmp_path)


def test_unknown_category(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    with pytest.raises(UserError, match=r"unknown category 'cable'.*categories found .*: bottle") as info:
        load_category("mvtec", "cable", S, tmp_path, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "cable") in str(info.value)
    with pytest.raises(UserError, match="unknown category 'other' for dataset 'ksdd2'"):
        load_category("ksdd2", "other", S, make_ksdd2(tmp_path / "k"), cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match="unknown category 'bottle' for dataset 'synthetic'"):
        load_category("synthetic", "bottle", S, tmp_path / "syn-never-made", cache_dir=tmp_path / "cache")


def test_missing_train_images(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle", n_train=0)
    with pytest.raises(UserError, match="no images in") as info:
        load_category("mvtec", "bottle", S, tmp_path, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "bottle" / "train" / "good") in str(info.value)
    assert "MVTec AD layout" in str(info.value)


def test_missing_mask(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    mask = tmp_path / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    mask.unlink()
    with pytest.raises(UserError) as info:
        load_category("mvtec", "bottle", S, tmp_path, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "bottle" / "test" / "crack" / "001.png") in str(info.value)
    assert str(mask) in str(info.value)


def test_missing_ground_truth_ksdd2_and_mtd(tmp_path: Path) -> None:
    make_ksdd2(tmp_path / "k")
    (tmp_path / "k" / "test" / "20001_GT.png").unlink()
    with pytest.raises(UserError, match="20001_GT.png"):
        load_category("ksdd2", "ksdd2", S, tmp_path / "k", cache_dir=tmp_path / "cache")
    make_mtd(tmp_path / "m")
    (tmp_path / "m" / "MT_Crack" / "Imgs" / "exp00.png").unlink()
    with pytest.raises(UserError, match="exp00.jpg has no mask"):
        load_category("mtd", "mtd", S, tmp_path / "m", cache_dir=tmp_path / "cache")


def test_corrupt_image(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    bad = tmp_path / "bottle" / "train" / "good" / "002.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot decode") as info:
        load_category("mvtec", "bottle", S, tmp_path, cache_dir=tmp_path / "cache")
    assert str(bad) in str(info.value)


def test_bad_arguments(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    for kwargs in ({"val_fraction": 1.0}, {"val_fraction": -0.1}, {"max_train_images": 0}):
        with pytest.raises(UserError):
            load_category("mvtec", "bottle", S, tmp_path, cache_dir=tmp_path / "cache", **kwargs)
    with pytest.raises(UserError, match="image_size"):
        load_category("mvtec", "bottle", 0, tmp_path, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- preprocessing


def _disc_mask(side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    return (yy - side * 0.43) ** 2 + (xx - side * 0.57) ** 2 < (side * 0.21) ** 2


def test_each_preprocessing_resizes_as_its_source_does() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    mask = _disc_mask(96)
    as_pil = {"rd4ad_code": Image.Resampling.BILINEAR, "mrkd_code": Image.Resampling.LANCZOS}
    for name, resample in as_pil.items():
        expected = np.asarray(Image.fromarray(image).resize((32, 32), resample))
        assert np.array_equal(decode.resize_image(image, 32, name), expected), name
    assert np.array_equal(decode.resize_image(image, 32), cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA))
    # RD4AD's code: a bilinear mask thresholded at 0.5; MRKD's: PIL nearest (pixel centres).
    grey = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(decode.resize_mask(mask, 32, "rd4ad_code"), grey / 255.0 > 0.5)
    nearest = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((32, 32), Image.Resampling.NEAREST))
    assert np.array_equal(decode.resize_mask(mask, 32, "mrkd_code"), nearest > 0)
    opencv = decode.resize_mask(mask, 32)
    assert not np.array_equal(opencv, nearest > 0)  # OpenCV's nearest samples other pixels
    for name in decode.PREPROCESSINGS:  # at the image's own size nothing is resampled
        assert decode.resize_image(image, 96, name) is image and decode.resize_mask(mask, 96, name) is mask


def test_a_preprocessing_decodes_into_its_own_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder_dataset(tmp_path, "bottle")
    cache = tmp_path / "cache"
    used: set[str] = set()
    resize = decode.resize_image

    def recording(image: np.ndarray, size: int, preprocessing: str = "opencv_area") -> np.ndarray:
        used.add(preprocessing)
        return resize(image, size, preprocessing)

    monkeypatch.setattr(decode, "resize_image", recording)
    load_category("mvtec", "bottle", 16, tmp_path, cache_dir=cache)
    load_category("mvtec", "bottle", 16, tmp_path, cache_dir=cache, preprocessing="mrkd_code")
    assert used == {"opencv_area", "mrkd_code"} and len(list((cache / "tensors").glob("*.pt"))) == 2
    with pytest.raises(UserError, match="preprocessing must be one of opencv_area, rd4ad_code, mrkd_code"):
        load_category("mvtec", "bottle", 16, tmp_path, cache_dir=cache, preprocessing="pil")


def test_the_papers_with_code_resize_as_their_code_and_other_keys_stay() -> None:
    from kdsearch.settings import single_trial

    rd4ad = single_trial("rd4ad", "paper", {"category": "bottle", "pretrained": "none"})
    mrkd = single_trial("mrkd", "paper", {"category": "capsule", "pretrained": "none"})
    assert (rd4ad.train.preprocessing, mrkd.train.preprocessing) == ("rd4ad_code", "mrkd_code")
    assert rd4ad.identity["preprocessing"] == "rd4ad_code"
    # Every key field is in the key, the default too (key version 2).
    assert single_trial("rd4ad", "quick", {}).identity["preprocessing"] == "opencv_area"


# --------------------------------------------------------------------------- cache


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder_dataset(tmp_path, "bottle")
    cache = tmp_path / "cache"
    first = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache)
    files = list((cache / "tensors").glob("*.pt"))
    assert len(files) == 1 and not list((cache / "tensors").glob("*.tmp"))

    def refuse(path: object) -> None:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(decode, "read_image", refuse)
    again = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache)  # in-process cache
    clear_memory_cache()
    from_disk = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache)  # file cache
    for other in (again, from_disk):
        assert torch.equal(other.test.images, first.test.images)
        assert torch.equal(other.test.masks, first.test.masks)
        assert other.train.names == first.train.names
    with pytest.raises(AssertionError, match="decoded"):
        load_category("mvtec", "bottle", S * 2, tmp_path, cache_dir=cache)  # another size must decode


def test_cache_follows_file_changes(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    cache = tmp_path / "cache"
    before = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache)
    path = tmp_path / "bottle" / "test" / "good" / "000.png"
    _write(path, _image(77))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache)
    assert _red(before.test.images)[0] == 6 and _red(after.test.images)[0] == 77


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    cache = tmp_path / "cache"
    first = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache)
    (file,) = (cache / "tensors").glob("*.pt")
    file.write_bytes(b"truncated")
    clear_memory_cache()
    again = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache)
    assert torch.equal(again.test.images, first.test.images)
    assert file.stat().st_size > 100


# --------------------------------------------------------------------------- split


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle", n_train=20)
    cache = tmp_path / "cache"
    a = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache, val_fraction=0.25, split_seed=3)
    b = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache, val_fraction=0.25, split_seed=3)
    c = load_category("mvtec", "bottle", S, tmp_path, cache_dir=cache, val_fraction=0.25, split_seed=4)
    assert len(a.val_normal) == 5 and len(a.train) == 15
    assert a.val_normal.names == b.val_normal.names and a.train.names == b.train.names
    assert a.val_normal.names != c.val_normal.names
    assert set(a.train.names).isdisjoint(a.val_normal.names)
    assert len(set(a.train.names) | set(a.val_normal.names)) == 20
    assert list(a.train.names) == sorted(a.train.names)  # file order kept
    small = load_category(
        "mvtec", "bottle", S, tmp_path, cache_dir=cache, val_fraction=0.25, split_seed=3, max_train_images=4
    )
    assert small.train.names == a.train.names[:4] and small.val_normal.names == a.val_normal.names


def test_validation_count_edges() -> None:
    assert [validation_count(n, 0.1) for n in (0, 1, 2, 3, 80)] == [0, 0, 1, 1, 8]
    assert validation_count(5, 0.0) == 0 and validation_count(3, 0.9) == 2
    train, val = split_train_val(10, 0.3, seed=1)
    assert sorted(train.tolist() + val.tolist()) == list(range(10)) and len(val) == 3


# --------------------------------------------------------------------------- tensors


def test_normalize() -> None:
    images = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    images[1] = 255
    out = normalize(images)
    assert out.dtype == torch.float32 and out.device == images.device and out.shape == images.shape
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], -mean / std)
    assert torch.allclose(out[1, :, 0, 0], (1 - mean) / std)
    assert torch.allclose(normalize(images.float() / 255), out)
    assert normalize(torch.ones((1, 3, 2, 2), dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError):
        normalize(torch.zeros((3, 4, 4), dtype=torch.uint8))
    with pytest.raises(TypeError):
        normalize(torch.zeros((1, 3, 4, 4), dtype=torch.int32))


def test_imageset_checks_shapes() -> None:
    good = dict(
        images=torch.zeros((2, 3, 8, 8), dtype=torch.uint8),
        masks=torch.zeros((2, 8, 8), dtype=torch.bool),
        labels=torch.zeros(2, dtype=torch.int64),
        defect_types=("good", "good"),
        names=("a", "b"),
    )
    s = ImageSet(**good)
    assert len(s) == 2 and s.image_size == 8 and s.subset([1]).names == ("b",)
    wrong = {
        "masks": torch.zeros((2, 4, 4), dtype=torch.bool),
        "labels": torch.zeros(3, dtype=torch.int64),
        "names": ("a",),
    }
    for key, bad in wrong.items():
        with pytest.raises(ValueError):
            ImageSet(**{**good, key: bad})


# --------------------------------------------------------------------------- synthetic dataset


def test_synthetic_generation_is_deterministic(synthetic_cache: tuple[Path, float], tmp_path: Path) -> None:
    """Generating again (here: one category, in this process) gives identical files."""
    first = synthetic_cache[0] / synthetic.SYNTHETIC_DIRNAME
    synthetic.write_category(tmp_path, "pill")
    files_a = sorted(p.relative_to(first) for p in (first / "pill").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path) for p in (tmp_path / "pill").rglob("*.png"))
    n_defective = synthetic.N_TEST_PER_DEFECT * len(synthetic.DEFECT_TYPES)
    assert files_a == files_b and len(files_a) == synthetic.N_TRAIN + synthetic.N_TEST_GOOD + 2 * n_defective
    for rel in files_a:
        assert (first / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_synthetic_masks_are_exact(synthetic_cache: tuple[Path, float]) -> None:
    root = synthetic_cache[0] / synthetic.SYNTHETIC_DIRNAME
    for category in synthetic.CATEGORIES:
        for item in synthetic.plan_category(category):
            if item.defect == "good" or item.index >= 3:
                continue
            image = decode.read_image(root / item.image_relpath)
            mask = decode.read_mask(root / item.mask_relpath)
            clean, empty = synthetic.render_sample(category, item.seed, None)
            changed = (image != clean).any(axis=-1)
            assert not empty.any()
            assert np.array_equal(changed, mask), item.image_relpath
            assert 12 <= mask.sum() <= 0.03 * mask.size, (item.image_relpath, int(mask.sum()))


def test_synthetic_dataset_loads(synthetic_cache: tuple[Path, float]) -> None:
    cache, seconds = synthetic_cache
    print(f"synthetic generation took {seconds:.2f} s")
    data = load_category("synthetic", "washer", 64, cache_dir=cache)
    assert (len(data.train), len(data.val_normal), len(data.test)) == (72, 8, 57)
    assert data.test.labels.sum().item() == 32
    assert sorted(set(data.test.defect_types)) == ["color", "contamination", "good", "hole", "scratch"]
    anomalous = data.test.labels == 1
    assert data.test.masks[anomalous].flatten(1).any(1).all() and not data.test.masks[~anomalous].any()


def test_synthetic_is_generated_once(synthetic_cache: tuple[Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    root = synthetic_cache[0] / synthetic.SYNTHETIC_DIRNAME

    def refuse(path: object) -> None:
        raise AssertionError("regenerated")

    monkeypatch.setattr(synthetic, "generate_synthetic", refuse)
    assert synthetic.ensure_synthetic(root) == root


def test_synthetic_generation_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process finishing first: its copy is kept, ours is discarded, nothing leaks."""
    root = tmp_path / "synthetic-v1"

    def lose_the_race(tmp: Path) -> Path:
        (Path(tmp) / synthetic.MARKER).write_text("ours")
        root.mkdir()
        (root / synthetic.MARKER).write_text("theirs")
        return Path(tmp)

    monkeypatch.setattr(synthetic, "generate_synthetic", lose_the_race)
    assert synthetic.ensure_synthetic(root) == root
    assert (root / synthetic.MARKER).read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-v1"]
    foreign = tmp_path / "foreign"
    (foreign / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="not a kdsearch synthetic dataset"):
        synthetic.ensure_synthetic(foreign)


def test_synthetic_is_not_trivially_separable(synthetic_cache: tuple[Path, float]) -> None:
    """A raw-pixel detector (blurred distance to the mean normal image) stays far from perfect."""
    from kdsearch.evaluate import mean_image_distance_scores
    from kdsearch.metrics import image_auroc

    cache = synthetic_cache[0]
    aurocs = {}
    for category in synthetic.CATEGORIES:
        data = load_category("synthetic", category, 128, cache_dir=cache)
        scores = mean_image_distance_scores(data.train.images, data.test.images)
        aurocs[category] = image_auroc(scores, data.test.labels)
    print("naive image AUROC:", {k: round(v, 3) for k, v in aurocs.items()})
    assert np.mean(list(aurocs.values())) < 0.8
    assert all(v < 0.9 for v in aurocs.values())


# --------------------------------------------------------------------------- strict masks


def test_mask_of_another_size_than_its_image_is_an_error(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    mask = tmp_path / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    _write(mask, np.zeros((SIZE, SIZE + 8), dtype=np.uint8) + 255)
    with pytest.raises(UserError, match="40x32 px but its image") as info:
        load_category("mvtec", "bottle", S, tmp_path, cache_dir=tmp_path / "cache")
    assert str(mask) in str(info.value)


def test_grey_level_mask_is_an_error_and_antialiased_edges_are_not(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, "bottle")
    mask = tmp_path / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    soft = np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (SIZE, 1))
    _write(mask, soft)
    with pytest.raises(UserError, match="is not binary") as info:
        load_category("mvtec", "bottle", S, tmp_path, cache_dir=tmp_path / "cache")
    assert str(mask) in str(info.value)
    edged = _mask()
    edged[SIZE // 2, : SIZE // 4] = 100  # anti-aliased edge pixels: below the threshold, under 5 %
    edged[0, 0] = 200
    _write(mask, edged)
    assert decode.read_mask(mask).sum() == (SIZE // 2) ** 2
    _write(mask, (_mask() > 0).astype(np.uint8))  # a 0/1 mask is binary too
    assert decode.read_mask(mask).sum() == (SIZE // 2) ** 2


def test_empty_mask_of_a_defect_image_is_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_folder_dataset(tmp_path, "bottle")
    mask = tmp_path / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    _write(mask, _mask("empty"))
    data = load_category("mvtec", "bottle", S, tmp_path, cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "have an empty mask" in err and str(mask) in err
    assert int(data.test.labels.sum()) >= 1


_ADAPTER_MODULE = '''
from kdsearch.catalog import DatasetFacts
from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset


@register_dataset
class ToySet(FolderDataset):
    facts = DatasetFacts(name="toyset", title="Toy set", published_categories=("widget",))
    layout = FolderLayout(title="Toy set (MVTec AD)")
'''


def test_an_adapter_module_dropped_into_the_adapters_package_registers_itself(tmp_path, monkeypatch) -> None:
    """As a method file in kdsearch/methods/ does: the package imports every module, no list names them."""
    import sys

    from kdsearch.data import adapters, registry

    (tmp_path / "toyset.py").write_text(_ADAPTER_MODULE)
    monkeypatch.setattr(adapters, "__path__", [*adapters.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delitem(sys.modules, "kdsearch.data.adapters.toyset", raising=False)
    init = Path(adapters.__file__)
    try:
        # The package's body run again, as importing kdsearch.data runs it in a fresh process.
        exec(compile(init.read_text(), str(init), "exec"), adapters.__dict__)
        adapter = get_adapter("toyset")
        assert (adapter.name, adapter.title, adapter.categories(None)) == ("toyset", "Toy set", ["widget"])
    finally:
        sys.modules.pop("kdsearch.data.adapters.toyset", None)
    assert {get_adapter(name).name for name in DATASETS} == set(DATASETS)

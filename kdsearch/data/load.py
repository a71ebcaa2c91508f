"""``load_category``: one category of one dataset as train / val_normal / test tensors."""
from __future__ import annotations

from pathlib import Path

import torch

from kdsearch.data import cache
from kdsearch.data.decode import DEFAULT_PREPROCESSING, check_preprocessing
from kdsearch.data.registry import get_adapter
from kdsearch.data.samples import Manifest
from kdsearch.data.split import split_train_val, validation_count
from kdsearch.data.tensorize import tensorize
from kdsearch.data.types import CategoryData, ImageSet
from kdsearch.errors import UserError


def _check_args(image_size: int, max_train_images: int | None) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise UserError(f"image_size must be an integer of at least 8 pixels, got {image_size!r}")
    if max_train_images is not None and max_train_images < 1:
        raise UserError(f"max_train_images must be at least 1 (or unset), got {max_train_images}")


def load_category(
    dataset: str,
    category: str,
    image_size: int,
    data_root: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
    max_train_images: int | None = None,
    preprocessing: str = DEFAULT_PREPROCESSING,
) -> CategoryData:
    """Load one category, decoded and resized once, from the tensor cache when possible.

    Args:
        dataset: One of ``DATASETS``.
        category: A category of that dataset (see :func:`list_categories`).
        image_size: Side length S every image and mask is resized to.
        data_root: The dataset's root folder. Required for every dataset but
            ``synthetic``, which is generated on first use into
            ``<cache_dir>/synthetic-v<SYNTHETIC_VERSION>/`` when this is None.
        val_fraction: Share of the normal training images held out as ``val_normal``
            (at least one image when there are two or more and the share is > 0).
        split_seed: Seed of the hold-out; the same seed gives the same split.
        cache_dir: Cache folder; default :func:`default_cache_dir`.
        max_train_images: Keep only the first this many training images (after the
            hold-out), for smoke runs.
        preprocessing: How images and masks are resized: one of
            :data:`kdsearch.data.decode.PREPROCESSINGS`.

    Returns:
        The category's train, val_normal and test splits.

    Raises:
        UserError: Unknown dataset or category, missing data root, a layout problem, an
            unreadable file, or an impossible argument.
    """
    _check_args(image_size, max_train_images)
    check_preprocessing(preprocessing)
    cache_root = _cache_root(cache_dir)
    manifest = category_files(dataset, category, data_root, cache_dir=cache_root)
    root = manifest.root
    key = cache.cache_key(dataset, root, category, image_size, cache.fingerprint(manifest), preprocessing)
    path = cache.cache_file(cache_root, dataset, category, image_size, key)
    payload = cache.load_or_build(key, path, lambda: tensorize(manifest, image_size, preprocessing))

    train_all = _normal_set(payload, image_size)
    if len(train_all) == 0:
        raise UserError(f"category {category!r} of {dataset!r} under {root} has no normal training images")
    train_idx, val_idx = split_train_val(len(train_all), val_fraction, split_seed)
    if max_train_images is not None:
        train_idx = train_idx[:max_train_images]
    test = ImageSet(
        images=_tensor(payload, "test_images").clone(),
        masks=_tensor(payload, "test_masks").clone(),
        labels=_tensor(payload, "test_labels").clone(),
        defect_types=_strings(payload, "test_defects"),
        names=_strings(payload, "test_names"),
    )
    return CategoryData(
        dataset=dataset,
        category=category,
        image_size=image_size,
        train=train_all.subset(train_idx),
        val_normal=train_all.subset(val_idx),
        test=test,
    )


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()


def category_files(dataset: str, category: str, data_root: str | Path | None = None, *,
                   cache_dir: str | Path | None = None) -> Manifest:
    """The files of one category, found in the dataset's published layout, without decoding any.

    What :func:`load_category` checks before it decodes: a sweep asks it of every category
    before it starts, so that a missing root or a broken layout is refused at once.

    Raises:
        UserError: Unknown dataset or category, missing data root, or a layout problem
            (no training or test images, a defect image without its mask).
    """
    adapter = get_adapter(dataset)
    adapter.check_category(category)
    cache_root = _cache_root(cache_dir)
    return adapter.manifest(adapter.resolve_root(data_root, cache_root), category)


def _tensor(payload: dict[str, object], name: str) -> torch.Tensor:
    value = payload[name]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"tensor cache entry {name!r} is {type(value).__name__}, expected a tensor")
    return value


def _strings(payload: dict[str, object], name: str) -> tuple[str, ...]:
    value = payload[name]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"tensor cache entry {name!r} is {type(value).__name__}, expected a list of strings")
    return tuple(str(v) for v in value)


def _normal_set(payload: dict[str, object], image_size: int) -> ImageSet:
    """Every cached normal training image, as one set (train and val_normal are drawn from it)."""
    images = _tensor(payload, "train_images")
    n = images.shape[0]
    return ImageSet(
        images=images,
        masks=torch.zeros((n, image_size, image_size), dtype=torch.bool),
        labels=torch.zeros(n, dtype=torch.int64),
        defect_types=("good",) * n,
        names=_strings(payload, "train_names"),
    )


def train_image_count(dataset: str, category: str, data_root: str | Path | None = None, *,
                      val_fraction: float = 0.1, max_train_images: int | None = None) -> int | None:
    """Images a trial of ``category`` trains on per epoch, without decoding any.

    Counted from the files under ``data_root`` when it is given, else taken from the
    dataset's published counts; ``None`` when neither is known.
    """
    adapter = get_adapter(dataset)
    count = None
    if data_root is not None and Path(data_root).expanduser().is_dir():
        try:
            count = len(adapter.manifest(adapter.resolve_root(data_root, cache.default_cache_dir()), category).train)
        except UserError:
            count = None
    if count is None:
        count = adapter.published_train_count(category)
    if count is None:
        return None
    count -= validation_count(count, val_fraction)
    return min(count, max_train_images) if max_train_images else count

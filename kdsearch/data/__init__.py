"""Datasets as cached uint8 tensors: MVTec AD and its relatives, and a built-in synthetic set.

Every dataset is read through one MVTec-AD-layout reader (:mod:`kdsearch.data.folder`)
or an adapter that presents it in that shape (:mod:`kdsearch.data.adapters`); images are
decoded with OpenCV, resized once and cached (:mod:`kdsearch.data.cache`). The built-in
synthetic dataset (:mod:`kdsearch.data.synthetic`) needs no download.
"""
from kdsearch.data import adapters as _adapters  # noqa: F401  (registers the datasets)
from kdsearch.data.cache import clear_memory_cache, default_cache_dir
from kdsearch.data.load import category_files, load_category, train_image_count
from kdsearch.data.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from kdsearch.data.registry import DATASETS, list_categories
from kdsearch.data.types import CategoryData, ImageSet

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CategoryData",
    "ImageSet",
    "category_files",
    "clear_memory_cache",
    "default_cache_dir",
    "list_categories",
    "load_category",
    "train_image_count",
    "normalize",
]

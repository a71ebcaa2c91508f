"""The built-in synthetic dataset, generated on first use and then read like MVTec AD.

Layout: the MVTec AD one (see :mod:`kdsearch.data.adapters.mvtec`), written by
:mod:`kdsearch.data.synthetic` into ``<cache_dir>/synthetic-v<SYNTHETIC_VERSION>/`` unless a
data root is given (then that folder holds, or receives, the generated dataset).
"""
from __future__ import annotations

from pathlib import Path

from kdsearch.catalog import CATALOG
from kdsearch.data import synthetic
from kdsearch.data.adapters.mvtec import FolderDataset
from kdsearch.data.folder import FolderLayout
from kdsearch.data.registry import register_dataset
from kdsearch.data.samples import Manifest


@register_dataset
class SyntheticDataset(FolderDataset):
    """Four procedural categories: textures ``weave``, ``stone``; objects ``washer``, ``pill``."""

    facts = CATALOG["synthetic"]
    layout = FolderLayout(title=f"{facts.title} (MVTec AD)")

    def resolve_root(self, data_root: str | Path | None, cache_dir: Path) -> Path:
        """The generated dataset's folder, generating it first if needed."""
        root = Path(data_root).expanduser() if data_root is not None else cache_dir / synthetic.SYNTHETIC_DIRNAME
        return synthetic.ensure_synthetic(root).resolve()

    def categories(self, root: Path | None) -> list[str]:
        """Always the four built-in categories."""
        return list(synthetic.CATEGORIES)

    def published_train_count(self, category: str) -> int | None:
        return synthetic.N_TRAIN

    def manifest(self, root: Path, category: str) -> Manifest:
        """Read the generated category (MVTec AD layout)."""
        self.check_category(category)
        return super().manifest(root, category)

"""Shared test setup: an isolated cache for datasets and tensors, one per test session."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the dataset/tensor cache at a session folder so tests never touch the user's home."""
    cache = tmp_path_factory.mktemp("kdsearch-cache")
    previous = os.environ.get("KDSEARCH_CACHE")
    os.environ["KDSEARCH_CACHE"] = str(cache)
    os.environ.setdefault("WANDB_MODE", "disabled")
    yield cache
    if previous is None:
        os.environ.pop("KDSEARCH_CACHE", None)
    else:
        os.environ["KDSEARCH_CACHE"] = previous

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


@pytest.fixture
def worker_reports(monkeypatch) -> list[dict]:
    """A trial's worker run in-process: Tune's session stood in for (no checkpoint), and the
    list its reports land in."""
    from kdsearch.distributed import worker

    reports: list[dict] = []

    class Session:
        def __init__(self, in_train: bool) -> None:
            self.in_train, self.rank, self.world = in_train, 0, 1

        def get_checkpoint(self):
            return None

        def count_attempt(self) -> int:
            return 0

        def report(self, metrics, checkpoint=None) -> None:
            reports.append(dict(metrics))

    monkeypatch.setattr(worker, "_Session", Session)
    return reports

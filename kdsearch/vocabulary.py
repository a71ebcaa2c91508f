"""The shared vocabulary: how a trial ends and what its metrics are called.

Training reports, the Ray driver, the Parquet schema, W&B, the tables and the HTML report
use these names; nothing else spells them. A leaf: it imports nothing from kdsearch, so
``analysis/`` and ``kdsearch.results`` read it without the resolver, the loop or torch.
"""
from __future__ import annotations

from enum import Enum

__all__ = ["Status", "STATUSES", "DONE_STATUSES", "VAL_METRIC", "TEST_METRICS", "METRIC_LABELS"]


class Status(str, Enum):
    """How a trial ended; each member equals its string, as rows and W&B store it (a ``str``
    Enum, not 3.11's ``StrEnum``: the package supports Python 3.10)."""

    OK = "ok"
    FAILED = "failed"  # a crash or a lost node: not a result, --resume runs it again
    DIVERGED = "diverged"  # a NaN/inf loss: a result, it stays
    PRUNED = "pruned"  # stopped early by a search's scheduler (no test evaluation)

    def __str__(self) -> str:
        """The bare value (``ok``), in ``str()`` and f-strings alike, on every Python version."""
        return self.value


STATUSES: tuple[str, ...] = tuple(status.value for status in Status)
#: Statuses that are results: a resumed sweep skips them.
DONE_STATUSES: tuple[str, ...] = (Status.OK.value, Status.DIVERGED.value, Status.PRUNED.value)

#: Reported each epoch on the held-out normal images plus validation anomalies; searches
#: select on it, never on the test split.
VAL_METRIC = "val_image_auroc"
#: The test split's metrics, in the order tables show them.
TEST_METRICS = ("image_auroc", "pixel_auroc", "au_pro", "au_pro_rd4ad", "pixel_ap")
#: Short column labels of the test metrics.
METRIC_LABELS = {"image_auroc": "I-AUROC", "pixel_auroc": "P-AUROC", "au_pro": "AU-PRO",
                 "au_pro_rd4ad": "AU-PRO (RD4AD)", "pixel_ap": "P-AP"}

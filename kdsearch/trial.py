"""What every layer says about a trial, defined once: its statuses and its metric names.

Training reports, the Ray driver, the Parquet schema, W&B and the tables all use these
names; nothing else spells them.
"""
from __future__ import annotations

from typing import Literal

__all__ = ["Status", "STATUSES", "DONE_STATUSES", "VAL_METRIC", "TEST_METRICS", "METRIC_LABELS"]

#: How a trial ended. ``pruned``: stopped early by a search's scheduler (no test evaluation).
Status = Literal["ok", "failed", "diverged", "pruned"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "diverged", "pruned")
#: Statuses that are results: a resumed sweep skips them. ``failed`` (a crash, a lost node)
#: is not a result, so ``--resume`` runs such a trial again; ``diverged`` is one and stays.
DONE_STATUSES: tuple[Status, ...] = ("ok", "diverged", "pruned")

#: Reported each epoch on the held-out normal images plus validation anomalies; searches
#: select on it, never on the test split.
VAL_METRIC = "val_image_auroc"
#: The test split's metrics, in the order tables show them.
TEST_METRICS = ("image_auroc", "pixel_auroc", "au_pro", "au_pro_rd4ad", "pixel_ap")
#: Short column labels of the test metrics.
METRIC_LABELS = {"image_auroc": "I-AUROC", "pixel_auroc": "P-AUROC", "au_pro": "AU-PRO",
                 "au_pro_rd4ad": "AU-PRO (RD4AD)", "pixel_ap": "P-AP"}

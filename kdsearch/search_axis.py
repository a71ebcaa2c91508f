"""What a search axis (not a grid) adds to planning: held-out images validated every epoch,
the history of a resumed search, and a probe value for what does not depend on the sample.
"""
from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

from kdsearch import results as results_lib
from kdsearch.errors import UserError
from kdsearch.settings import SEARCH_VAL_FRACTION
from kdsearch.spaces import Axis
from kdsearch.vocabulary import DONE_STATUSES, VAL_METRIC

if TYPE_CHECKING:
    from kdsearch.trial import Settings


def check_search_validation(axis: Axis, settings: Settings) -> None:
    """Refuse what a search cannot select with: validation less often than every epoch, or no
    held-out images. The ``search validation`` layer sets both, so only a later, explicit
    layer (``--set``, the axis's ``fixed``) can undo them."""
    values = settings.values
    every = values.get("val_every", 1)
    if int(every) != 1:
        raise UserError(f"search axis {axis.name!r} stops weak trials on {VAL_METRIC} after every epoch, so it "
                        f"validates every epoch; remove val_every={every} ({settings.source_of('val_every')})")
    if float(values.get("val_fraction", 0.1)) == 0.0:
        raise UserError(f"search axis {axis.name!r} selects by {VAL_METRIC} on held-out images, so it needs "
                        f"val_fraction > 0; remove val_fraction=0 ({settings.source_of('val_fraction')}; searches "
                        f"default to {SEARCH_VAL_FRACTION})")


def search_history(results_dir: str | os.PathLike[str], paper: str, axis: str) -> dict[tuple, list[tuple[Any, float | None]]]:
    """Trials of a search axis already run, by (dataset, category, seed, profile).

    A trial counts when it has a result row or epoch curves (an ASHA-stopped trial has
    only curves). Its validation metric is the last epoch's.
    """
    rows = results_lib.read_results(results_dir, paper, axis)
    curves = results_lib.read_epoch_curves(results_dir, paper, axis)
    last_val: dict[str, float | None] = {}
    if len(curves):
        for key, group in curves.sort_values("epoch").groupby("trial_key"):
            value = group["val_metric"].iloc[-1]
            last_val[str(key)] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    seen: dict[str, tuple] = {}
    failed = set()
    for row in rows.itertuples():
        if row.status not in DONE_STATUSES:
            failed.add(str(row.trial_key))  # an infrastructure failure, not a result: sampled again
            continue
        seen[str(row.trial_key)] = ((row.dataset, row.category, int(row.seed), row.profile), row.value)
    if len(curves):
        epoch0 = curves.drop_duplicates("trial_key")
        for row in epoch0.itertuples():
            if str(row.trial_key) not in seen and str(row.trial_key) not in failed:
                extra = json.loads(row.extra_json or "{}")
                ident = (extra.get("dataset"), row.category, int(row.seed), extra.get("profile"))
                seen[str(row.trial_key)] = (ident, row.value)
    out: dict[tuple, list] = {}
    for key, (ident, value) in seen.items():
        out.setdefault(ident, []).append((_parse_value(value), last_val.get(key)))
    return out


def _parse_value(label: str) -> Any:
    try:
        number = float(label)
    except (TypeError, ValueError):
        return label
    return int(number) if number.is_integer() and "." not in label and "e" not in label.lower() else number


def probe_value(axis: Axis) -> Any:
    """A value of a search axis's range, for what does not depend on it (epochs, cost)."""
    if axis.distribution in ("uniform", "loguniform"):
        return axis.low
    return int(axis.low) if axis.distribution == "int" else axis.choices[0]

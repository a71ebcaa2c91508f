"""Reduce result rows to table cells: means over seeds of means over categories.

For a table row (an axis value) and a metric, each seed's score is the mean over the
categories of the requested group (texture, object or all); the cell is the mean of
those per-seed scores, with their sample standard deviation and the number of seeds.
Scores are in percent. Only ``status == "ok"`` trials count; when the same
(row, category, seed) was written more than once the latest ``created_at`` wins.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kdsearch.analysis.reference import RefAxis
from kdsearch.catalog import CATALOG, OBJECT, TEXTURE
from kdsearch.vocabulary import Status

# Rows without a kind of their own, and the category order of the tables, follow MVTec AD,
# the dataset of every paper's main tables.
_MVTEC = CATALOG["mvtec"]


@dataclass(frozen=True)
class Stat:
    """A measured cell in percent: mean over seeds, sample std (None for one seed), n seeds."""

    mean: float | None = None
    std: float | None = None
    n: int = 0

    @property
    def present(self) -> bool:
        """Whether anything was measured."""
        return self.mean is not None


@dataclass
class Prepared:
    """The usable trials of one axis, matched to the reference's row labels.

    Attributes:
        frame: ``ok`` trials, one per (row, category, seed), with columns ``row``
            (the reference row key the value matched, else the value itself),
            ``kind`` (texture/object/None) and the metric columns.
        not_ok: Per row, counts of the latest trials that failed or diverged.
        superseded: Number of older trials replaced by a later one of the same cell.
        numeric: Per row, its numeric value when it has one.
    """

    frame: pd.DataFrame
    not_ok: dict[str, Counter] = field(default_factory=dict)
    superseded: int = 0
    numeric: dict[str, float] = field(default_factory=dict)


def as_number(text: str) -> float | None:
    """Parse a row label as a number, or None."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _norm(text: str) -> str:
    return "".join(text.lower().split())


def match_row(value: str, value_numeric: float | None, keys: list[str],
              aliases: dict[str, str] | None = None) -> str:
    """Map a measured axis value to a reference row key.

    Tried in turn: the key itself, an alias, the same number, the same text ignoring
    case and spaces (key or alias); otherwise the value stays its own row.
    """
    aliases = aliases or {}
    if value in keys:
        return value
    if value in aliases:
        return aliases[value]
    if value_numeric is not None and not math.isnan(value_numeric):
        for key in keys:
            number = as_number(key)
            if number is not None and math.isclose(number, value_numeric, rel_tol=1e-9, abs_tol=1e-12):
                return key
    loose = {_norm(k): k for k in keys} | {_norm(a): k for a, k in aliases.items()}
    return loose.get(_norm(value), value)


def _kind(category: str, given: object) -> str | None:
    if isinstance(given, str) and given in (TEXTURE, OBJECT):
        return given
    return _MVTEC.published_kind(category)


def prepare(frame: pd.DataFrame, axis: RefAxis) -> Prepared:
    """Select the usable trials of one axis (one dataset and profile) and match their rows.

    Args:
        frame: Rows of :func:`kdsearch.results.read_results` for one paper, axis,
            dataset and profile.
        axis: The paper's axis (may have no rows).

    Returns:
        The prepared trials.
    """
    keys = list(axis.rows)
    if frame.empty:
        return Prepared(frame=frame.assign(row=pd.Series(dtype=object), kind=pd.Series(dtype=object)))
    frame = frame.copy()
    numerics = [None if pd.isna(x) else float(x) for x in frame["value_numeric"]]
    aliases = axis.aliases()
    frame["row"] = [match_row(str(v), n, keys, aliases) for v, n in zip(frame["value"], numerics)]
    frame["kind"] = [_kind(c, k) for c, k in zip(frame["category"], frame["category_kind"])]
    numeric: dict[str, float] = {}
    for row, number in zip(frame["row"], numerics):
        if number is not None:
            numeric.setdefault(row, number)
    frame = frame.sort_values("created_at", kind="stable")
    latest = frame.drop_duplicates(subset=["row", "category", "seed"], keep="last")
    superseded = len(frame) - len(latest)
    not_ok: dict[str, Counter] = {}
    for row, status in zip(latest["row"], latest["status"]):
        if status != Status.OK:
            not_ok.setdefault(row, Counter())[status] += 1
    return Prepared(frame=latest[latest["status"] == Status.OK], not_ok=not_ok, superseded=superseded, numeric=numeric)


def _stat(values: list[float]) -> Stat:
    if not values:
        return Stat()
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return Stat(mean=float(arr.mean()), std=std, n=len(arr))


def _in_group(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    return frame if group == "mean" else frame[frame["kind"] == group]


def group_stats(prepared: Prepared, column: str, group: str = "mean") -> dict[str, tuple[Stat, int]]:
    """Per row: the cell statistic and the number of categories it covers.

    Args:
        prepared: Output of :func:`prepare`.
        column: The results column (``image_auroc``, ``au_pro_rd4ad``...).
        group: ``"texture"``, ``"object"`` or ``"mean"`` (all categories).

    Returns:
        ``{row: (Stat, n_categories)}`` for rows with at least one finite value.
    """
    frame = _in_group(prepared.frame, group)
    if frame.empty or column not in frame:
        return {}
    frame = frame[np.isfinite(frame[column].astype(float))]
    out: dict[str, tuple[Stat, int]] = {}
    for row, part in frame.groupby("row", sort=False):
        per_seed = part.groupby("seed")[column].mean() * 100.0
        out[str(row)] = (_stat(per_seed.tolist()), int(part["category"].nunique()))
    return out


def cell_scores(prepared: Prepared, column: str, group: str = "mean") -> dict[str, dict[tuple[int, str], float]]:
    """Per row: every measured (seed, category) cell of the group, in percent (for paired comparisons)."""
    frame = _in_group(prepared.frame, group)
    if frame.empty or column not in frame:
        return {}
    frame = frame[np.isfinite(frame[column].astype(float))]
    out: dict[str, dict[tuple[int, str], float]] = {}
    for row, seed, category, value in zip(frame["row"], frame["seed"], frame["category"], frame[column]):
        out.setdefault(str(row), {})[(int(seed), str(category))] = float(value) * 100.0
    return out


def category_stats(prepared: Prepared, column: str) -> dict[tuple[str, str], Stat]:
    """Per (row, category): mean over seeds with std and n."""
    frame = prepared.frame
    if frame.empty or column not in frame:
        return {}
    frame = frame[np.isfinite(frame[column].astype(float))]
    out = {}
    for (row, cat), part in frame.groupby(["row", "category"], sort=False):
        out[(str(row), str(cat))] = _stat((part[column] * 100.0).tolist())
    return out


def row_order(axis: RefAxis, prepared: Prepared) -> list[str]:
    """Rows to render: the paper's rows in its order, then measured extras.

    On a numeric axis (declared, or every row parses as a number) all rows are sorted
    by value, so a measured 0.3 lands between the paper's 0.2 and 0.4.
    """
    keys = list(axis.rows)
    measured = dict.fromkeys(prepared.frame["row"].astype(str)) if len(prepared.frame) else {}
    extras = [r for r in measured if r not in axis.rows]
    extras += [r for r in prepared.not_ok if r not in axis.rows and r not in extras]

    def number(row: str) -> float | None:
        return prepared.numeric.get(row, as_number(row))

    rows = keys + extras
    if axis.numeric or (rows and all(number(r) is not None for r in rows)):
        return sorted(rows, key=lambda r: (number(r) is None, number(r) or 0.0))
    return keys + sorted(extras)


def categories_in_order(axis: RefAxis, prepared: Prepared) -> list[str]:
    """Categories to list: the paper's (MVTec order), then any other measured ones."""
    measured = set(prepared.frame["category"].astype(str)) if len(prepared.frame) else set()
    known = [c for c in (*_MVTEC.texture_categories, *_MVTEC.object_categories) if c in measured or c in axis.categories()]
    rest = sorted((measured | set(axis.categories())) - set(known))
    return known + rest


def kind_of(category: str, prepared: Prepared) -> str | None:
    """The category's kind as recorded in the results (or from the MVTec split)."""
    frame = prepared.frame
    if len(frame):
        kinds = frame.loc[frame["category"] == category, "kind"].dropna()
        if len(kinds):
            return str(kinds.iloc[0])
    return _kind(category, None)

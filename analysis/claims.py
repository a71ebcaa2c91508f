"""Check a paper's ablation conclusions against numbers: holds / does not hold / not enough data.

Claim kinds (all strict, per metric; a claim over several metrics holds only if it
holds on each):

- ``beats``: every ``better`` row exceeds every ``worse`` row (or each listed pair).
- ``best``: the highest row among ``among`` (default: every row with a number) is
  one of ``better``.
- ``increasing``: ``rows`` increase strictly in the listed order.
- ``within``: ``rows`` span at most ``tolerance`` percentage points.

Missing numbers give "not enough data" unless the numbers present already refute it.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from analysis.reference import METRIC_LABELS, Claim

HOLDS = "holds"
FAILS = "does not hold"
UNKNOWN = "not enough data"

Lookup = Callable[[str, str], float | None]
"""``lookup(row, metric) -> value in percent or None``."""


@dataclass(frozen=True)
class Verdict:
    """Outcome of one claim against one set of numbers."""

    verdict: str
    evidence: str


def _combine(verdicts: list[str]) -> str:
    if FAILS in verdicts:
        return FAILS
    if UNKNOWN in verdicts:
        return UNKNOWN
    return HOLDS


def _pairs_verdict(pairs: list[tuple[str, str]], get: Callable[[str], float | None]) -> str:
    out = []
    for better, worse in pairs:
        b, w = get(better), get(worse)
        out.append(UNKNOWN if b is None or w is None else (HOLDS if b > w else FAILS))
    return _combine(out)


def _one_metric(claim: Claim, get: Callable[[str], float | None], all_rows: list[str],
                show: Callable[[str], str]) -> tuple[str, str]:
    """Verdict for one metric and the numbers behind it (``show(row)`` formats a row)."""
    def listing(rows: Sequence[str]) -> str:
        return ", ".join(map(show, rows))

    if claim.kind == "beats":
        if claim.pairs:
            pairs = list(claim.pairs)
            text = "; ".join(f"{show(b)} > {show(w)}" for b, w in pairs)
        else:
            pairs = list(itertools.product(claim.better, claim.worse))
            text = f"{listing(claim.better)} > {listing(claim.worse)}"
        return _pairs_verdict(pairs, get), text
    if claim.kind == "increasing":
        pairs = [(b, a) for a, b in zip(claim.rows, claim.rows[1:])]
        return _pairs_verdict(pairs, get), " < ".join(map(show, claim.rows))
    if claim.kind == "within":
        rows = list(claim.rows)
        values = [v for v in map(get, rows) if v is not None]
        text = f"{listing(rows)} (spread ≤ {claim.tolerance:g})"
        if len(values) >= 2 and max(values) - min(values) > claim.tolerance:
            return FAILS, text
        return (UNKNOWN if len(values) < len(rows) else HOLDS), text
    # best
    among = list(claim.among) if claim.among is not None else list(all_rows)
    others_rows = [r for r in among if r not in claim.better]
    text = f"best of {listing(claim.better)} vs {listing(others_rows)}"
    present = {r: v for r in [*claim.better, *others_rows] if (v := get(r)) is not None}
    top_better = max((present[r] for r in claim.better if r in present), default=None)
    others = [present[r] for r in others_rows if r in present]
    if top_better is None or not others:
        return UNKNOWN, text
    if max(others) >= top_better:
        return FAILS, text
    missing = claim.among is not None and any(r not in present for r in [*claim.better, *others_rows])
    return (UNKNOWN if missing else HOLDS), text


def evaluate(
    claim: Claim,
    lookup: Lookup,
    all_rows: list[str],
    label: Callable[[str], str],
    fmt: Callable[[str, str], str],
) -> Verdict:
    """Evaluate a claim on one set of numbers.

    Args:
        claim: The claim.
        lookup: ``lookup(row, metric)`` gives the number (percent) or None.
        all_rows: Every row of the axis (used by ``best`` without ``among``).
        label: Row key to display name.
        fmt: ``fmt(row, metric)`` gives the displayed number for the evidence.

    Returns:
        The verdict and a one-line evidence string with the numbers per metric.
    """
    verdicts, parts = [], []
    for metric in claim.metrics:
        verdict, numbers = _one_metric(
            claim, lambda r, m=metric: lookup(r, m), all_rows, lambda r, m=metric: f"{label(r)} {fmt(r, m)}")
        verdicts.append(verdict)
        mark = {HOLDS: "✓", FAILS: "✗", UNKNOWN: "?"}[verdict]
        parts.append(f"{METRIC_LABELS[metric]} {mark}: {numbers}")
    return Verdict(_combine(verdicts), "; ".join(parts))

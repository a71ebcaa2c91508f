"""Check a paper's ablation conclusions against numbers, with the evidence behind each verdict.

Claim kinds (per metric; a claim over several metrics holds only if it holds on each):

- ``beats``: every ``better`` row exceeds every ``worse`` row (or each listed pair).
- ``best``: the highest row among ``among`` (default: every row with a number) is
  one of ``better``: it exceeds each other row.
- ``increasing``: ``rows`` increase in the listed order (each pair of neighbours).
- ``within``: ``rows`` span at most ``tolerance`` percentage points. Its margin is the
  room left, ``tolerance`` − (highest row − lowest row), judged by the rule below.

Every comparison of two rows gives a margin (better − worse, percentage points). On the
paper's printed numbers the margin decides alone. On measured numbers it is the mean over
seeds of the paired per-seed difference (each seed's mean over the categories both rows
have), and its uncertainty is the standard error over seeds:

- two or more seeds: "holds" when the margin exceeds twice its standard error, "does not
  hold" when it is below minus twice, "within noise" otherwise;
- one seed: no noise estimate, so the verdict is "indicative (1 seed): holds" or
  "indicative (1 seed): does not hold".

Missing numbers give "not enough data" unless the numbers present already refute it.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kdsearch.analysis.reference import Claim
from kdsearch.vocabulary import METRIC_LABELS

HOLDS = "holds"
FAILS = "does not hold"
NOISE = "within noise"
UNKNOWN = "not enough data"
INDICATIVE = "indicative (1 seed)"
#: A margin counts when it exceeds this many standard errors.
SIGNIFICANCE = 2.0

Lookup = Callable[[str, str], float | None]
"""``lookup(row, metric) -> value in percent or None``."""


@dataclass(frozen=True)
class Comparison:
    """One row against another on one metric.

    Attributes:
        verdict: HOLDS, FAILS, NOISE or UNKNOWN.
        margin: better − worse in percentage points (None when a number is missing).
        error: standard error of the margin over seeds (None: no estimate).
        seeds: seeds the margin is paired over (0 for printed numbers).
    """

    verdict: str
    margin: float | None = None
    error: float | None = None
    seeds: int = 0

    def text(self) -> str:
        """``+1.20 ± 0.30 (3 seeds)``, ``+1.20 (1 seed)`` or ``+1.20``."""
        if self.margin is None:
            return "?"
        if self.error is not None:
            return f"{self.margin:+.2f} ± {self.error:.2f} ({self.seeds} seeds)"
        return f"{self.margin:+.2f}" + (f" ({self.seeds} seed{'s' if self.seeds != 1 else ''})" if self.seeds else "")


Compare = Callable[[str, str, str], Comparison]
"""``compare(better_row, worse_row, metric)``."""


def printed_comparison(lookup: Lookup) -> Compare:
    """Compare printed numbers: the sign of the difference decides."""
    def compare(better: str, worse: str, metric: str) -> Comparison:
        b, w = lookup(better, metric), lookup(worse, metric)
        if b is None or w is None:
            return Comparison(UNKNOWN)
        return Comparison(HOLDS if b > w else FAILS, b - w)
    return compare


def paired_seed_comparison(cells: Mapping[str, Mapping[str, Mapping[tuple[int, str], float]]]) -> Compare:
    """Compare measured rows by their paired per-seed differences.

    Args:
        cells: ``{metric: {row: {(seed, category): percent}}}``.
    """
    def compare(better: str, worse: str, metric: str) -> Comparison:
        a, b = cells.get(metric, {}).get(better, {}), cells.get(metric, {}).get(worse, {})
        per_seed: dict[int, list[float]] = {}
        for cell in a.keys() & b.keys():
            per_seed.setdefault(cell[0], []).append(a[cell] - b[cell])
        if not per_seed:
            return Comparison(UNKNOWN)
        diffs = [sum(v) / len(v) for v in per_seed.values()]
        n = len(diffs)
        margin = sum(diffs) / n
        if n == 1:
            return Comparison(HOLDS if margin > 0 else FAILS, margin, None, 1)
        error = math.sqrt(sum((d - margin) ** 2 for d in diffs) / (n - 1) / n)
        if error <= 1e-9 * max(1.0, abs(margin)):
            error = 0.0  # identical differences on every seed, up to float rounding
        if margin > SIGNIFICANCE * error and margin > 0:
            verdict = HOLDS
        elif margin < -SIGNIFICANCE * error:
            verdict = FAILS
        else:
            verdict = NOISE
        return Comparison(verdict, margin, error, n)
    return compare


@dataclass(frozen=True)
class Verdict:
    """Outcome of one claim against one set of numbers."""

    verdict: str
    evidence: str
    margin: str = ""


def _combine(verdicts: Sequence[str]) -> str:
    for verdict in (FAILS, UNKNOWN, NOISE):
        if verdict in verdicts:
            return verdict
    return HOLDS


def _tightest(comparisons: Sequence[Comparison]) -> Comparison | None:
    """The comparison closest to deciding the other way: smallest margin in standard errors."""
    known = [c for c in comparisons if c.margin is not None]
    if not known:
        return None

    def standard_errors(c: Comparison) -> tuple[float, float]:
        if c.error is not None and c.error > 1e-9 * max(1.0, abs(c.margin)):
            return c.margin / c.error, c.margin
        return (math.copysign(math.inf, c.margin) if c.margin else 0.0), c.margin

    return min(known, key=standard_errors)


def _room(tolerance: float, spread: Comparison) -> Comparison:
    """How far a spread (highest row − lowest row) stays below ``tolerance``, under the spread's own noise rule.

    Printed numbers and a single seed decide by the sign of the room alone; over seeds the
    room must exceed twice the spread's standard error to hold, or fall below minus twice
    to fail.
    """
    if spread.margin is None:
        return Comparison(UNKNOWN)
    room = tolerance - spread.margin
    if spread.error is None or spread.error == 0.0:
        verdict = HOLDS if room >= 0 else FAILS
    elif room > SIGNIFICANCE * spread.error:
        verdict = HOLDS
    elif room < -SIGNIFICANCE * spread.error:
        verdict = FAILS
    else:
        verdict = NOISE
    return Comparison(verdict, room, spread.error, spread.seeds)


def _one_metric(claim: Claim, metric: str, lookup: Lookup, compare: Compare, all_rows: list[str],
                show: Callable[[str], str]) -> tuple[str, str, Comparison | None]:
    """Verdict for one metric, the numbers behind it and the deciding comparison."""
    def listing(rows: Sequence[str]) -> str:
        return ", ".join(map(show, rows))

    def over(pairs: list[tuple[str, str]]) -> tuple[str, Comparison | None]:
        done = [compare(b, w, metric) for b, w in pairs]
        return _combine([c.verdict for c in done]), _tightest(done)

    if claim.kind == "beats":
        if claim.pairs:
            pairs = list(claim.pairs)
            text = "; ".join(f"{show(b)} > {show(w)}" for b, w in pairs)
        else:
            pairs = list(itertools.product(claim.better, claim.worse))
            text = f"{listing(claim.better)} > {listing(claim.worse)}"
        verdict, tight = over(pairs)
        return verdict, text, tight
    if claim.kind == "increasing":
        pairs = [(b, a) for a, b in zip(claim.rows, claim.rows[1:])]
        verdict, tight = over(pairs)
        return verdict, " < ".join(map(show, claim.rows)), tight
    if claim.kind == "within":
        rows = list(claim.rows)
        present = {r: v for r in rows if (v := lookup(r, metric)) is not None}
        text = f"{listing(rows)} (spread ≤ {claim.tolerance:g})"
        if len(present) < 2:
            return UNKNOWN, text, None
        room = _room(claim.tolerance, compare(max(present, key=present.__getitem__),
                                              min(present, key=present.__getitem__), metric))
        if room.verdict in (FAILS, UNKNOWN):
            return room.verdict, text, room
        return (UNKNOWN if len(present) < len(rows) else room.verdict), text, room
    # best: the highest better row must exceed every other row.
    among = list(claim.among) if claim.among is not None else list(all_rows)
    others_rows = [r for r in among if r not in claim.better]
    text = f"best of {listing(claim.better)} vs {listing(others_rows)}"
    present = {r: v for r in [*claim.better, *others_rows] if (v := lookup(r, metric)) is not None}
    candidates = [r for r in claim.better if r in present]
    others = [r for r in others_rows if r in present]
    if not candidates or not others:
        return UNKNOWN, text, None
    top = max(candidates, key=present.__getitem__)
    verdict, tight = over([(top, r) for r in others])
    missing = claim.among is not None and any(r not in present for r in [*claim.better, *others_rows])
    return (UNKNOWN if missing and verdict != FAILS else verdict), text, tight


def evaluate(
    claim: Claim,
    lookup: Lookup,
    all_rows: list[str],
    label: Callable[[str], str],
    fmt: Callable[[str, str], str],
    compare: Compare | None = None,
) -> Verdict:
    """Evaluate a claim on one set of numbers.

    Args:
        claim: The claim.
        lookup: ``lookup(row, metric)`` gives the number (percent) or None.
        all_rows: Every row of the axis (used by ``best`` without ``among``).
        label: Row key to display name.
        fmt: ``fmt(row, metric)`` gives the displayed number for the evidence.
        compare: how two rows are compared (default: the printed numbers' sign).

    Returns:
        The verdict, a one-line evidence string with the numbers per metric, and the
        deciding margin per metric with its uncertainty.
    """
    compare = compare or printed_comparison(lookup)
    verdicts, parts, margins, seeds = [], [], [], set()
    for metric in claim.metrics:
        verdict, numbers, tight = _one_metric(claim, metric, lookup, compare, all_rows,
                                              lambda r, m=metric: f"{label(r)} {fmt(r, m)}")
        verdicts.append(verdict)
        mark = {HOLDS: "✓", FAILS: "✗", NOISE: "≈", UNKNOWN: "?"}[verdict]
        parts.append(f"{METRIC_LABELS[metric]} {mark}: {numbers}")
        if tight is not None:
            margins.append(f"{METRIC_LABELS[metric]} {tight.text()}")
            seeds.add(tight.seeds)
    verdict = _combine(verdicts)
    if seeds == {1} and verdict in (HOLDS, FAILS):
        verdict = f"{INDICATIVE}: {verdict}"
    return Verdict(verdict, "; ".join(parts), "; ".join(margins))

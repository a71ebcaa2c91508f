"""Claim verdicts account for noise: holds, does not hold, within noise, indicative (1 seed)."""
from __future__ import annotations

import pytest

from kdsearch.analysis import claims
from kdsearch.analysis.reference import Claim


def _cells(rows: dict[str, list[float]], categories: tuple[str, ...] = ("a",)) -> dict:
    """``{metric: {row: {(seed, category): percent}}}`` with one value per seed, equal over categories."""
    return {"image_auroc": {row: {(seed, c): v for seed, v in enumerate(values) for c in categories}
                            for row, values in rows.items()}}


def _verdict(rows: dict[str, list[float]], claim: Claim) -> claims.Verdict:
    cells = _cells(rows)
    means = {r: sum(v) / len(v) for r, v in rows.items()}
    return claims.evaluate(claim, lambda r, m: means.get(r), list(rows), str, lambda r, m: f"{means[r]:.1f}",
                           claims.paired_seed_comparison(cells))


BEATS = Claim(axis="x", text="A beats B", kind="beats", better=("A",), worse=("B",), metrics=("image_auroc",))


def test_a_margin_beyond_two_standard_errors_holds() -> None:
    verdict = _verdict({"A": [90.0, 91.0, 92.0], "B": [85.0, 85.5, 86.0]}, BEATS)
    assert verdict.verdict == claims.HOLDS
    assert verdict.margin == "I-AUROC +5.50 ± 0.29 (3 seeds)"


def test_a_negative_margin_beyond_noise_does_not_hold() -> None:
    assert _verdict({"A": [80.0, 81.0, 80.5], "B": [85.0, 85.5, 86.0]}, BEATS).verdict == claims.FAILS


def test_a_small_margin_with_spread_is_within_noise() -> None:
    verdict = _verdict({"A": [90.0, 86.0, 91.0], "B": [89.0, 88.0, 89.5]}, BEATS)
    assert verdict.verdict == claims.NOISE and "≈" in verdict.evidence
    # Unpaired, the same numbers would look like A > B (means 89.0 vs 88.8).


def test_one_seed_is_only_indicative() -> None:
    assert _verdict({"A": [90.0], "B": [89.9]}, BEATS).verdict == "indicative (1 seed): holds"
    assert _verdict({"A": [89.0], "B": [89.9]}, BEATS).verdict == "indicative (1 seed): does not hold"
    assert _verdict({"A": [90.0], "B": [89.9]}, BEATS).margin == "I-AUROC +0.10 (1 seed)"


def test_pairs_are_matched_by_seed_and_category() -> None:
    # Seed 2 only in A: not part of the paired margin.
    cells = {"image_auroc": {"A": {(0, "a"): 90.0, (1, "a"): 91.0, (2, "a"): 10.0},
                             "B": {(0, "a"): 89.0, (1, "a"): 90.0}}}
    compare = claims.paired_seed_comparison(cells)
    result = compare("A", "B", "image_auroc")
    assert (result.margin, result.error, result.seeds) == (pytest.approx(1.0), pytest.approx(0.0), 2)
    assert compare("A", "C", "image_auroc").verdict == claims.UNKNOWN


def test_best_and_increasing_use_the_same_noise_rule() -> None:
    best = Claim(axis="x", text="A is best", kind="best", better=("A",), metrics=("image_auroc",))
    assert _verdict({"A": [90.0, 91.0], "B": [80.0, 81.0], "C": [70.0, 71.5]}, best).verdict == claims.HOLDS
    assert _verdict({"A": [90.0, 85.0], "B": [88.0, 88.5]}, best).verdict == claims.NOISE
    increasing = Claim(axis="x", text="up", kind="increasing", rows=("B", "A"), metrics=("image_auroc",))
    assert _verdict({"A": [90.0, 91.0], "B": [80.0, 81.0]}, increasing).verdict == claims.HOLDS


def test_printed_numbers_compare_by_sign_alone() -> None:
    printed = {"A": 90.0, "B": 89.9}
    verdict = claims.evaluate(BEATS, lambda r, m: printed.get(r), list(printed), str, lambda r, m: str(printed[r]))
    assert verdict.verdict == claims.HOLDS and verdict.margin == "I-AUROC +0.10"


WITHIN = Claim(axis="x", text="A, B and C are alike", kind="within", rows=("A", "B", "C"), tolerance=0.5,
               metrics=("image_auroc",))


def test_a_spread_claim_uses_the_same_noise_rule() -> None:
    # The room left below the tolerance is the margin: 0.5 - (90.2 - 90.0) on every seed.
    steady = _verdict({"A": [90.0, 91.0, 92.0], "B": [90.2, 91.2, 92.2], "C": [90.1, 91.1, 92.1]}, WITHIN)
    assert steady.verdict == claims.HOLDS and steady.margin == "I-AUROC +0.30 ± 0.00 (3 seeds)"
    # Means 0.3 apart, but the seeds disagree on which row is higher: within noise, not "holds".
    noisy = _verdict({"A": [90.0, 92.0, 88.9], "B": [91.0, 89.0, 91.8], "C": [90.3, 90.3, 90.3]}, WITHIN)
    assert noisy.verdict == claims.NOISE and "≈" in noisy.evidence
    wide = _verdict({"A": [80.0, 81.0, 80.5], "B": [90.0, 91.0, 90.5], "C": [85.0, 86.0, 85.5]}, WITHIN)
    assert wide.verdict == claims.FAILS and wide.margin == "I-AUROC -9.50 ± 0.00 (3 seeds)"


def test_a_spread_claim_on_one_seed_is_only_indicative() -> None:
    assert _verdict({"A": [90.0], "B": [90.2], "C": [90.1]}, WITHIN).verdict == "indicative (1 seed): holds"
    wide = _verdict({"A": [54.5], "B": [56.0], "C": [54.0]}, WITHIN)
    assert wide.verdict == "indicative (1 seed): does not hold" and wide.margin == "I-AUROC -1.50 (1 seed)"


def test_a_printed_spread_decides_by_the_room_alone() -> None:
    printed = {"A": 98.9, "B": 98.9, "C": 98.8}
    verdict = claims.evaluate(WITHIN, lambda r, m: printed.get(r), list(printed), str, lambda r, m: str(printed[r]))
    assert verdict.verdict == claims.HOLDS and verdict.margin == "I-AUROC +0.40"

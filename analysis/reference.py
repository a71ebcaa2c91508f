"""Load and check ``analysis/reference/<paper>.yaml``: the papers' printed numbers.

Each file holds one paper's ablation tables (``axes``), its main MVTec AD results
(``main_results``, exposed as the axis ``main`` with the single row ``default``) and
its ablation conclusions (``claims``). Values are percentages as printed; an explicit
``null`` (or a row marked ``unreadable: true``) means the text copy does not allow
reading it, an absent metric means the paper does not report it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdsearch.catalog import CATALOG
from kdsearch.vocabulary import TEST_METRICS

METRICS = tuple(m for m in TEST_METRICS if m != "au_pro_rd4ad")  # the protocol is a separate axis here
GROUPS = ("texture", "object", "mean")
PROTOCOLS = ("mvtec", "rd4ad")
CLAIM_KINDS = ("beats", "best", "increasing", "within")
MAIN_AXIS = "main"
# The published datasets a paper's numbers can be on; of MVTec 3D-AD only the RGB images are read.
DATASET_TITLES = {name: facts.title for name, facts in CATALOG.items() if name != "synthetic"} | {
    "mvtec3d": f"{CATALOG['mvtec3d'].title} (RGB)"}
MAIN_ROW = "default"

_PAPER_KEYS = {
    "paper", "title", "dataset", "decimals", "au_pro_protocol", "au_pro_protocol_reason",
    "axes", "main_results", "claims", "complexity",
}
_AXIS_KEYS = {"source", "caption", "metrics", "groups", "numeric", "note", "baseline", "reconstructed", "rows"}
_ROW_KEYS = {"label", "aliases", "source", "unreadable", "note", "categories", *GROUPS}
_MAIN_KEYS = {"source", "label", "metrics", "groups", "note", "categories", *GROUPS}
_CLAIM_KEYS = {
    "axis", "text", "source", "kind", "better", "worse", "pairs", "among", "rows",
    "tolerance", "group", "metrics", "note",
}


class ReferenceError(ValueError):
    """A reference file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class RefRow:
    """One row of a paper's table.

    Attributes:
        key: The axis value label used in the results (``value`` column).
        label: How the paper names the row.
        aliases: Other ``value`` labels that mean this row (e.g. the paper's check marks).
        source: Where the numbers are printed (table, row, column).
        unreadable: Whole row not readable in the text copy.
        values: ``{group: {metric: value or None}}``; None = unreadable.
        categories: ``{category: {metric: value or None}}``.
        note: Free text.
    """

    key: str
    label: str
    aliases: tuple[str, ...] = ()
    source: str = ""
    unreadable: bool = False
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)
    categories: dict[str, dict[str, float | None]] = field(default_factory=dict)
    note: str = ""

    def lookup(self, metric: str, group: str = "mean", category: str | None = None) -> tuple[float | None, bool]:
        """Return ``(value, unreadable)`` for a metric of a group or a category."""
        if self.unreadable:
            return None, True
        table = self.categories.get(category, {}) if category is not None else self.values.get(group, {})
        if metric not in table:
            return None, False
        value = table[metric]
        return value, value is None


@dataclass(frozen=True)
class RefAxis:
    """One ablation axis: the paper's table or figure for it."""

    name: str
    source: str = ""
    caption: str = ""
    metrics: tuple[str, ...] = METRICS
    groups: tuple[str, ...] = ("mean",)
    numeric: bool = False
    note: str = ""
    baseline: str = ""
    reconstructed: str = ""
    rows: dict[str, RefRow] = field(default_factory=dict)

    def aliases(self) -> dict[str, str]:
        """Alias label -> row key."""
        return {alias: row.key for row in self.rows.values() for alias in row.aliases}

    def categories(self) -> list[str]:
        """Categories with per-category paper values, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows.values():
            for cat in row.categories:
                seen.setdefault(cat, None)
        return list(seen)


@dataclass(frozen=True)
class Claim:
    """An ablation conclusion of the paper, as data (see :mod:`analysis.claims`)."""

    axis: str
    text: str
    kind: str = "beats"
    source: str = ""
    better: tuple[str, ...] = ()
    worse: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    among: tuple[str, ...] | None = None
    rows: tuple[str, ...] = ()
    tolerance: float = 0.0
    group: str = "mean"
    metrics: tuple[str, ...] = ("image_auroc",)
    note: str = ""


@dataclass(frozen=True)
class Reference:
    """Everything known about one paper's printed numbers."""

    paper: str
    title: str = ""
    dataset: str = "mvtec"
    decimals: int = 1
    au_pro_protocol: str = "mvtec"
    au_pro_protocol_reason: str = ""
    axes: dict[str, RefAxis] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()

    def column(self, metric: str) -> str:
        """The results column that the paper's ``metric`` is compared with."""
        if metric == "au_pro" and self.au_pro_protocol == "rd4ad":
            return "au_pro_rd4ad"
        return metric


def _fail(where: str, message: str) -> None:
    raise ReferenceError(f"{where}: {message}")


def _check_keys(where: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        _fail(where, f"expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return data


def _metric_table(where: str, data: Any) -> dict[str, float | None]:
    data = _check_keys(where, data, set(METRICS))
    out: dict[str, float | None] = {}
    for metric, value in data.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and (not number or not math.isfinite(value)):
            _fail(where, f"{metric} must be a number or null, got {value!r}")
        if value is not None and not 0 <= value <= 100:
            _fail(where, f"{metric}={value} is not a percentage")
        out[metric] = None if value is None else float(value)
    return out


def _row(where: str, key: str, data: Any, allowed: set[str] = _ROW_KEYS) -> RefRow:
    data = _check_keys(where, data, allowed)
    values = {g: _metric_table(f"{where}.{g}", data[g]) for g in GROUPS if g in data}
    cats = data.get("categories") or {}
    categories = {str(c): _metric_table(f"{where}.categories.{c}", v) for c, v in _check_keys(
        f"{where}.categories", cats, set(map(str, cats))).items()}
    return RefRow(
        key=key,
        label=str(data.get("label", key)),
        aliases=_str_tuple(f"{where}.aliases", data.get("aliases")),
        source=str(data.get("source", "")),
        unreadable=bool(data.get("unreadable", False)),
        values=values,
        categories=categories,
        note=str(data.get("note", "")),
    )


def _names(where: str, data: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(data, list) or not data:
        _fail(where, f"expected a non-empty list of {list(allowed)}")
    bad = [x for x in data if x not in allowed]
    if bad:
        _fail(where, f"unknown name(s) {bad}; allowed: {list(allowed)}")
    return tuple(data)


def _axis(where: str, name: str, data: Any) -> RefAxis:
    data = _check_keys(where, data, _AXIS_KEYS)
    rows_data = data.get("rows") or {}
    if not isinstance(rows_data, dict):
        _fail(f"{where}.rows", "expected a mapping of row label to values")
    rows = {str(k): _row(f"{where}.rows[{k!r}]", str(k), v) for k, v in rows_data.items()}
    return RefAxis(
        name=name,
        source=str(data.get("source", "")),
        caption=str(data.get("caption", "")),
        metrics=_names(f"{where}.metrics", data.get("metrics", list(METRICS)), METRICS),
        groups=_names(f"{where}.groups", data.get("groups", ["mean"]), GROUPS),
        numeric=bool(data.get("numeric", False)),
        note=str(data.get("note", "")),
        baseline=str(data.get("baseline", "")),
        reconstructed=str(data.get("reconstructed", "")),
        rows=rows,
    )


def _main_axis(where: str, data: Any, dataset: str) -> RefAxis:
    data = _check_keys(where, data, _MAIN_KEYS)
    row_data = {k: v for k, v in data.items() if k in {"label", "source", "note", "categories", *GROUPS}}
    return RefAxis(
        name=MAIN_AXIS,
        source=str(data.get("source", "")),
        caption=f"The paper's main results on {DATASET_TITLES.get(dataset, dataset)}.",
        metrics=_names(f"{where}.metrics", data.get("metrics", list(METRICS)), METRICS),
        groups=_names(f"{where}.groups", data.get("groups", ["mean"]), GROUPS),
        note=str(data.get("note", "")),
        rows={MAIN_ROW: _row(f"{where}", MAIN_ROW, row_data)},
    )


def _str_tuple(where: str, data: Any) -> tuple[str, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        _fail(where, "expected a list of quoted row labels")
    return tuple(data)


def _claim(where: str, data: Any, axes: dict[str, RefAxis]) -> Claim:
    data = _check_keys(where, data, _CLAIM_KEYS)
    axis = str(data.get("axis", ""))
    if axis not in axes:
        _fail(where, f"axis {axis!r} is not among the paper's axes {sorted(axes)}")
    kind = str(data.get("kind", "beats"))
    if kind not in CLAIM_KINDS:
        _fail(where, f"kind {kind!r} is not one of {CLAIM_KINDS}")
    pairs_data = data.get("pairs") or []
    if not isinstance(pairs_data, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs_data):
        _fail(f"{where}.pairs", "expected a list of [better, worse] pairs")
    claim = Claim(
        axis=axis,
        text=str(data.get("text", "")),
        kind=kind,
        source=str(data.get("source", "")),
        better=_str_tuple(f"{where}.better", data.get("better")),
        worse=_str_tuple(f"{where}.worse", data.get("worse")),
        pairs=tuple((str(a), str(b)) for a, b in pairs_data),
        among=_str_tuple(f"{where}.among", data["among"]) if data.get("among") is not None else None,
        rows=_str_tuple(f"{where}.rows", data.get("rows")),
        tolerance=float(data.get("tolerance", 0.0)),
        group=str(data.get("group", "mean")),
        metrics=_names(f"{where}.metrics", data.get("metrics", ["image_auroc"]), METRICS),
        note=str(data.get("note", "")),
    )
    if claim.group not in GROUPS:
        _fail(where, f"group {claim.group!r} is not one of {GROUPS}")
    needs = {
        "beats": bool(claim.pairs) or (bool(claim.better) and bool(claim.worse)),
        "best": bool(claim.better),
        "increasing": len(claim.rows) >= 2,
        "within": len(claim.rows) >= 2,
    }
    if not needs[kind]:
        _fail(where, f"a {kind!r} claim needs " + {
            "beats": "`better` and `worse` (or `pairs`)", "best": "`better`",
            "increasing": "`rows` (two or more)", "within": "`rows` (two or more)"}[kind])
    known = set(axes[axis].rows)
    named = {*claim.better, *claim.worse, *(x for p in claim.pairs for x in p), *(claim.among or ()), *claim.rows}
    unknown = sorted(named - known)
    if unknown:
        _fail(where, f"row(s) {unknown} are not rows of axis {axis!r}: {sorted(known)}")
    return claim


def load_reference(path: str | Path) -> Reference:
    """Load and check one reference file.

    Args:
        path: The YAML file.

    Returns:
        The parsed reference.

    Raises:
        ReferenceError: If the file is unreadable, malformed or inconsistent.
    """
    path = Path(path)
    where = path.name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ReferenceError(f"{where}: cannot read: {exc}") from exc
    data = _check_keys(where, data, _PAPER_KEYS)
    paper = str(data.get("paper", path.stem))
    protocol = str(data.get("au_pro_protocol", "mvtec"))
    if protocol not in PROTOCOLS:
        _fail(where, f"au_pro_protocol {protocol!r} is not one of {PROTOCOLS}")
    axes_data = data.get("axes") or {}
    if not isinstance(axes_data, dict):
        _fail(f"{where}.axes", "expected a mapping")
    axes = {str(k): _axis(f"{where}.axes.{k}", str(k), v) for k, v in axes_data.items()}
    if "main_results" in data:
        axes[MAIN_AXIS] = _main_axis(f"{where}.main_results", data["main_results"], str(data.get("dataset", "mvtec")))
    claims = tuple(_claim(f"{where}.claims[{i}]", c, axes) for i, c in enumerate(data.get("claims") or []))
    return Reference(
        paper=paper,
        title=str(data.get("title", "")),
        dataset=str(data.get("dataset", "mvtec")),
        decimals=int(data.get("decimals", 1)),
        au_pro_protocol=protocol,
        au_pro_protocol_reason=str(data.get("au_pro_protocol_reason", "")),
        axes=axes,
        claims=claims,
    )


def load_reference_sets(directory: str | Path) -> dict[str, dict[str, Reference]]:
    """Load every ``*.yaml`` in a directory: ``{paper: {dataset: reference}}``.

    A paper's ablation tables and main results on its main dataset live in
    ``<paper>.yaml``; its tables on other datasets in ``<paper>_<dataset>.yaml``.
    """
    sets: dict[str, dict[str, Reference]] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        ref = load_reference(path)
        datasets = sets.setdefault(ref.paper, {})
        if ref.dataset in datasets:
            raise ReferenceError(f"{path.name}: a second reference for paper {ref.paper!r} on {ref.dataset!r}")
        datasets[ref.dataset] = ref
    return sets

"""Assemble the paper-shaped tables (axis, per-category, claims) from measured cells."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from kdsearch.analysis import aggregate, claims
from kdsearch.analysis.aggregate import Prepared, Stat
from kdsearch.analysis.reference import DATASET_TITLES, RefAxis, Reference
from kdsearch.vocabulary import METRIC_LABELS
from kdsearch.analysis.render import Table

MISSING = "—"
UNREADABLE = "?"
GROUP_LABELS = {"texture": "Texture", "object": "Object", "mean": "Mean"}


@dataclass(frozen=True)
class Context:
    """Which slice of the results a table shows."""

    ref: Reference
    axis: RefAxis
    prepared: Prepared
    dataset: str
    profile: str

    @property
    def slug(self) -> str:
        """File stem for this paper, axis, dataset and profile."""
        return slugify(f"{self.ref.paper}_{self.axis.name}_{self.dataset}_{self.profile}")


def slugify(text: str) -> str:
    """A file-name-safe version of text."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "table"


def fmt_stat(stat: Stat | None) -> str:
    """``mean`` for one seed, ``mean ± std (n=k)`` for several, ``—`` for none."""
    if stat is None or stat.mean is None:
        return MISSING
    if stat.n > 1 and stat.std is not None:
        return f"{stat.mean:.2f} ± {stat.std:.2f} (n={stat.n})"
    return f"{stat.mean:.2f}"


def fmt_paper(value: float | None, unreadable: bool, decimals: int) -> str:
    """The paper's number as printed, ``?`` if unreadable, ``—`` if not reported."""
    if unreadable:
        return UNREADABLE
    return MISSING if value is None else f"{value:.{decimals}f}"


def delta(stat: Stat | None, paper: float | None) -> float | None:
    """Ours minus paper, in percentage points."""
    if stat is None or stat.mean is None or paper is None:
        return None
    return stat.mean - paper


def fmt_delta(value: float | None) -> str:
    """Signed difference or ``—``."""
    return MISSING if value is None else f"{value:+.2f}"


def row_label(axis: RefAxis, key: str) -> str:
    """How the paper names a row (the value itself for rows the paper lacks)."""
    return axis.rows[key].label if key in axis.rows else key


def _paper(axis: RefAxis, key: str, metric: str, group: str = "mean",
           category: str | None = None) -> tuple[float | None, bool]:
    if key not in axis.rows:
        return None, False
    return axis.rows[key].lookup(metric, group, category)


def captions(ctx: Context) -> list[str]:
    """Source, method of aggregation, AU-PRO protocol and notes for one axis."""
    ref, axis, prep = ctx.ref, ctx.axis, ctx.prepared
    lines = []
    head = f"{ref.paper.upper()} {axis.source}".strip()
    lines.append(f"{head}: {axis.caption}" if axis.caption else head)
    lines.append(
        "Ours: mean over seeds of the mean over categories, ± sample std over seeds and n seeds "
        f"when several; paper: as printed ({DATASET_TITLES.get(ref.dataset, ref.dataset)}); Δ = ours − paper, "
        "percentage points; "
        f"{MISSING} = no number."
    )
    if "au_pro" in axis.metrics:
        which = "the RD4AD code's protocol" if ref.au_pro_protocol == "rd4ad" else "the MVTec AD definition"
        lines.append(f"AU-PRO: the paper's numbers follow {which}; ours is column `{ref.column('au_pro')}`.")
    if ctx.dataset not in (ref.dataset, MISSING):
        lines.append(f"Measured on dataset `{ctx.dataset}`, the paper on `{ref.dataset}`: Δ compares different data.")
    if any(r.unreadable for r in axis.rows.values()) or any(
        v is None for r in axis.rows.values() for t in (*r.values.values(), *r.categories.values()) for v in t.values()
    ):
        lines.append(f"{UNREADABLE} = unreadable in the paper's text copy.")
    if axis.note:
        lines.append(f"Note: {axis.note}")
    if axis.baseline:
        lines.append(f"Baseline: {axis.baseline}")
    if axis.reconstructed:
        lines.append(f"Paper values reconstructed: {axis.reconstructed}")
    if prep.not_ok:
        parts = [f"{row_label(axis, r)}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
                 for r, c in prep.not_ok.items()]
        lines.append("Not in the means (latest trial not ok): " + "; ".join(parts) + ".")
    if prep.superseded:
        lines.append(f"{prep.superseded} older trial(s) of the same row, category and seed were superseded by later ones.")
    return lines + numerics_captions(prep.frame)


def numerics_captions(frame) -> list[str]:
    """How the table's rows were computed, and a warning when they mix precisions: bf16 and
    fp32 move a pixel AUROC by points, so a difference between such rows is no ablation."""
    if frame.empty:
        return []
    # Every row read from the results has these columns; a row written before them holds nulls.
    columns = ("precision", "memory_format", "device_model", "torch_version")
    combos = Counter(tuple(v if isinstance(v, str) else "?" for v in values)
                     for values in zip(*(frame[c] for c in columns)))
    said = "; ".join(f"{n} row(s) in {' · '.join(combo)}" for combo, n in combos.most_common())
    lines = [f"Computed in (precision · memory format · device · torch): {said}."]
    precisions = Counter(p if isinstance(p, str) else "unknown" for p in frame["precision"])
    if len(precisions) > 1:
        counts = ", ".join(f"{p}: {n}" for p, n in sorted(precisions.items()))
        lines.append(f"WARNING: this table mixes precisions ({counts}); differences between its rows mix the "
                     f"setting with the numerics. Rerun the odd rows with --set precision=... into this folder.")
    return lines


def _record(ctx: Context, key: str, metric: str, stat: Stat | None, paper: float | None,
            unreadable: bool, group: str = "", category: str = "", n_categories: int | None = None) -> dict[str, object]:
    d = delta(stat, paper)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    return {
        "paper": ctx.ref.paper, "dataset": ctx.dataset, "profile": ctx.profile, "axis": ctx.axis.name,
        "value": key, "label": row_label(ctx.axis, key), "group": group, "category": category,
        "metric": metric, "column": ctx.ref.column(metric),
        "ours_mean": None if stat is None else r(stat.mean), "ours_std": None if stat is None else r(stat.std),
        "n_seeds": 0 if stat is None else stat.n, "n_categories": n_categories,
        "paper_value": paper, "paper_unreadable": unreadable, "delta": r(d),
        "source": ctx.axis.rows[key].source if key in ctx.axis.rows else "",
    }


def axis_table(ctx: Context) -> Table:
    """The paper's table for one axis: rows in the paper's order, per metric ours / paper / Δ."""
    axis, ref = ctx.axis, ctx.ref
    grouped = axis.groups != ("mean",)
    stats = {(m, g): aggregate.group_stats(ctx.prepared, ref.column(m), g) for m in axis.metrics for g in axis.groups}
    header = [axis.name, *(["group"] if grouped else []), "cat."]
    for metric in axis.metrics:
        name = METRIC_LABELS[metric]
        header += [f"{name} ours", f"{name} paper", f"{name} Δ"]
    rows, records = [], []
    for key in aggregate.row_order(axis, ctx.prepared):
        for group in axis.groups:
            cells, n_cat = [], 0
            for metric in axis.metrics:
                stat, n = stats[(metric, group)].get(key, (None, 0))
                n_cat = max(n_cat, n)
                value, unreadable = _paper(axis, key, metric, group)
                cells += [fmt_stat(stat), fmt_paper(value, unreadable, ref.decimals), fmt_delta(delta(stat, value))]
                records.append(_record(ctx, key, metric, stat, value, unreadable, group=group, n_categories=n))
            lead = [row_label(axis, key), *([GROUP_LABELS[group]] if grouped else []), str(n_cat) if n_cat else MISSING]
            rows.append(lead + cells)
    title = f"{ref.paper} / {axis.name} ({axis.source or 'no paper table'}) · dataset {ctx.dataset}, profile {ctx.profile}"
    return Table(title=title, captions=captions(ctx), header=header, rows=rows, records=records, slug=ctx.slug)


def category_tables(ctx: Context) -> list[Table]:
    """One table per metric: categories down, the axis's rows across (ours / paper / Δ)."""
    axis, ref = ctx.axis, ctx.ref
    keys = aggregate.row_order(axis, ctx.prepared)
    cats = aggregate.categories_in_order(axis, ctx.prepared)
    tables = []
    for metric in axis.metrics:
        column = ref.column(metric)
        per_cat = aggregate.category_stats(ctx.prepared, column)
        means = aggregate.group_stats(ctx.prepared, column, "mean")
        header = ["category", "kind"]
        for key in keys:
            label = row_label(axis, key)
            header += [f"{label} ours", f"{label} paper", f"{label} Δ"]
        rows, records = [], []
        for cat in cats:
            cells = [cat, aggregate.kind_of(cat, ctx.prepared) or MISSING]
            for key in keys:
                stat = per_cat.get((key, cat))
                value, unreadable = _paper(axis, key, metric, category=cat)
                cells += [fmt_stat(stat), fmt_paper(value, unreadable, ref.decimals), fmt_delta(delta(stat, value))]
                records.append(_record(ctx, key, metric, stat, value, unreadable, category=cat,
                                       n_categories=1 if stat else 0))
            rows.append(cells)
        cells = ["mean", ""]
        for key in keys:
            stat = means.get(key, (None, 0))[0]
            value, unreadable = _paper(axis, key, metric)
            cells += [fmt_stat(stat), fmt_paper(value, unreadable, ref.decimals), fmt_delta(delta(stat, value))]
        rows.append(cells)
        title = (f"{ref.paper} / {axis.name} per category: {METRIC_LABELS[metric]} (column `{column}`) · "
                 f"dataset {ctx.dataset}, profile {ctx.profile}")
        caps = [f"{ref.paper.upper()} {axis.source}: per-category values; ours = mean over seeds (± std, n when several)."]
        tables.append(Table(title=title, captions=caps, header=header, rows=rows, records=records,
                            slug=f"{ctx.slug}_{metric}_per_category"))
    return tables


def _compact(stat: Stat | None) -> str:
    if stat is None or stat.mean is None:
        return MISSING
    return f"{stat.mean:.2f}±{stat.std:.2f}" if stat.std is not None else f"{stat.mean:.2f}"


def claims_table(ref: Reference, contexts: dict[str, Context], dataset: str, profile: str) -> Table:
    """The paper's ablation conclusions checked against our numbers and its own."""
    header = ["axis", "claim", "ours", "margin", "our numbers", "paper's own numbers", "source"]
    rows, records = [], []
    for claim in ref.claims:
        ctx = contexts[claim.axis]
        axis = ctx.axis
        stats = {m: aggregate.group_stats(ctx.prepared, ref.column(m), claim.group) for m in claim.metrics}
        cells = {m: aggregate.cell_scores(ctx.prepared, ref.column(m), claim.group) for m in claim.metrics}
        all_rows = aggregate.row_order(axis, ctx.prepared)

        def ours(row: str, metric: str) -> float | None:
            hit = stats[metric].get(row)
            return None if hit is None else hit[0].mean

        def ours_fmt(row: str, metric: str) -> str:
            hit = stats[metric].get(row)
            return _compact(None if hit is None else hit[0])

        def paper(row: str, metric: str) -> float | None:
            return _paper(axis, row, metric, claim.group)[0]

        def paper_fmt(row: str, metric: str) -> str:
            value, unreadable = _paper(axis, row, metric, claim.group)
            return fmt_paper(value, unreadable, ref.decimals)

        label = lambda r: row_label(axis, r)  # noqa: E731
        mine = claims.evaluate(claim, ours, all_rows, label, ours_fmt, claims.paired_seed_comparison(cells))
        theirs = claims.evaluate(claim, paper, list(axis.rows), label, paper_fmt)
        text = claim.text + ("" if claim.group == "mean" else f" [{claim.group}]")
        if claim.note:
            text += f" ({claim.note})"
        rows.append([claim.axis, text, mine.verdict, mine.margin or MISSING, mine.evidence,
                     f"{theirs.verdict}: {theirs.evidence}", claim.source])
        records.append({
            "paper": ref.paper, "dataset": dataset, "profile": profile, "axis": claim.axis, "claim": claim.text,
            "kind": claim.kind, "group": claim.group, "metrics": " ".join(claim.metrics),
            "verdict": mine.verdict, "margin": mine.margin, "evidence": mine.evidence,
            "paper_verdict": theirs.verdict, "paper_evidence": theirs.evidence, "source": claim.source,
        })
    caps = [
        "Each claim is checked per metric (✓ holds, ✗ does not, ≈ within noise, ? missing numbers); the verdict "
        "holds only if every metric does. Margin: the deciding comparison's better − worse in percentage points "
        "(for a spread claim, the room left below its tolerance), "
        "the mean over seeds of paired per-seed differences ± its standard error; it counts beyond "
        f"{claims.SIGNIFICANCE:g} standard errors, and with one seed the verdict is only indicative. "
        "The last columns check the paper's own printed numbers.",
    ]
    return Table(title=f"{ref.paper} claims · dataset {dataset}, profile {profile}", captions=caps,
                 header=header, rows=rows, records=records, slug=slugify(f"{ref.paper}_{dataset}_{profile}_claims"))

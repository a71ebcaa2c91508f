"""One self-contained HTML page of a paper's results: every table beside the paper's numbers,
the claims with their margins, and each axis's sweep plot and heat maps embedded as PNGs.

The page carries its style and its images (``data:`` URIs), so it opens offline, from an
e-mail attachment or a shared drive, exactly as written.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Sequence

import pandas as pd

from kdsearch.analysis.assemble import Context
from kdsearch.analysis.render import Section, html_table
from kdsearch.vocabulary import Status

_STYLE = """
:root { color-scheme: light; --ink: #1d2430; --muted: #5b6576; --rule: #d8dde6; --band: #f4f6f9; --accent: #2f5d9e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); }
header { background: var(--band); border-bottom: 1px solid var(--rule); padding: 1.2rem 2rem; }
header h1 { margin: 0 0 .5rem; font-size: 1.5rem; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; }
header dt { color: var(--muted); }
header dd { margin: 0; font-variant-numeric: tabular-nums; }
main { max-width: 90rem; margin: 0 auto; padding: 1rem 2rem 3rem; }
nav ol { columns: 2; padding-left: 1.2rem; }
h2 { margin-top: 2.5rem; padding-bottom: .3rem; border-bottom: 2px solid var(--accent); font-size: 1.25rem; }
h3 { margin: 1.8rem 0 .3rem; font-size: 1.05rem; }
p.caption { margin: .1rem 0; color: var(--muted); font-size: .85rem; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: .6rem 0 1rem; }
table { border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid var(--rule); text-align: right; vertical-align: top;
         white-space: normal; overflow-wrap: break-word; }
th:first-child, td:first-child { text-align: left; }
thead th { background: var(--band); border-bottom: 2px solid var(--rule); vertical-align: bottom; }
tbody tr:hover { background: #eef3fb; }
.banner { margin: 1rem 0 0; padding: .7rem 1rem; border: 2px solid #b7791f; border-left-width: .6rem;
          background: #fff7e6; color: #5a3a00; }
.banner strong { display: block; font-size: 1.05rem; margin-bottom: .2rem; }
.banner p { margin: .15rem 0; }
figure { margin: .8rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { color: var(--muted); font-size: .85rem; }
footer { color: var(--muted); font-size: .8rem; margin-top: 3rem; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { font-size: 10pt; }
  header { padding: 0 0 .6rem; background: none; }
  main { max-width: none; padding: 0; }
  .table-wrap { overflow: visible; }
  table { font-size: 8pt; }
  th, td { padding: .15rem .35rem; }
  thead { display: table-header-group; }
  tr, figure { break-inside: avoid; }
  h2, h3, p.caption { break-after: avoid; }
  tbody tr:hover { background: none; }
  .banner, thead th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  figure img { max-height: 160mm; width: auto; }
}
"""


def _distinct(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame or frame.empty:
        return []
    return sorted(str(v) for v in frame[column].dropna().unique())


def header_facts(frame: pd.DataFrame, papers: Sequence[str], now: dt.datetime | None = None) -> dict[str, str]:
    """What the page's header says: paper, dataset, profile, seeds, git sha, device and dates."""
    rows = frame[frame["paper"].isin(papers)] if "paper" in frame else frame
    ok = rows[rows["status"] == Status.OK] if "status" in rows else rows
    none = "— (no results yet: the paper's numbers only)"
    shas = _distinct(rows, "git_sha")
    created = pd.to_datetime(rows["created_at"], utc=True) if "created_at" in rows and len(rows) else None
    return {
        "paper": ", ".join(p.upper() for p in papers),
        "dataset": ", ".join(_distinct(rows, "dataset")) or none,
        "profile": ", ".join(_distinct(rows, "profile")) or none,
        "seeds": (f"{ok['seed'].nunique()} ({', '.join(map(str, sorted(ok['seed'].unique())))})"
                  if len(ok) else none),
        "trials": f"{len(rows)} rows, {len(ok)} ok" if len(rows) else none,
        "git sha": ", ".join(s[:12] for s in shas) or "—",
        "device": ", ".join(_distinct(rows, "device")) or "—",
        "results written": (f"{created.min():%Y-%m-%d %H:%M} – {created.max():%Y-%m-%d %H:%M} UTC"
                            if created is not None else "—"),
        "report written": f"{(now or dt.datetime.now(dt.timezone.utc)):%Y-%m-%d %H:%M} UTC",
    }


#: What a profile is, when it only checks the pipeline (the YAMLs' ``smoke`` and ``quick``).
_CHECK_PROFILES = {
    "smoke": "profile smoke trains one epoch on a few tiny images: it only shows that every step runs",
    "quick": ("profile quick trains a few epochs at a small image size with a random-init teacher (no ImageNet "
              "weights): it shows that the pipeline runs end to end and that a method learns, far below a paper's "
              "numbers"),
}


def pipeline_check(frame: pd.DataFrame, papers: Sequence[str]) -> list[str]:
    """Why these results are a pipeline check rather than a reproduction (empty when they may be one):
    a ``smoke``/``quick`` profile, or the built-in synthetic data instead of the paper's dataset."""
    rows = frame[frame["paper"].isin(papers)] if "paper" in frame else frame
    reasons = [_CHECK_PROFILES[p] for p in _distinct(rows, "profile") if p in _CHECK_PROFILES]
    if "synthetic" in _distinct(rows, "dataset"):
        reasons.append("dataset synthetic is kdsearch's built-in generated images, not the paper's dataset: "
                       "the paper's columns were measured on other data")
    if not reasons:
        return []
    axes = _distinct(rows, "axis")
    paper = papers[0] if len(papers) == 1 else "all"
    axis = axes[0] if len(axes) == 1 else "all"
    return [f"{reason[0].upper()}{reason[1:]}." for reason in reasons] + [
        f"To test the paper: python -m kdsearch.ablate --paper {paper} --axis {axis} --profile paper "
        "--data-root PATH (ImageNet weights, the paper's dataset and budget)."]


def _banner(lines: Sequence[str]) -> str:
    if not lines:
        return ""
    e = html.escape
    return ('<div class="banner" role="note"><strong>Pipeline check, not a reproduction</strong>'
            + "".join(f"<p>{e(line)}</p>" for line in lines) + "</div>")


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def axis_figures(ctx: Context) -> list[str]:
    """The axis's sweep plot (numeric axes) and heat map, as embedded ``<figure>`` elements."""
    from kdsearch.analysis import plots  # matplotlib only when a report is asked for

    figures = []
    if plots.is_numeric(ctx):
        sweep = plots.sweep_figure(ctx)
        if sweep is not None:
            figures.append(_figure(plots.png_bytes(sweep), f"{ctx.axis.name}: metrics against the value, ours "
                                   "(mean ± std over seeds) and the paper's (crosses)"))
    heat = plots.heatmap_figure(ctx)
    if heat is not None:
        figures.append(_figure(plots.png_bytes(heat), f"{ctx.axis.name}: each value × category, mean over seeds"))
    return figures


def build_report(sections: Sequence[Section], contexts: Sequence[Context], facts: dict[str, str],
                 check: Sequence[str] = ()) -> str:
    """The whole page: header (with the :func:`pipeline_check` banner when ``check`` has lines),
    contents, then each section's tables with its axes' figures."""
    e = html.escape
    by_slug = {ctx.slug: ctx for ctx in contexts}
    title = f"kdsearch · {facts['paper']} results"
    body = [f"<header><h1>{e(title)}</h1><dl>"]
    body += [f"<dt>{e(name)}</dt><dd>{e(value)}</dd>" for name, value in facts.items()]
    body.append("</dl>" + _banner(check) + "</header><main>")
    body.append("<nav><h2>Contents</h2><ol>")
    body += [f'<li><a href="#s{i}">{e(section.title)}</a></li>' for i, section in enumerate(sections)]
    body.append("</ol></nav>")
    for i, section in enumerate(sections):
        body.append(f'<section id="s{i}"><h2>{e(section.title)}</h2>')
        for table in section.tables:
            body.append(html_table(table))
            if table.slug in by_slug:
                body.extend(axis_figures(by_slug[table.slug]))
        body.append("</section>")
    body.append("<footer>Written by <code>python analysis/tables.py --report</code>. Ours: mean over seeds of "
                "the ok trials; the paper's printed value and the difference beside it. With two or more seeds a claim holds "
                "when its margin exceeds twice its standard error over seeds, does not hold below minus twice, "
                "and is within noise between; with one seed the verdict is only indicative.</footer>")
    body.append("</main>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")

"""Rebuild the papers' ablation tables from a results tree, the papers' numbers beside ours.

Usage::

    python analysis/tables.py [--results DIR] [--paper P] [--axis A]
                              [--format md|latex|csv|html] [--out DIR]
                              [--plots] [--per-category] [--reference DIR]
                              [--report FILE.html]

For each paper and axis in the results (or every axis of a paper named with
``--paper``), prints the table the paper prints: its rows in its order, per metric our
mean over seeds (± std and n when several), the paper's printed value and the
difference; texture / object / mean rows where the paper's table has them; then the
paper's ablation claims checked against our numbers. ``--per-category`` adds one table
per metric with the categories down the side. ``--out DIR`` writes one file per table
(and ``all.<ext>``) instead of printing; ``--plots`` (needs ``--out``) writes PNGs to
``DIR/plots``: metric vs value for numeric axes and a metric x category heat map per
axis. ``--report FILE.html`` writes all of it as one self-contained page (style and
plots embedded) to open in a browser. Results are grouped by dataset and profile; only ``ok`` trials enter the means.
CSV is tidy (one record per cell, raw numbers); the claims follow as a second CSV block
after a blank line (their own files with ``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from kdsearch.analysis import aggregate, assemble
from kdsearch.analysis.assemble import MISSING, Context
from kdsearch.analysis.reference import METRICS, RefAxis, Reference, ReferenceError, load_reference_sets
from kdsearch.analysis.render import EXTENSIONS, FORMATS, Section, render
from kdsearch.errors import CliParser, UserError, require_writable_folder, run_cli
from kdsearch.results import read_results
from kdsearch.spaces import list_papers, load_search_space

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python analysis/tables.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="root of the results tree (default: results)")
    p.add_argument("--paper", help="only this paper (adps, dskd, dmdd, mrkd); shows all its axes")
    p.add_argument("--axis", help="only this axis (e.g. k, structure, alpha)")
    p.add_argument("--format", default="md", help=f"output format: {', '.join(FORMATS)} (default: md)")
    p.add_argument("--out", help="write files into this directory instead of printing")
    p.add_argument("--plots", action="store_true", help="write PNG plots to OUT/plots (needs --out)")
    p.add_argument("--per-category", action="store_true", help="add per-category tables")
    p.add_argument("--report", metavar="FILE.html",
                   help="write one self-contained HTML page (tables, claims, embedded plots; opens offline)")
    p.add_argument("--reference", default=str(REFERENCE_DIR), help="directory of <paper>.yaml reference files")
    return p


def _out_dir(path: str) -> Path:
    return require_writable_folder(Path(path), "to --out", "pick a writable directory")


def _read(results: Path) -> pd.DataFrame:
    if not results.is_dir():
        raise UserError(
            f"results directory {results} does not exist; run a sweep first "
            "(python -m kdsearch.ablate ...) or pass --results DIR"
        )
    try:
        return read_results(results)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"cannot read the results under {results}: {exc}; remove or rewrite the broken file") from exc


def _measured_axis(ref: Reference, name: str, frame: pd.DataFrame) -> RefAxis:
    """An axis the paper has no table for: the metrics that were measured, numeric if every value is."""
    metrics = tuple(m for m in METRICS if np.isfinite(frame[ref.column(m)].astype(float)).any()) or METRICS
    numeric = bool(len(frame)) and frame["value_numeric"].notna().all()
    return RefAxis(name=name, source="", caption="", metrics=metrics, numeric=bool(numeric))


def _papers(args: argparse.Namespace, refs: dict[str, Reference], frame: pd.DataFrame) -> list[str]:
    present = sorted(frame["paper"].dropna().unique())
    if args.paper:
        if args.paper not in refs and args.paper not in present:
            runnable = list_papers()
            if args.paper in runnable:
                axis = args.axis or next(iter(load_search_space(args.paper).axes))
                raise UserError(
                    f"no {args.paper} rows in {args.results} yet (and the paper has no reference tables to show "
                    f"alone); make them with: python -m kdsearch.ablate --paper {args.paper} --axis {axis} "
                    f"--results {args.results}")
            raise UserError(
                f"unknown paper {args.paper!r}; papers kdsearch runs: {', '.join(runnable)}"
                f"; papers in the results: {', '.join(present) or 'none'}"
            )
        return [args.paper]
    if not present:
        raise UserError(
            f"no results in {args.results} (expected <paper>/<axis>/*.parquet); run a sweep first, "
            "or pass --paper P to show the paper's numbers alone"
        )
    if args.axis:
        with_axis = [p for p in present if args.axis in refs.get(p, Reference(p)).axes
                     or (frame.loc[frame["paper"] == p, "axis"] == args.axis).any()]
        if not with_axis:
            _refuse_axis_not_recorded_yet(args, list_papers())
            raise UserError(f"unknown axis {args.axis!r}: no paper in the results or the references has it")
        return with_axis
    return present


def _refuse_axis_not_recorded_yet(args: argparse.Namespace, papers: list[str]) -> None:
    """An axis one of ``papers`` runs but the results hold no row of: say which command makes them."""
    runnable = set(list_papers())
    runs = [p for p in papers if p in runnable and args.axis in load_search_space(p).axes]
    if runs:
        raise UserError(f"no rows of axis {args.axis!r} in {args.results} yet; make them with: python -m "
                        f"kdsearch.ablate --paper {runs[0]} --axis {args.axis} --results {args.results}")


def _axes(args: argparse.Namespace, ref: Reference, frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["axis"].dropna()))
    known = list(ref.axes) + [a for a in sorted(present) if a not in ref.axes]
    if args.axis:
        return [args.axis] if args.axis in known else []
    if args.paper:
        return known
    return [a for a in known if a in present]


def _reference_for(sets: dict[str, dict[str, Reference]], paper: str, dataset: str) -> Reference:
    """The paper's tables on ``dataset``, else on its main dataset (compared across data, as captions say)."""
    mine = sets.get(paper, {})
    if dataset in mine:
        return mine[dataset]
    return next((r for r in mine.values() if r.dataset == "mvtec"), None) or next(iter(mine.values()), None) \
        or Reference(paper=paper)


def _sections(args: argparse.Namespace, sets: dict[str, dict[str, Reference]],
              frame: pd.DataFrame) -> tuple[list[Section], list[Context]]:
    sections, contexts = [], []
    refs = {paper: _reference_for(sets, paper, "mvtec") for paper in sets}
    known: dict[str, None] = {}
    for paper in _papers(args, refs, frame):
        mine = frame[frame["paper"] == paper]
        # Without results, each dataset the paper reports on shows its printed numbers.
        combos = sorted(set(zip(mine["dataset"], mine["profile"]))) or [
            (dataset, MISSING) for dataset in sets.get(paper, {MISSING: None})]
        for dataset, profile in combos:
            ref = _reference_for(sets, paper, dataset)
            part = mine[(mine["dataset"] == dataset) & (mine["profile"] == profile)]
            known.update(dict.fromkeys([*ref.axes, *part["axis"].dropna()]))
            axes = _axes(args, ref, part)
            if not axes:
                continue
            tables, by_axis = [], {}
            for name in axes:
                sub = part[part["axis"] == name]
                axis = ref.axes.get(name) or _measured_axis(ref, name, sub)
                ctx = Context(ref, axis, aggregate.prepare(sub, axis), dataset, profile)
                by_axis[name] = ctx
                contexts.append(ctx)
                tables.append(assemble.axis_table(ctx))
                if args.per_category:
                    tables.extend(assemble.category_tables(ctx))
            shown = [c for c in ref.claims if c.axis in by_axis]
            if shown:
                subset = dataclasses.replace(ref, claims=tuple(shown))
                tables.append(assemble.claims_table(subset, by_axis, dataset, profile))
            name = ref.title if ref.title.upper().startswith(paper.upper()) else f"{paper.upper()}: {ref.title}".rstrip(": ")
            title = f"{name} · dataset {dataset}, profile {profile}"
            sections.append(Section(title=title, tables=tables))
    if args.axis and not sections:
        _refuse_axis_not_recorded_yet(args, [args.paper] if args.paper else list_papers())
        raise UserError(f"unknown axis {args.axis!r} for paper {args.paper or 'any'}; known: {', '.join(known)}")
    return sections, contexts


def _write(sections: list[Section], contexts: list[Context], args: argparse.Namespace, out: Path) -> list[Path]:
    ext = EXTENSIONS[args.format]
    written = []
    for section in sections:
        for table in section.tables:
            path = out / f"{table.slug}.{ext}"
            path.write_text(render([Section(section.title, [table])], args.format), encoding="utf-8")
            written.append(path)
    path = out / f"all.{ext}"
    path.write_text(render(sections, args.format), encoding="utf-8")
    written.append(path)
    if args.plots:
        from kdsearch.analysis import plots  # matplotlib only when asked for

        for ctx in contexts:
            if plots.is_numeric(ctx):
                written.append(plots.sweep_plot(ctx, out / "plots" / f"{ctx.slug}_sweep.png"))
            written.append(plots.heatmap(ctx, out / "plots" / f"{ctx.slug}_heatmap.png"))
    return [p for p in written if p is not None]


def _write_report(sections: list[Section], contexts: list[Context], frame: pd.DataFrame,
                  args: argparse.Namespace) -> Path:
    from kdsearch.analysis.report import build_report, header_facts, pipeline_check

    path = Path(args.report)
    papers = list(dict.fromkeys(ctx.ref.paper for ctx in contexts)) or [args.paper or "all"]
    page = build_report(sections, contexts, header_facts(frame, papers), pipeline_check(frame, papers))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write --report {path}: {exc.strerror or exc}; pick a writable file") from exc
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success.

    Raises:
        UserError: On a missing results directory, an unknown paper, axis or format,
            an unwritable ``--out``, ``--plots`` without ``--out`` or a broken
            reference file.
    """
    args = _parser().parse_args(argv)
    if args.format not in FORMATS:
        raise UserError(f"unknown format {args.format!r}; use one of {', '.join(FORMATS)}")
    if args.plots and not args.out:
        raise UserError("--plots writes PNG files and needs --out DIR")
    if not Path(args.reference).is_dir():
        raise UserError(f"reference directory {args.reference} does not exist; pass --reference DIR")
    try:
        sets = load_reference_sets(args.reference)
    except ReferenceError as exc:
        raise UserError(f"bad reference file: {exc}") from exc
    frame = _read(Path(args.results))
    out = _out_dir(args.out) if args.out else None
    sections, contexts = _sections(args, sets, frame)
    if args.report:
        print(f"wrote {_write_report(sections, contexts, frame, args)}")
        if out is None:
            return 0
    if out is None:
        sys.stdout.write(render(sections, args.format))
        return 0
    for path in _write(sections, contexts, args, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

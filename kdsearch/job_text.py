"""What ``python -m kdsearch.ablate`` prints about a job before it runs.

``--list`` (:func:`list_text`), ``--dry-run`` of one axis (:func:`dry_run_text`) and of the
whole reproduction (:func:`reproduction_text`), and the count of what a run will train
(:func:`pending_text`), and where each setting comes from (``--dry-run --explain``,
:func:`explain_text`). Read from the search-space files; the planner and the cost model
(torch) are imported inside the functions that need them, so ``--list`` stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdsearch.errors import UserError
from kdsearch.settings import setting_text
from kdsearch.spaces import list_papers, load_search_space

if TYPE_CHECKING:
    from kdsearch.plan import Job
    from kdsearch.rows import TrialSpec

__all__ = ["dry_run_text", "explain_text", "list_text", "pending_text", "reproduction_text"]


def list_text(costs: bool = False) -> str:
    """``--list``: every paper, its datasets, each axis with the table it reproduces.

    Read from the search-space files alone (nothing heavy is imported). With ``costs``
    (``--list --costs``), per axis also the trainings, training images and hours of training for
    ``quick`` on this machine's device and for ``paper`` (MVTec AD) on a GPU, from measured
    throughput (see :mod:`kdsearch.cost`; ``bench --save`` replaces the reference figures with
    this machine's): that plans every axis, so it imports the training stack.
    """
    if costs:
        from kdsearch.cost import job_cost
        from kdsearch.plan import plan
    lines = []
    sources: dict[str, None] = {}
    if not list_papers():
        from kdsearch.spaces import SEARCH_SPACES_ENV, spaces_dir

        return (f"no search spaces (<paper>.yaml) in {spaces_dir()}; point ${SEARCH_SPACES_ENV} at a folder "
                f"holding them, or unset it to use the ones installed with kdsearch")
    for paper in list_papers():
        try:
            space = load_search_space(paper)
        except UserError as exc:
            lines.append(f"{paper}: (cannot read: {exc})")
            continue
        lines.append(f"{paper} (method {space.method})")
        own = space.profiles["paper"].get("dataset", "mvtec")
        others = ", ".join(space.dataset_overrides("paper"))
        lines.append(f"  datasets with the paper's tables: {own} (every axis)"
                     + (f"; {others} (main results: --axis main --dataset D)" if others else ""))
        for axis in space.axes.values():
            if axis.is_grid:
                what = f"grid of {len(axis.rows)}: {', '.join(axis.rows)}"
            else:
                rng = ", ".join(map(str, axis.choices)) if axis.distribution == "categorical" else f"{axis.low:g}..{axis.high:g}"
                what = f"search {axis.param} ~ {axis.distribution}({rng}), {axis.n_trials} trials per category"
            lines.append(f"  {axis.name:<18} {axis.table or '-':<18} {what}")
            if not costs:
                continue
            parts = []
            for profile, kind in (("quick", None), ("paper", "cuda")):
                try:
                    estimate = job_cost(plan(paper, axis.name, profile=profile, skip_done=False), kind,
                                        "a GPU" if kind else None)
                except UserError as exc:
                    parts.append(f"{profile}: cost unknown ({exc})")
                    continue
                parts.append(f"{profile} {estimate.short()}")
                sources[estimate.basis or estimate.source] = None
            lines.append(f"  {'':<37} {' · '.join(parts)}")
    if costs and sources:
        lines.append("throughput behind the hours (training only, evaluation and start-up not included): "
                     + "; ".join(sources))
    if not costs:
        lines.append("add --costs for each axis's trainings, training images and hours (quick here, paper on a GPU)")
    return "\n".join(lines)


def pending_text(job: Job) -> str:
    """``6 row(s): 1 training(s) to run, 5 sharing a training, 0 from trainings already recorded``."""
    if not job.is_grid:
        return f"{job.pending_rows} trial(s) to run"
    shared = sum(map(len, job.followers.values()))
    rescored = f", {len(job.rescored)} scored on kept weights" if job.rescored else ""
    return (f"{job.pending_rows} row(s): {len(job.trainings)} training(s) to run, {shared} sharing one of them, "
            f"{len(job.reused)} from trainings already recorded{rescored}")


def dry_run_text(job: Job) -> str:
    """``--dry-run`` of one axis: each row of a grid (the training it runs or shares, or the
    recorded one it reuses) or each study of a search, then the cost of what remains."""
    from kdsearch.cost import job_cost

    lines = [f"{job.space.paper} · axis {job.axis.name} ({job.axis.table or 'search'}) · profile {job.profile}: "
             f"{job.planned} trial(s), {job.done} already in the results"]
    if job.is_grid:
        lines[0] += f"; {pending_text(job)}"
        for t in job.trainings:
            for row in job.rows_of(t):
                settings = " ".join(f"{k} {setting_text(v)}" for k, v in job.axis.overrides(row.value).items())
                trains = "trains" if row is t else "shares"
                lines.append(f"  {row.trial_key}  {row.value:<20} {row.dataset}/{row.category:<12} seed {row.seed}  "
                             f"epochs {row.epochs}  {trains} {row.training_key}" + (f"  {settings}" if settings else ""))
        for row, source in job.reused:
            lines.append(f"  {row.trial_key}  {row.value:<20} {row.dataset}/{row.category:<12} seed {row.seed}  "
                         f"recorded: training {row.training_key} of {source['paper']}/{source['axis']} "
                         f"{source['trial_key']}")
    else:
        desc = job.search_description()
        for s in job.studies:
            lines.append(f"  study {s.study}: {desc['param']} ~ {desc['distribution']} · {s.category} · seed {s.seed}: "
                         f"{s.n_trials} trial(s) to run, {len(s.history)} known")
    lines.append(f"cost of what remains: {job_cost(job).text()}")
    if job_cost(job).hours is None:
        lines.append(f"  on a GPU: {job_cost(job, 'cuda', 'a GPU').text()}")
    return "\n".join(lines)


def reproduction_text(jobs: list[Job]) -> str:
    """Rows, trainings still to run and device-hours per paper and axis, each training counted
    once over the whole list (a later axis's rows that an earlier one trains are shared)."""
    import dataclasses

    from kdsearch.cost import job_cost, teacher_cache_factor

    seen: set[str] = set()
    lines = [f"{'paper':<6} {'axis':<18} {'rows':>5} {'to train':>9} {'shared':>7} {'recorded':>9} {'device-hours':>13} "
             f"{'cached':>7}"]
    totals: dict[str, list[float]] = {}
    bases: dict[str, str] = {}
    unknown: dict[str, str] = {}  # papers with a training of unknown cost: the sentence saying so
    for job in jobs:
        fresh = [t for t in job.trainings if t.training_key not in seen]
        seen.update(t.training_key for t in fresh)
        cost = job_cost(dataclasses.replace(job, trainings=fresh))
        if cost.hours is None:
            cost = job_cost(dataclasses.replace(job, trainings=fresh), "cuda", "a GPU")
        if cost.hours is None and fresh:  # counted as 0 in the totals, which then say "at least"
            unknown.setdefault(job.space.paper, cost.source)
        elif cost.hours is not None:
            bases.setdefault(job.space.method, cost.source)
        rows = job.pending_rows
        hours = cost.hours or 0.0
        shown = "unknown" if cost.hours is None and fresh else f"{hours:.2f}"
        cached = hours * teacher_cache_factor(fresh, job.profile)
        shown_cached = "unknown" if cost.hours is None and fresh else f"{cached:.2f}"
        lines.append(f"{job.space.paper:<6} {job.axis.name:<18} {rows:>5} {len(fresh):>9} {rows - len(fresh) - len(job.reused):>7} "
                     f"{len(job.reused):>9} {shown:>13} {shown_cached:>7}")
        paper = totals.setdefault(job.space.paper, [0, 0, 0.0, 0.0])
        paper[0] += rows
        paper[1] += len(fresh)
        paper[2] += hours
        paper[3] += cached
    lines.append("")
    def at_least(value: float, unknown_part: bool) -> str:
        return f"{value:.2f}" if not unknown_part else f">= {value:.2f}" if value else "unknown"

    for paper, (rows, trainings, hours, cached) in totals.items():
        lines.append(f"{paper:<6} {'(paper total)':<18} {int(rows):>5} {int(trainings):>9} {'':>7} {'':>9} "
                     f"{at_least(hours, paper in unknown):>13} {at_least(cached, paper in unknown):>7}")
    rows, trainings, hours, cached = (sum(t[i] for t in totals.values()) for i in range(4))
    lines.append(f"{'all':<6} {'(total)':<18} {int(rows):>5} {int(trainings):>9} {'':>7} {'':>9} "
                 f"{at_least(hours, bool(unknown)):>13} {at_least(cached, bool(unknown)):>7}")
    lines.append("device-hours of training only (evaluation and start-up not included; rows already in the results "
                 "are not counted), from each method's throughput, measured or modelled:")
    lines.extend(f"  {method:<6} {source}" for method, source in bases.items())
    lines.extend(dict.fromkeys(unknown.values()))
    lines.append("cached: the same with the teacher cache (teacher_cache, on by default), the clean image's teacher "
                 "pass free after the first epoch; that pass's share of a step is modelled from FLOPs "
                 "(kdsearch.cost.TEACHER_CLEAN_SHARE), not measured")
    return "\n".join(lines)


def explain_text(job: Job) -> str:
    """``--dry-run --explain``: every setting of the job's first row with the layer it comes from
    (:mod:`kdsearch.settings`), then, for each other row, what it sets differently."""
    from kdsearch.settings import explain

    if job.is_grid:
        rows = [row for t in job.trainings for row in job.rows_of(t)] + [row for row, _ in (*job.reused, *job.rescored)]
    else:
        from kdsearch.search_axis import probe_value

        rows = [job.spec_for({job.axis.param: probe_value(job.axis)}, study=0)] if job.studies else []
    if not rows:
        return "settings: every row of this axis is already recorded (nothing to explain; --results elsewhere plans all)"
    first = rows[0]
    lines = [f"settings of {first.label} (each value ← the layer it comes from; later layers win):",
             *(f"  {line}" for line in explain(first.trial))]
    theirs = _sourced(first)
    others = {}
    for row in rows[1:]:
        others.setdefault(row.value, row)  # one per row label: categories and seeds differ only in those
    for label, row in others.items():
        changed = [f"{name} = {text}" for name, text in _sourced(row).items() if theirs.get(name) != text]
        if changed:
            lines.append(f"  row {label} differs: " + "; ".join(changed))
    return "\n".join(lines)


def _sourced(row: TrialSpec) -> dict[str, str]:
    """A row's settings as ``name → "value  ← layer"``."""
    from kdsearch.settings import sourced_settings

    return {name: f"{text}  ← {source}" for _, name, text, source in sourced_settings(row.trial)}

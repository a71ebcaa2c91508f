"""Run a paper's ablation or a search: ``python -m kdsearch.ablate --paper P --axis A``.

The command line only: :mod:`kdsearch.plan` decides the trials, :mod:`kdsearch.distributed`
runs them on Ray, :mod:`kdsearch.recording` writes each one as it finishes.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdsearch.catalog import DATASETS
from kdsearch.config import parse_assignments
from kdsearch.errors import CliParser, UserError, require_writable_folder, run_cli
from kdsearch.spaces import DEFAULT_RESULTS, PROFILES, list_papers, load_search_space
from kdsearch.tracking import MODES as WANDB_MODES  # standard library only at import

if TYPE_CHECKING:
    from kdsearch.plan import Job
    from kdsearch.recording import ResultWriter

# --help, --list and every argument error are answered from the search-space YAML files alone:
# torch, pandas and Ray are imported inside the functions that plan, price or run trials.

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


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="python -m kdsearch.ablate",
        description="Run one ablation axis of a paper (or a hyperparameter search) on Ray: every trial is "
                    "axis value × category × seed; one Parquet row per trial under RESULTS/PAPER/AXIS/.",
        epilog="Examples: python -m kdsearch.ablate --paper adps --axis k   |   "
               "python -m kdsearch.ablate --list   |   "
               "python -m kdsearch.ablate --paper mrkd --axis alpha --profile smoke --dry-run",
    )
    parser.add_argument("--list", action="store_true", help="list papers, axes and the tables they reproduce")
    parser.add_argument("--costs", action="store_true", help="with --list: also each axis's trainings, training images "
                                                           "and hours (quick here, paper on a GPU); slower, it plans every axis")
    parser.add_argument("--paper", help=f"paper: one of {', '.join(list_papers()) or '(none found)'}, or all "
                                        "(with --axis all: the whole reproduction, each training once)")
    parser.add_argument("--axis", help="axis of the paper (see --list), or all: every grid axis (table or figure)")
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="training budget (default quick: built-in data, CPU, minutes)")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset (default: the profile's)")
    parser.add_argument("--data-root", help="root folder of a real dataset")
    parser.add_argument("--categories", help="comma list or 'all' (default: the profile's, else all)")
    parser.add_argument("--values", help="only these rows of a grid axis, comma-separated (default all)")
    parser.add_argument("--seeds", help="number of seeds N (0..N-1) or a comma list (default: the profile's)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a training, method or synthesis field for every trial, e.g. --set epochs=2 (part of the trial key)")
    parser.add_argument("--textures", metavar="PATH",
                        help="DTD-style texture folder (e.g. dtd/images) for DRAEM anomalies (adps, dmdd); default: "
                             "the built-in procedural bank")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help=f"results folder (default ./{DEFAULT_RESULTS})")
    parser.add_argument("--storage", help="where Ray keeps checkpoints: a folder or s3://bucket/prefix shared by all nodes "
                                          "(default RESULTS/_ray)")
    parser.add_argument("--address", help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray)")
    parser.add_argument("--workers-per-trial", type=int, default=1, help="DDP workers per trial (default 1)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, shared by its workers; 0.25 packs 4 trials "
                                                             "on a GPU (default: 1 per worker when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial, shared by its workers (default 1 per worker)")
    parser.add_argument("--max-concurrent", type=int, help="most trials at once (default: as many as resources allow)")
    parser.add_argument("--max-failures", type=int, default=2, help="restarts from the last checkpoint before a trial "
                                                                     "is recorded as failed (default 2)")
    parser.add_argument("--checkpoint-every", type=float, default=120.0, metavar="SECONDS",
                        help="a trial checkpoints at the first epoch end this many seconds after its last checkpoint; "
                             "a lost worker repeats at most that much training (default 120; 0: every epoch)")
    parser.add_argument("--n-trials", type=int, help="trials of a search axis per category and seed (default: the axis's)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted run: skip trials already in RESULTS")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep each training's weights under RESULTS/_models/ (trained modules only: about "
                             "0.32 GB per WRN50 RD4AD training, 0.41 GB per MRKD one), so a row that only scores differently, asked "
                             "for later, is scored without training again")
    parser.add_argument("--wandb", choices=WANDB_MODES, default="auto",
                        help="W&B logging: auto = online with a configured key, else offline (default auto)")
    parser.add_argument("--wandb-project", default="kdsearch", help="W&B project (default kdsearch)")
    parser.add_argument("--dry-run", action="store_true", help="print the trials and exit")
    parser.add_argument("--quiet", action="store_true", help="no per-trial lines or progress bar, only the summary")
    return parser


def _setting_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _pending_text(job: Job) -> str:
    """``6 row(s): 1 training(s) to run, 5 sharing a training, 0 from trainings already recorded``."""
    if not job.is_grid:
        return f"{job.pending_rows} trial(s) to run"
    shared = sum(map(len, job.followers.values()))
    rescored = f", {len(job.rescored)} scored on kept weights" if job.rescored else ""
    return (f"{job.pending_rows} row(s): {len(job.trials)} training(s) to run, {shared} sharing one of them, "
            f"{len(job.reused)} from trainings already recorded{rescored}")


def _dry_run_text(job: Job) -> str:
    from kdsearch.cost import job_cost

    lines = [f"{job.space.paper} · axis {job.axis.name} ({job.axis.table or 'search'}) · profile {job.profile}: "
             f"{job.planned} trial(s), {job.done} already in the results"]
    if job.is_grid:
        lines[0] += f"; {_pending_text(job)}"
        for t in job.trials:
            for row in job.rows_of(t):
                settings = " ".join(f"{k} {_setting_text(v)}" for k, v in job.axis.overrides(row.value).items())
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_text(costs=args.costs))
        return 0
    if args.costs:
        raise UserError("--costs goes with --list (a run prints its cost with --dry-run)")
    if not args.paper or not args.axis:
        raise UserError("--paper and --axis are required (see --list for what exists)")
    if args.workers_per_trial < 1:
        raise UserError(f"--workers-per-trial must be >= 1, got {args.workers_per_trial}")
    for name in ("gpus_per_trial", "cpus_per_trial", "checkpoint_every", "max_failures"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    targets = _targets(args.paper, args.axis)
    if len(targets) > 1 and args.values:
        raise UserError("--values selects rows of one axis; drop it with --paper all or --axis all")
    chosen = load_search_space(targets[0][0]).axis(targets[0][1]) if targets else None
    if args.values is not None and chosen is not None and chosen.is_grid:
        chosen.select_rows(args.values)  # a misspelt row is refused before anything heavy loads
    from kdsearch.preflight import check_jobs  # the training stack: only once the arguments are known good

    said: set[str] = set()
    if args.dry_run and len(targets) > 1:
        print(_reproduction_text([_plan_from_args(args, paper, axis, said) for paper, axis in targets]))
        return 0
    if args.dry_run:
        print(_dry_run_text(_plan_from_args(args, *targets[0], said)))
        return 0
    # Every mistake a training would meet first thing is refused now: before Ray starts, before
    # any folder is made, and for every axis before the first one runs.
    jobs = [_plan_from_args(args, paper, axis, said) for paper, axis in targets]
    for job in jobs:
        _refuse_recorded(args, job)
        if args.resume and not job.done:
            print(f"--resume: nothing of {job.space.paper}/{job.axis.name} is recorded in {args.results} yet; "
                  f"running all of it", flush=True)
    check_jobs(jobs)
    codes = []
    for index, (paper, axis) in enumerate(targets):
        # Planned again: an axis run earlier in this loop may have recorded its trainings.
        job = jobs[0] if index == 0 else _plan_from_args(args, paper, axis, said)
        codes.append(_run(args, job))
        if codes[-1] == 130:
            return 130
    return max(codes, default=0)


def _targets(paper: str, axis: str) -> list[tuple[str, str]]:
    """(paper, axis) pairs of ``--paper``/``--axis``; ``all`` is every paper, every grid axis."""
    papers = list_papers() if paper == "all" else [paper]
    if axis != "all":
        if paper == "all":
            raise UserError("--paper all goes with --axis all (each paper has its own axes; see --list)")
        load_search_space(paper).axis(axis)  # a misspelt paper or axis is refused before anything heavy loads
        return [(paper, axis)]
    return [(p, name) for p in papers for name, a in load_search_space(p).axes.items() if a.is_grid]


def _plan_from_args(args: argparse.Namespace, paper: str, axis: str, said: set[str]) -> Job:
    """Plan one axis from the command line; each warning is printed once (``said``)."""
    from kdsearch.plan import plan

    extra = parse_assignments(args.assignments)
    if args.textures:
        from kdsearch.texture_source import textures_setting

        extra.update(textures_setting(load_search_space(paper).method, args.textures))
    job = plan(paper, axis, profile=args.profile, dataset=args.dataset, data_root=args.data_root,
               categories=args.categories, seeds=args.seeds, n_trials=args.n_trials, extra=extra,
               values=args.values, results_dir=args.results,
               trial_device="cuda" if (args.gpus_per_trial or 0) > 0 else "cpu")
    for note in job.warnings:
        if note not in said:
            said.add(note)
            print(f"warning: {note}", file=sys.stderr)
    return job


def _reproduction_text(jobs: list[Job]) -> str:
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
        fresh = [t for t in job.trials if t.training_key not in seen]
        seen.update(t.training_key for t in fresh)
        cost = job_cost(dataclasses.replace(job, trials=fresh))
        if cost.hours is None:
            cost = job_cost(dataclasses.replace(job, trials=fresh), "cuda", "a GPU")
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


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (innermost first) that is still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): its parents are not empty either


def _run(args: argparse.Namespace, job: Job) -> int:
    """Run one planned axis and print its summary: 0 all ok, 1 some failed, 130 interrupted."""
    from kdsearch import results as results_lib
    from kdsearch.next_steps import next_steps
    from kdsearch.progress import SweepProgress
    from kdsearch.recording import ResultWriter, summary_table
    from kdsearch.runlock import SweepLock
    from kdsearch.vocabulary import Status

    _refuse_recorded(args, job)
    results_dir = Path(args.results)
    # What can be refused is refused before the results folder exists.
    if args.storage and "://" not in args.storage:
        _check_storage_folder(Path(args.storage).expanduser())
    if args.address:
        from kdsearch.distributed.options import check_reachable

        check_reachable(args.address)
    if args.keep_models:
        require_writable_folder(results_dir / results_lib.MODELS_DIRNAME, "kept models to",
                                "make it writable, choose another --results, or drop --keep-models")
    axis_dir = results_dir / job.space.paper / job.axis.name
    made = [folder for folder in (axis_dir, axis_dir.parent, results_dir) if not folder.exists()]
    try:
        axis_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to results folder {results_dir}: {exc.strerror}; choose a writable --results") from exc

    from kdsearch import distributed  # Ray is imported only when something runs

    options = distributed.RunOptions(
        results_dir=str(results_dir), storage=args.storage, address=args.address,
        workers_per_trial=args.workers_per_trial, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        wandb=args.wandb, wandb_project=args.wandb_project, keep_models=args.keep_models,
        checkpoint_every_s=args.checkpoint_every,
    )
    remaining = job.pending_rows
    print(f"{job.space.paper} · axis {job.axis.name} · profile {job.profile}: {_pending_text(job)}"
          + (f" ({job.done} already done)" if job.done else ""), flush=True)
    progress = SweepProgress(job.pending_trainings, _estimated_seconds(job), enabled=not args.quiet)
    try:
        with SweepLock(axis_dir):
            writer = ResultWriter(results_dir, quiet=args.quiet, progress=progress)
            progress.start()
            try:
                distributed.run_job(job, options, writer, progress=progress)
            finally:
                progress.close()
    except UserError:
        # A refusal met once Ray is joined (a GPU cluster without --gpus-per-trial, a cluster
        # that refuses to be joined) leaves no empty <paper>/<axis> folder behind.
        _remove_empty(made)
        raise
    rows = _summary_rows(job, results_dir, writer)
    print()
    print(summary_table(rows))
    # An early-stopped (pruned) trial is a search working as meant, not a failure.
    bad = [r for r in rows if r["status"] not in (Status.OK, Status.PRUNED)]
    pruned = sum(r["status"] == Status.PRUNED for r in rows)
    early = f", {pruned} stopped early" if pruned else ""
    print(f"\n{len(rows)} trial(s): {len(rows) - len(bad) - pruned} ok, {len(bad)} failed or diverged{early} · "
          f"results in {results_dir / job.space.paper / job.axis.name}")
    if not args.quiet:
        print("\n" + "\n".join(next_steps(job, results_dir, rows)))
    missing = remaining - len(writer.rows)
    if missing > 0:  # Tune returns early after Ctrl-C
        print(f"interrupted: {missing} trial(s) did not run; run the same command with --resume to finish them",
              file=sys.stderr)
        return 130
    return 1 if bad else 0


def _refuse_recorded(args: argparse.Namespace, job: Job) -> None:
    """Trials already in the results folder run again only with ``--resume``."""
    if job.done and not args.resume:
        raise UserError(f"{job.done} of {job.planned} trials of {job.space.paper}/{job.axis.name} are already in "
                        f"{args.results}; pass --resume to run only the rest, or choose another --results folder")


def _check_storage_folder(folder: Path) -> None:
    """A local ``--storage`` must be a folder this process can create and write, before any trial starts."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--storage {folder} is a file; give a folder for the checkpoints (it is created if missing) "
                        f"or s3://bucket/prefix")
    require_writable_folder(folder, "checkpoints to --storage", "give a writable folder or s3://bucket/prefix")


def _estimated_seconds(job: Job) -> float | None:
    """The cost model's wall time of the job on this machine (the progress line's first ETA)."""
    from kdsearch.cost import job_cost, sweep_seconds

    return sweep_seconds(job_cost(job))


def _summary_rows(job: Job, results_dir: Path, writer: ResultWriter) -> list[dict[str, Any]]:
    """Rows to summarise: for a grid every planned cell found in the results, else this run's."""
    from kdsearch import results as results_lib

    if not job.is_grid:
        return sorted(writer.rows, key=lambda r: (r["category"], r["seed"], r["value"]))
    frame = results_lib.read_results(results_dir, job.space.paper, job.axis.name)
    order = {label: i for i, label in enumerate(job.axis.rows)}
    keys = set(job.planned_keys)
    rows = [r for r in frame.to_dict("records") if r["trial_key"] in keys]
    return sorted(rows, key=lambda r: (order.get(r["value"], len(order)), r["category"], r["seed"]))


if __name__ == "__main__":
    sys.exit(run_cli(main))


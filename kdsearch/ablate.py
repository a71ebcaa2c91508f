"""Run a paper's ablation or a search: ``python -m kdsearch.ablate --paper P --axis A``.

The command line only: it parses, calls and prints. :mod:`kdsearch.plan` decides the trials,
:mod:`kdsearch.preflight` refuses what they would fail on, :mod:`kdsearch.distributed` runs
them on Ray, :mod:`kdsearch.recording` writes each one as it finishes, and
:mod:`kdsearch.job_text` is what ``--list`` and ``--dry-run`` print.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kdsearch.catalog import DATASETS
from kdsearch.config import parse_assignments
from kdsearch.errors import CliParser, UserError, run_cli
from kdsearch.job_text import dry_run_text, explain_text, list_text, pending_text, reproduction_text
from kdsearch.run_bounds import check_run_bounds
from kdsearch.spaces import DEFAULT_RESULTS, PROFILES, list_papers, load_search_space
from kdsearch.tracking import MODES as WANDB_MODES  # standard library only at import

if TYPE_CHECKING:
    from kdsearch.plan import Job

# --help, --list and every argument error are answered from the search-space YAML files alone:
# torch, pandas and Ray are imported inside the functions that plan, price or run trials.


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
    parser.add_argument("--explain", action="store_true", help="with --dry-run: every setting of the first row with the "
                                                             "layer it comes from (default, profile, --set, axis row, ...)")
    parser.add_argument("--quiet", action="store_true", help="no per-trial lines or progress bar, only the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_text(costs=args.costs))
        return 0
    if args.costs:
        raise UserError("--costs goes with --list (a run prints its cost with --dry-run)")
    if args.explain and not args.dry_run:
        raise UserError("--explain goes with --dry-run (it prints where each setting comes from, then exits)")
    if not args.paper or not args.axis:
        raise UserError("--paper and --axis are required (see --list for what exists)")
    check_run_bounds(workers_per_trial=args.workers_per_trial, gpus_per_trial=args.gpus_per_trial,
                     cpus_per_trial=args.cpus_per_trial, checkpoint_every=args.checkpoint_every,
                     max_failures=args.max_failures, max_concurrent=args.max_concurrent)
    targets = _targets(args.paper, args.axis)
    if len(targets) > 1 and args.values:
        raise UserError("--values selects rows of one axis; drop it with --paper all or --axis all")
    chosen = load_search_space(targets[0][0]).axis(targets[0][1]) if targets else None
    if args.values is not None and chosen is not None and chosen.is_grid:
        chosen.select_rows(args.values)  # a misspelt row is refused before anything heavy loads
    from kdsearch.tracking import import_wandb_apart

    import_wandb_apart()  # before timm imports it: its temp folders in one of this process's own
    from kdsearch.preflight import check_jobs  # the training stack: only once the arguments are known good

    said: set[str] = set()
    if args.dry_run and len(targets) > 1:
        print(reproduction_text([_plan_from_args(args, paper, axis, said) for paper, axis in targets]))
        return 0
    if args.dry_run:
        job = _plan_from_args(args, *targets[0], said)
        print(dry_run_text(job) + (f"\n{explain_text(job)}" if args.explain else ""))
        return 0
    # Every mistake a training would meet first thing is refused now: before Ray starts, before
    # any folder is made, and for every axis before the first one runs.
    jobs = [_plan_from_args(args, paper, axis, said) for paper, axis in targets]
    for job in jobs:
        _refuse_recorded(args, job)
        if args.resume and not job.done:
            from kdsearch.recording import resume_text

            print(resume_text(job, args.results), flush=True)
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

    from kdsearch.texture_source import textures_setting

    job = plan(paper, axis, profile=args.profile, dataset=args.dataset, data_root=args.data_root,
               categories=args.categories, seeds=args.seeds, n_trials=args.n_trials,
               extra=parse_assignments(args.assignments),
               textures=textures_setting(load_search_space(paper).method, args.textures),
               values=args.values, results_dir=args.results,
               trial_device="cuda" if (args.gpus_per_trial or 0) > 0 else "cpu")
    for note in job.warnings:
        if note not in said:
            said.add(note)
            print(f"warning: {note}", file=sys.stderr)
    return job


def _run(args: argparse.Namespace, job: Job) -> int:
    """Run one planned axis and print its summary: 0 all ok, 1 some failed, 130 interrupted."""
    from kdsearch.cost import job_cost, sweep_seconds
    from kdsearch.next_steps import next_steps
    from kdsearch.preflight import prepare_run_folders, remove_empty_folders
    from kdsearch.progress import SweepProgress
    from kdsearch.recording import ResultWriter, summary_rows, summary_table
    from kdsearch.runlock import SweepLock
    from kdsearch.vocabulary import Status

    _refuse_recorded(args, job)
    results_dir = Path(args.results)
    axis_dir = results_dir / job.space.paper / job.axis.name
    made = prepare_run_folders(results_dir, axis_dir, storage=args.storage, address=args.address,
                               keep_models=args.keep_models)

    from kdsearch import distributed  # Ray is imported only when something runs

    options = distributed.RunOptions(
        results_dir=str(results_dir), storage=args.storage, address=args.address,
        workers_per_trial=args.workers_per_trial, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        wandb=args.wandb, wandb_project=args.wandb_project, keep_models=args.keep_models,
        checkpoint_every_s=args.checkpoint_every,
    )
    remaining = job.pending_rows
    print(f"{job.space.paper} · axis {job.axis.name} · profile {job.profile}: {pending_text(job)}"
          + (f" ({job.done} already done)" if job.done else ""), flush=True)
    progress = SweepProgress(job.pending_trainings, sweep_seconds(job_cost(job)), enabled=not args.quiet)
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
        remove_empty_folders(made)
        raise
    rows = summary_rows(job, results_dir, writer)
    print()
    print(summary_table(rows))
    # An early-stopped (pruned) trial is a search working as meant, not a failure.
    bad = [r for r in rows if r["status"] not in (Status.OK, Status.PRUNED)]
    pruned = sum(r["status"] == Status.PRUNED for r in rows)
    early = f", {pruned} stopped early" if pruned else ""
    print(f"\n{len(rows)} trial(s): {len(rows) - len(bad) - pruned} ok, {len(bad)} failed or diverged{early} · "
          f"results in {axis_dir}")
    steps = next_steps(job, results_dir, rows)
    if steps and not args.quiet:
        print("\n" + "\n".join(steps))
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


if __name__ == "__main__":
    sys.exit(run_cli(main))


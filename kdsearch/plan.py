"""Plan an ablation or a search: which rows, trained by which trainings. Pure: no Ray.

:func:`plan` decides everything once and returns a frozen :class:`Job`. A grid axis expands
to row × category × seed, each a :class:`~kdsearch.rows.TrialSpec` with a stable
``trial_key``; a search axis becomes one Optuna study per (category, seed) whose trials are
built from a :class:`SearchTemplate` once Optuna has sampled the value. The results tree
(:mod:`kdsearch.results`) is the source of truth for what is done: ``--resume`` skips every
key already written there.

A study of a search axis warm-starts TPE from the validation metric of its trials already
in the results tree (their epoch curves), so a resumed search keeps what it learned.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdsearch import catalog
from kdsearch import data as data_lib
from kdsearch import results as results_lib
from kdsearch.errors import UserError
from kdsearch.key_migration import migrate_keys
from kdsearch.spaces import DEFAULT_RESULTS, PROFILES, Axis, SearchSpace, load_search_space
from kdsearch.reuse import plan_repairs, share_trainings
from kdsearch.search_axis import check_search_validation, probe_value, search_history
from kdsearch.rows import TrialSpec, make_trial, value_label
from kdsearch.trial import check_explicit_settings, explicit_names
from kdsearch.vocabulary import DONE_STATUSES


@dataclass(frozen=True)
class SearchTemplate:
    """One study of a search axis: everything but the sampled value.

    Attributes:
        study: index of the study in the job.
        category, seed: the cell this study searches on.
        n_trials: trials still to run in this study.
        history: (value, validation metric) of this study's trials already in the results.
        base: arguments for :func:`make_trial` except ``value``.
        previous: this study's trials already recorded (up to the trials asked for).
    """

    study: int
    category: str
    seed: int
    n_trials: int
    history: tuple[tuple[Any, float], ...]
    base: dict[str, Any]
    previous: int = 0

    def trial(self, space: SearchSpace, axis: Axis, value: Any) -> TrialSpec:
        """The trial for one sampled value."""
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        return make_trial(space, axis, value, label=value_label(value), value_numeric=number, **self.base)


@dataclass(frozen=True)
class Job:
    """Everything the runner needs, decided once by :func:`plan`; picklable (Ray ships it to
    every trial).

    A grid job lists the trainings it runs (``trainings``: the lead row of each training
    still missing), the other rows each of them writes (``followers``: rows that differ
    only in how a trained model is scored, or spell the same training another way), and
    the rows a training already in the results tree answers (``reused``, ``rescored``):
    :class:`kdsearch.reuse.TrainingPlan`. A search job lists its studies (``studies``) and
    builds each trial from the sampled value with :meth:`spec_for`.
    """

    space: SearchSpace
    axis: Axis
    profile: str
    trainings: Sequence[TrialSpec] = ()
    studies: Sequence[SearchTemplate] = ()
    planned: int = 0
    done: int = 0
    planned_keys: tuple[str, ...] = ()
    warnings: Sequence[str] = ()
    followers: Mapping[str, Sequence[TrialSpec]] = field(default_factory=dict)
    reused: Sequence[tuple[TrialSpec, dict[str, Any]]] = ()
    rescored: Sequence[tuple[TrialSpec, dict[str, Any]]] = ()
    #: the precision each planned row resolves to, by trial key (a grid's).
    precision: Mapping[str, str] = field(default_factory=dict)
    #: recorded rows whose ``reused_from`` named no row that trained, each with the row that
    #: trained its training: rewritten before anything runs (:class:`kdsearch.reuse.Repairs`).
    repoint: Sequence[tuple[dict[str, Any], str]] = ()
    #: such rows whose training no row trained, by ``training_key``: re-pointed at the row
    #: of this job that trains it, once written.
    orphans: Mapping[str, Sequence[dict[str, Any]]] = field(default_factory=dict)

    @property
    def pending_rows(self) -> int:
        """Rows this run writes: every training's rows, and those answered from the tree."""
        if not self.is_grid:
            return self.pending_trainings
        return len(self.trainings) + sum(map(len, self.followers.values())) + len(self.reused) + len(self.rescored)

    @property
    def pending_trainings(self) -> int:
        """Trainings this run starts (a search: every trial it may run)."""
        return len(self.trainings) if self.is_grid else sum(s.n_trials for s in self.studies)

    def rows_of(self, spec: TrialSpec) -> list[TrialSpec]:
        """The rows a training writes: its own, then its followers'."""
        return [spec, *self.followers.get(spec.trial_key, ())]

    @property
    def is_grid(self) -> bool:
        return self.axis.is_grid

    @property
    def name(self) -> str:
        return f"{self.space.paper}-{self.axis.name}"

    def spec_for(self, config: Mapping[str, Any], study: int | None = None) -> TrialSpec:
        """The trial behind a Tune config: ``{"trial": i}`` (grid) or ``{param: value}`` (search)."""
        if self.is_grid:
            return self.trainings[int(config["trial"])]
        assert study is not None and self.axis.param is not None
        return self.studies[study].trial(self.space, self.axis, config[self.axis.param])

    def search_description(self) -> dict[str, Any]:
        """The axis as plain data (for Optuna and the W&B sweep config)."""
        axis = self.axis
        if axis.is_grid:
            return {"kind": "grid", "values": list(axis.rows)}
        return {"kind": "search", "param": axis.param, "distribution": axis.distribution,
                "low": axis.low, "high": axis.high, "choices": list(axis.choices)}


def _category_warnings(trials: Sequence[TrialSpec]) -> list[str]:
    """One warning per explicit setting that some categories make inert, naming them."""
    ignored: dict[str, dict[str, None]] = {}
    reasons: dict[str, str] = {}
    for spec in trials:
        explicit = spec.trial.settings.explicit
        for name, why in spec.trial.category_inert_settings.items():
            if name in explicit:
                ignored.setdefault(name, {})[spec.category] = None
                reasons[name] = why
    return [f"{name} changes nothing on {', '.join(categories)}: {reasons[name]}; rows that differ only in it "
            f"share one training there" for name, categories in ignored.items()]


def _refuse_settings_the_axis_sets(method: str, axis: Axis, extra: Mapping[str, Any]) -> None:
    """``--set`` on a field the axis sweeps or fixes would be overridden by every row, silently."""
    given = explicit_names(method, extra)
    swept = explicit_names(method, {axis.param: None}) if axis.param else set()
    for row in axis.rows.values():  # a search has none
        swept |= explicit_names(method, row)
    fixed = explicit_names(method, axis.fixed)
    clash = sorted(given & (swept | fixed))
    if clash:
        how = "sweeps" if set(clash) & swept else "fixes"
        raise UserError(f"--set {', '.join(clash)}: axis {axis.name!r} {how} {'it' if len(clash) == 1 else 'them'} "
                        f"in every row, so the setting would change nothing; drop it (--values picks rows)")


def parse_seeds(text: str | None, profile_seeds: Sequence[int] | None) -> list[int]:
    """``--seeds``: a count ``N`` (seeds 0..N-1) or a list ``0,3,7``; default the profile's."""
    if text is None:
        seeds = list(profile_seeds or [0])
    elif "," in text:
        try:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds takes a count or a comma list of integers, got {text!r}") from None
    else:
        try:
            count = int(text)
        except ValueError:
            raise UserError(f"--seeds takes a count or a comma list of integers, got {text!r}") from None
        if count < 1:
            raise UserError(f"--seeds must be >= 1, got {count}")
        seeds = list(range(count))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice: {seeds}")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise UserError(f"--seeds must be >= 0, got {', '.join(map(str, negative))}")
    return [int(s) for s in seeds]


def resolve_categories(text: str | None, dataset: str, data_root: str | None,
                       profile_categories: Sequence[str] | None) -> list[str]:
    """``--categories``: ``a,b``, ``all``, or (default) the profile's list, else all of the dataset's."""
    if text is None and profile_categories:
        return [str(c) for c in profile_categories]
    available = data_lib.list_categories(dataset, data_root)
    if text is None or text.strip() == "all":
        return list(available)
    wanted = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise UserError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} of {dataset}; "
                        f"choose from: {', '.join(available)} (or 'all')")
    return wanted


def plan(paper: str, axis_name: str, *, profile: str = "quick", dataset: str | None = None,
         data_root: str | None = None, categories: str | None = None, seeds: str | None = None,
         n_trials: int | None = None, extra: Mapping[str, Any] | None = None,
         textures: Mapping[str, Any] | None = None, values: str | None = None,
         results_dir: str | os.PathLike[str] = DEFAULT_RESULTS, skip_done: bool = True,
         trial_device: str = "cpu") -> Job:
    """Plan an ablation: the trials to run, minus those already in ``results_dir``.

    Args:
        paper: paper short name (a search-space file).
        axis_name: the axis to run.
        profile: training budget.
        dataset: dataset (default: the profile's).
        data_root: where a real dataset lives.
        categories: ``a,b`` or ``all``; default the profile's categories.
        seeds: ``N`` or ``0,1``; default the profile's seeds.
        n_trials: trials per study of a search axis (default the axis's ``n_trials``).
        extra: ``--set`` values for every trial.
        textures: ``--textures`` as a method setting (:func:`kdsearch.texture_source.textures_setting`).
        values: ``a,b``: only these rows of a grid axis (default all).
        results_dir: the results tree that says what is done.
        skip_done: drop trials whose key is already there, and answer rows whose training
            is recorded there (by any paper or axis of the method) from that training; only
            rows computed in the precision this run resolves to count (others train again).
        trial_device: where the trials run (``cuda`` when the sweep asks for GPUs), which
            decides what ``precision=auto`` resolves to.

    Returns:
        The job. ``job.planned`` counts all cells, ``job.done`` those already written.
    """
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    space = load_search_space(paper)
    axis = space.axis(axis_name)
    prof = space.profile(profile, dataset)
    own_dataset = str(space.profiles[profile].get("dataset", "synthetic"))
    dataset = dataset or own_dataset
    if dataset not in catalog.DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(catalog.DATASETS)}")
    # Categories: the paper's choice on this dataset, else the profile's for its own dataset.
    profile_categories = space.dataset_overrides(profile).get(dataset, {}).get("categories") or (
        prof.get("categories") if dataset == own_dataset else None)
    cats = resolve_categories(categories, dataset, data_root, profile_categories)
    seed_list = parse_seeds(seeds, prof.get("seeds"))
    base = {"profile": profile, "dataset": dataset, "data_root": data_root, "extra": dict(extra or {}),
            "textures": dict(textures or {})}
    _refuse_settings_the_axis_sets(space.method, axis, {**(extra or {}), **(textures or {})})
    if values is not None and not axis.is_grid:
        raise UserError(f"--values selects rows of a grid axis; {axis.name!r} is a search (use --n-trials)")
    if n_trials is not None and axis.is_grid:
        raise UserError(f"--n-trials sets the trials of a search axis; {axis.name!r} is a grid of "
                        f"{len(axis.rows)} rows (use --values to pick rows)")
    if skip_done:  # rows keyed by an earlier rule get this rule's keys first (once)
        migrate_keys(results_dir)
    if axis.is_grid:
        return _plan_grid(space, axis, _selected_rows(axis, values), cats, seed_list, base, results_dir, skip_done,
                          trial_device)
    return _plan_search(space, axis, n_trials, cats, seed_list, base, results_dir, skip_done)


def _selected_rows(axis: Axis, values: str | None) -> list[str]:
    """``--values a,b``: those rows of a grid axis, checked; default every row."""
    return list(axis.rows) if values is None else axis.select_rows(values)


def _plan_grid(space: SearchSpace, axis: Axis, labels: list[str], cats: list[str], seed_list: list[int],
               base: dict[str, Any], results_dir: str | os.PathLike[str], skip_done: bool, trial_device: str) -> Job:
    """Every row × category × seed, less those done; the rest split into trainings and the rows they serve."""
    rows = [make_trial(space, axis, label, category=c, seed=s, **base)
            for label in labels for c in cats for s in seed_list]
    first_of_row = {t.value: t for t in rows}
    warnings = check_explicit_settings([(label, t.trial, t.trial.settings.explicit) for label, t in first_of_row.items()])
    warnings += _textures_warnings(base["profile"], rows[:1]) + _category_warnings(rows)
    keys = [t.trial_key for t in rows]
    if len(set(keys)) != len(keys):
        raise UserError(f"axis {axis.name!r} has rows that resolve to the same configuration; make each row differ")
    precision = {t.trial_key: t.precision_on(trial_device) for t in rows}
    recorded = (results_lib.completed_trial_precisions(results_dir, space.paper, axis.name, DONE_STATUSES)
                if skip_done else {})
    warnings += _precision_warnings({k: p for k, p in recorded.items() if k in precision}, precision)
    trainings = results_lib.recorded_trainings(results_dir, space.method) if skip_done else {}
    repairs = plan_repairs(trainings, set(keys))
    done = {key for key, computed in recorded.items()
            if computed in (precision.get(key), None) and key not in repairs.retrain}
    pending = [t for t in rows if t.trial_key not in done]
    shared = share_trainings(pending, trainings, results_dir, precision)
    return Job(space=space, axis=axis, profile=base["profile"], trainings=shared.trainings, planned=len(rows),
               done=len(rows) - len(pending), planned_keys=tuple(keys), warnings=tuple(warnings),
               followers=shared.followers, reused=shared.reused, rescored=shared.rescored, precision=precision,
               repoint=repairs.repoint, orphans=repairs.orphans)


def _precision_warnings(recorded: Mapping[str, str | None], precision: Mapping[str, str]) -> list[str]:
    """Lines for the recorded rows of this axis computed in another precision than this run
    resolves to (they are trained again), and for those that do not say (they are kept)."""
    other = {k: p for k, p in recorded.items() if p is not None and p != precision[k]}
    unknown = sum(1 for p in recorded.values() if p is None)
    lines = []
    if other:
        was, now = "/".join(sorted(set(other.values()))), "/".join(sorted({precision[k] for k in other}))
        keep = f"; pass --set precision={was} to keep them instead" if "/" not in was else ""
        lines.append(f"{len(other)} recorded row(s) of this axis were computed in {was} and this run computes in "
                     f"{now} (precision=auto follows the hardware): they are trained again{keep}")
    if unknown:
        lines.append(f"{unknown} recorded row(s) of this axis were written before rows named their precision: they "
                     f"are kept as they are; delete their Parquet files to train them again")
    return lines


def _plan_search(space: SearchSpace, axis: Axis, n_trials: int | None, cats: list[str], seed_list: list[int],
                 base: dict[str, Any], results_dir: str | os.PathLike[str], skip_done: bool) -> Job:
    """One study per category × seed, each warm-started from the trials already in the results."""
    count = axis.n_trials if n_trials is None else n_trials
    if count < 1:
        raise UserError(f"--n-trials must be >= 1, got {count}")
    history = search_history(results_dir, space.paper, axis.name) if skip_done else {}
    studies = []
    for index, (c, s) in enumerate((c, s) for c in cats for s in seed_list):
        previous = history.get((base["dataset"], c, s, base["profile"]), [])
        studies.append(SearchTemplate(
            study=index, category=c, seed=s, n_trials=max(0, count - len(previous)),
            history=tuple((v, m) for v, m in previous if m is not None and math.isfinite(m)),
            base={**base, "category": c, "seed": s}, previous=min(count, len(previous))))
    # Validate the configuration once now (a typo in --set fails before Ray starts).
    probe = studies[0].trial(space, axis, probe_value(axis))
    check_search_validation(axis, probe.trial.settings)
    warnings = check_explicit_settings([("search", probe.trial, probe.trial.settings.explicit)])
    warnings += _textures_warnings(base["profile"], [probe])
    return Job(space=space, axis=axis, profile=base["profile"], studies=tuple(studies), planned=count * len(studies),
               done=sum(s.previous for s in studies), warnings=tuple(warnings))


def _textures_warnings(profile: str, trials: Sequence[TrialSpec]) -> list[str]:
    from kdsearch.texture_source import textures_warning

    warning = textures_warning(trials[0].trial, profile) if trials else None
    return [warning] if warning else []

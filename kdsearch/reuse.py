"""Which recorded trainings answer a grid job's rows, so no model is trained twice.

Rows that share a ``training_key`` train the same model: the first such row still missing
trains it and the others follow it; a row whose training is already in the results tree
(by any paper or axis of the method) is answered from it, by its recorded metrics when
its scoring matches, else by scoring the weights ``--keep-models`` kept.

A recorded training counts only through a row that trained it (``reused_from`` empty), and
a row written from it names that row, never another follower: ``reused_from`` never
chains. A row whose ``reused_from`` names no row that trained (that row was deleted, or
written again as a follower) is an orphan: it is re-pointed at a row that trained the
same training, or, when none did, trained again by its own axis's next sweep (or
re-pointed once another sweep trains it).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kdsearch import results as results_lib
from kdsearch.errors import UserError
from kdsearch.vocabulary import Status

if TYPE_CHECKING:
    from kdsearch.rows import TrialSpec


@dataclass(frozen=True)
class TrainingPlan:
    """What a grid job's pending rows need, decided once.

    Attributes:
        trainings: the lead row of each training to run (the first of its rows still missing).
        followers: by lead ``trial_key``, the other rows that training writes (they differ
            only in how the trained model is scored, or spell the same training another way).
        reused: rows answered by a recorded training with the same scoring, each with the
            recorded row.
        rescored: rows scored on a recorded training's kept weights, each with its recorded row.
    """

    trainings: tuple[TrialSpec, ...] = ()
    followers: Mapping[str, tuple[TrialSpec, ...]] = field(default_factory=dict)
    reused: tuple[tuple[TrialSpec, dict[str, Any]], ...] = ()
    rescored: tuple[tuple[TrialSpec, dict[str, Any]], ...] = ()


@dataclass(frozen=True)
class Repairs:
    """What becomes of the orphan rows of the method (see the module's text).

    Attributes:
        repoint: rows re-pointed now, each with the ``trial_key`` of a row that trained its training.
        retrain: ``trial_key`` of orphan rows of this job's plan: planned again.
        orphans: the rest, by ``training_key``: re-pointed at the row of this job that trains
            it, once written.
    """

    repoint: tuple[tuple[dict[str, Any], str], ...] = ()
    retrain: frozenset[str] = frozenset()
    orphans: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)


def share_trainings(pending: list[TrialSpec], recorded: Mapping[str, list[dict[str, Any]]],
                    results_dir: str | os.PathLike[str], precision: Mapping[str, str]) -> TrainingPlan:
    """Split ``pending`` rows into rows answered by a recorded training with the same scoring,
    rows scored on a recorded training's kept weights (``--keep-models``), trainings to run
    (their first row) and the rows each of those serves. A recorded training counts only
    when it was computed in the precision the row resolves to (``precision``, by trial key),
    or was recorded before rows named theirs."""
    recorded, _ = split_recorded(recorded)
    scoring = {row["trial_key"]: _scoring_of(row) for rows in recorded.values() for row in rows}
    leads: dict[str, TrialSpec] = {}
    followers: dict[str, list[TrialSpec]] = {}
    reused, rescored = [], []
    for spec in pending:
        same = [row for row in recorded.get(spec.training_key, [])
                if _precision_of(row) in (precision[spec.trial_key], None)]
        rows = [row for row in same if row["status"] == Status.OK] or same
        wanted = _scoring_json(spec)
        source = next((row for row in rows if scoring[row["trial_key"]] == wanted), None)
        if source is not None:
            reused.append((spec, source))
        elif rows and rows[0]["status"] == Status.OK and results_lib.kept_model_path(results_dir, spec.training_key).is_file():
            rescored.append((spec, rows[0]))
        elif leads.setdefault(spec.training_key, spec) is not spec:
            followers.setdefault(leads[spec.training_key].trial_key, []).append(spec)
    return TrainingPlan(tuple(leads.values()), {k: tuple(v) for k, v in followers.items()}, tuple(reused),
                        tuple(rescored))


def trained(row: Mapping[str, Any]) -> bool:
    """Whether a recorded row trained its model (its ``reused_from`` is empty)."""
    value = row.get("reused_from")
    return not (isinstance(value, str) and value)


def trainer_key(row: Mapping[str, Any]) -> str:
    """The ``trial_key`` of the row that trained ``row``'s model: its own, or its ``reused_from``."""
    return str(row["trial_key"]) if trained(row) else str(row["reused_from"])


def split_recorded(recorded: Mapping[str, list[dict[str, Any]]]
                   ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Recorded rows by ``training_key`` that answer for a training (the rows that trained it
    and those whose ``reused_from`` names one of them), and the orphans: rows whose
    ``reused_from`` names no row that trained their training."""
    valid: dict[str, list[dict[str, Any]]] = {}
    orphans: list[dict[str, Any]] = []
    for key, rows in recorded.items():
        trainers = {str(row["trial_key"]) for row in rows if trained(row)}
        for row in rows:
            if trained(row) or row["reused_from"] in trainers:
                valid.setdefault(key, []).append(row)
            else:
                orphans.append(row)
    return valid, orphans


def plan_repairs(recorded: Mapping[str, list[dict[str, Any]]], planned: set[str]) -> Repairs:
    """Decide what becomes of each orphan row of the method (see the module's text): re-pointed
    now at a row that trained its training in the same precision; else, a row of this job's
    plan (``planned``) is planned again; else it waits for a sweep that trains its training."""
    valid, orphans = split_recorded(recorded)
    repoint: list[tuple[dict[str, Any], str]] = []
    retrain: set[str] = set()
    waiting: dict[str, list[dict[str, Any]]] = {}
    for row in orphans:
        key = str(row["training_key"])
        trainer = next((r for r in valid.get(key, []) if trained(r)
                        and _precision_of(r) in (_precision_of(row), None)), None)
        if trainer is not None:
            repoint.append((row, str(trainer["trial_key"])))
        elif row["trial_key"] in planned:
            retrain.add(str(row["trial_key"]))
        else:
            waiting.setdefault(key, []).append(row)
    return Repairs(tuple(repoint), frozenset(retrain), {k: tuple(v) for k, v in waiting.items()})


def _precision_of(row: Mapping[str, Any]) -> str | None:
    precision = row.get("precision")
    return precision if isinstance(precision, str) else None


def _scoring_json(spec: TrialSpec) -> str:
    return json.dumps(spec.trial.scoring, sort_keys=True, default=list)


def _scoring_of(row: Mapping[str, Any]) -> str | None:
    """A recorded row's scoring fields, read back from its stored configuration."""
    from kdsearch.methods import get_method_class

    try:
        config = json.loads(row["config_json"])
        config_class = get_method_class(str(row["method"])).config_class
        # Rebuilt from the stored values: which fields only score depends on the configuration (DMDD).
        names = config_class(**{f.name: config[f.name] for f in dataclasses.fields(config_class)
                                if f.name in config}).inference_fields()
    except (ValueError, KeyError, TypeError, UserError):
        return None
    stored = {k: v for k, v in config.items() if k in names}
    return json.dumps(stored, sort_keys=True, default=list)

"""Which recorded trainings answer a grid job's rows, so no model is trained twice.

Rows that share a ``training_key`` train the same model: the first such row still missing
trains it and the others follow it; a row whose training is already in the results tree
(by any paper or axis of the method) is answered from it, by its recorded metrics when
its scoring matches, else by scoring the weights ``--keep-models`` kept.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kdsearch import results as results_lib
from kdsearch.errors import UserError
from kdsearch.vocabulary import Status

if TYPE_CHECKING:
    from kdsearch.plan import Job, TrialSpec


def share_trainings(job: Job, pending: list[TrialSpec], recorded: Mapping[str, list[dict[str, Any]]],
                    results_dir: str | os.PathLike[str], precision: Mapping[str, str]) -> None:
    """Split ``pending`` rows into rows answered by a recorded training with the same scoring,
    rows scored on a recorded training's kept weights (``--keep-models``), trainings to run
    (their first row) and the rows each of those serves. A recorded training counts only
    when it was computed in the precision the row resolves to (``precision``, by trial key),
    or was recorded before rows named theirs."""
    scoring = {row["trial_key"]: _scoring_of(row) for rows in recorded.values() for row in rows}
    leads: dict[str, TrialSpec] = {}
    for spec in pending:
        same = [row for row in recorded.get(spec.training_key, [])
                if _precision_of(row) in (precision[spec.trial_key], None)]
        rows = [row for row in same if row["status"] == Status.OK] or same
        wanted = _scoring_json(spec)
        source = next((row for row in rows if scoring[row["trial_key"]] == wanted), None)
        if source is not None:
            job.reused.append((spec, source))
            continue
        if rows and rows[0]["status"] == Status.OK and results_lib.kept_model_path(results_dir, spec.training_key).is_file():
            job.rescored.append((spec, rows[0]))
            continue
        lead = leads.setdefault(spec.training_key, spec)
        if lead is spec:
            job.trials.append(spec)
        else:
            job.followers.setdefault(lead.trial_key, []).append(spec)


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

"""One row of an ablation (a cell: axis value × category × seed), resolved, with its keys.

A row is what a results table shows and a Parquet file stores. Rows that train the same
model share a training (their ``training_key``); :mod:`kdsearch.reuse` decides which row of
a training trains it (its lead) and which follow it; :mod:`kdsearch.plan` lists an axis's rows.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdsearch import results as results_lib
from kdsearch.settings import settings_for
from kdsearch.spaces import Axis, SearchSpace
from kdsearch.trial import Trial, resolve

__all__ = ["TrialSpec", "make_trial", "value_label"]


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a fully resolved configuration and its identity.

    Attributes:
        paper, axis, value: the ablation cell (``value`` is the row label or the sampled value).
        value_numeric: the row's number for numeric axes (plots), else ``None``.
        method, dataset, category, category_kind, seed, profile: what runs on what.
        trial: the resolved trial (training, method and synthesis configs).
        trial_key: stable hash of the cell and :attr:`identity` (see :func:`kdsearch.results.make_trial_key`).
    """

    paper: str
    axis: str
    value: str
    value_numeric: float | None
    method: str
    dataset: str
    category: str
    category_kind: str | None
    seed: int
    profile: str
    trial: Trial
    trial_key: str

    @property
    def label(self) -> str:
        """Short human name: ``value · category · seed``."""
        return f"{self.axis}={self.value} · {self.category} · seed {self.seed}"

    @property
    def epochs(self) -> int:
        return self.trial.train.epochs

    @functools.cached_property
    def training_key(self) -> str:
        """The training this row's metrics come from (:func:`kdsearch.results.make_training_key`)."""
        return results_lib.make_training_key(self.method, self.dataset, self.category, self.seed,
                                             self.trial.training_identity)

    @property
    def identity(self) -> dict[str, Any]:
        """The flat configuration (:attr:`Trial.identity`) hashed into ``trial_key``, stored as
        ``config_json`` and sent to W&B."""
        return self.trial.identity

    def precision_on(self, device_type: str) -> str:
        """The precision (``bf16``/``fp32``) this row trains in on a device of ``device_type``
        (its own ``device`` setting wins): not part of its key, so resume and reuse check it."""
        from kdsearch.numerics import resolved_precision

        train = self.trial.train
        return resolved_precision(train.precision, train.device if train.device in ("cpu", "cuda") else device_type)


def make_trial(space: SearchSpace, axis: Axis, value: Any, *, profile: str, category: str, seed: int,
               dataset: str | None = None, data_root: str | None = None, extra: Mapping[str, Any] | None = None,
               textures: Mapping[str, Any] | None = None,
               label: str | None = None, value_numeric: float | None = None) -> TrialSpec:
    """Resolve one row of an ablation (or one sampled trial of a search) from its settings' layers
    (:func:`kdsearch.settings.settings_for`): defaults < profile < ``extra`` (``--set``) < the
    command line (dataset, data root, category, seed) < the axis's fixed values < its row.

    Args:
        space: the paper's search space.
        axis: the axis the trial belongs to.
        value: row label (grid) or the sampled value (search).
        profile: ``smoke``/``quick``/``paper``.
        category: dataset category.
        seed: random seed.
        dataset: dataset name (default: the profile's).
        data_root: where a real dataset lives.
        extra: user ``--set`` values, applied to every trial.
        textures: ``--textures`` as a method setting.
        label: the row's label (default ``value``; a search's is :func:`value_label`).
        value_numeric: numeric value for plots (default: ``axis.numeric_value(label)``).
    """
    command_line = {"data_root": data_root, "category": category, "seed": seed, **({"dataset": dataset} if dataset else {})}
    trial = resolve(settings_for(space.method, profile=profile, space=space, user=extra, textures=textures,
                                 command_line=command_line, axis=axis, value=value))
    label = str(value) if label is None else label
    dataset = trial.train.dataset
    key = results_lib.make_trial_key(space.paper, axis.name, axis.key_label(label), dataset, category, seed, profile,
                                     trial.identity)
    if value_numeric is None:
        value_numeric = axis.numeric_value(label)
    return TrialSpec(
        paper=space.paper, axis=axis.name, value=label, value_numeric=value_numeric, method=space.method,
        dataset=dataset, category=category, category_kind=trial.category_kind,
        seed=seed, profile=profile, trial=trial, trial_key=key,
    )


def value_label(value: Any) -> str:
    """Label of a sampled search value: floats with 6 significant digits (``0.00123``)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)



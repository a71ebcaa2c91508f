"""Stable identities: a trial's key (its cell of a table) and a training's key (what decides its weights).

Both are 16 hex characters of the SHA-256 of a canonical JSON, so equal inputs give equal
keys on every machine and run. The rule that made a key is :data:`KEY_VERSION`: it enters
every hash, and each result row records it (``key_version``), so a change of what a trial's
identity holds is a new version with a one-time migration of the stored rows
(:mod:`kdsearch.key_migration`), never a shim that keeps old keys.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

#: The rule keys are made by. 1: rows written before rows recorded it (a trial's identity
#: left out training fields at their defaults and synthesis fields at the method's); 2: the
#: identity holds every key field (:attr:`kdsearch.trial.Trial.identity`).
KEY_VERSION = 2


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace; numpy scalars and paths are converted."""

    def default(o: Any) -> Any:
        if hasattr(o, "item") and callable(o.item):  # numpy scalar
            return o.item()
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise ValueError(f"config value {o!r} of type {type(o).__name__} is not JSON-serialisable")

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=default)


def _short_hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:16]


def make_trial_key(
    paper: str,
    axis: str,
    value: str,
    dataset: str,
    category: str,
    seed: int,
    profile: str,
    config: Mapping[str, Any],
) -> str:
    """Return the stable identity of one trial.

    Args:
        paper: Paper short name, e.g. ``"adps"``.
        axis: Ablation axis, e.g. ``"k"``.
        value: The axis value's label as the paper prints it, e.g. ``"4"``.
        dataset: Dataset name.
        category: Category name.
        seed: Random seed.
        profile: Profile name (``smoke``, ``quick``, ``paper``...).
        config: The trial's full configuration; must be JSON-serialisable.

    Returns:
        The first 16 hex characters of the SHA-256 of a canonical JSON (sorted keys)
        of all arguments and :data:`KEY_VERSION`. Equal inputs give equal keys on every machine and run.

    Raises:
        ValueError: If ``config`` holds something JSON cannot express (NaN included).
    """
    payload = {
        "key_version": KEY_VERSION,
        "paper": str(paper),
        "axis": str(axis),
        "value": str(value),
        "dataset": str(dataset),
        "category": str(category),
        "seed": int(seed),
        "profile": str(profile),
        "config": dict(config),
    }
    return _short_hash(payload)


def make_training_key(method: str, dataset: str, category: str, seed: int, training: Mapping[str, Any]) -> str:
    """The stable identity of one training: what decides its weights, whatever row asks for it.

    Args:
        method: method name.
        dataset: dataset name.
        category: category name.
        seed: random seed.
        training: the trial's training identity (:attr:`kdsearch.trial.Trial.training_identity`).

    Returns:
        16 hex characters of the SHA-256 of their canonical JSON (and :data:`KEY_VERSION`); paper, axis, row and
        profile do not enter (the profile's budget is in ``training``).
    """
    payload = {"key_version": KEY_VERSION, "method": str(method), "dataset": str(dataset), "category": str(category), "seed": int(seed),
               "training": dict(training)}
    return _short_hash(payload)

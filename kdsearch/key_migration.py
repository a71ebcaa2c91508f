"""Rewrite a results tree keyed by an earlier key rule to :data:`~kdsearch.results.keys.KEY_VERSION`.

A row's keys hash its trial's identity (:attr:`kdsearch.trial.Trial.identity`). Version 1 left
out of it the training fields at their defaults that were added after keys were first
recorded (``preprocessing``) and the synthesis fields at the method's defaults, so its keys
stayed put as settings were added; version 2 hashes every key field. A tree written under
version 1 (rows without a ``key_version``) is migrated once, the first time a sweep plans on
it (:func:`kdsearch.plan.plan`; the tables read any version as it is, as no table depends on
a key): each row's trial is rebuilt from its stored ``config_json`` (the defaults version 1
left out put back, the synthesis changes laid over the method's default synthesis), and its
``trial_key``, ``training_key``, ``config_json`` (the version-2 identity) and ``reused_from``
(through the old→new trial keys) are rewritten, with its epoch curve, its kept model and its
training's claim files moved to the new keys. Nothing else in a row changes.

Crash safety: every new file is written atomically before any old one is removed, and the
old→new maps are kept in ``<results>/_key_migration.json`` until the end, so a migration cut
short leaves a readable tree (a migrated row may sit beside its old one) that the next read
finishes. Migrations of one tree take turns (a lock file, ``<results>/.key_migration.lock``).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kdsearch.errors import UserError, warn
from kdsearch.results.keys import KEY_VERSION, canonical_json, make_trial_key, make_training_key
from kdsearch.results.store import EPOCHS_DIRNAME, MODELS_DIRNAME, _atomic_write, _files
from kdsearch.runlock import CLAIMS_DIRNAME

__all__ = ["migrate_keys", "keys_of_row", "JOURNAL_NAME"]

JOURNAL_NAME = "_key_migration.json"
LOCK_NAME = ".key_migration.lock"
#: Method-config fields whose stored value is a file's fingerprint, not the path.
_FINGERPRINTED = ("texture_root", "pretrained")


#: Row files found keyed by this rule, with their modification times: every plan asks (once per
#: axis of ``--axis all``), and a file read once is not read again until it is rewritten.
_CURRENT: set[tuple[str, int]] = set()


def _old_files(root: Path) -> list[Path]:
    """The row files of ``root`` whose keys are of an earlier rule (no ``key_version``, or a lower one)."""
    old = []
    for path in _files(root, None, None, epochs=False):
        try:
            stamp = (str(path), path.stat().st_mtime_ns)
            if stamp in _CURRENT:
                continue
            schema = pq.read_schema(path)
            if "key_version" in schema.names:
                version = pq.read_table(path, columns=["key_version"]).column(0).to_pylist()
                if all(v is not None and v >= KEY_VERSION for v in version):
                    _CURRENT.add(stamp)
                    continue
            elif "trial_key" not in schema.names:
                continue  # not a results file: the readers warn about it
        except (OSError, pa.ArrowException):
            continue  # unreadable: the readers warn about it
        old.append(path)
    return old


def _rebuild(row: Mapping[str, Any], config: Mapping[str, Any]):
    """The trial a version-1 row describes, and its method config as stored (files fingerprinted)."""
    from kdsearch.config import apply_overrides, to_dict
    from kdsearch.methods import build_config
    from kdsearch.trial import TrainConfig, Trial

    method = str(row["method"])
    method_config = build_config(method)
    names = {f.name for f in dataclasses.fields(method_config)}
    stored = {k: v for k, v in config.items() if k in names}
    method_config = apply_overrides(method_config, {k: v for k, v in stored.items() if k not in _FINGERPRINTED},
                                    what=f"{method} config")
    # A fingerprint stands where the path was: kept as it is, so the synthesis it decides is the same.
    method_config = dataclasses.replace(method_config, **{k: stored[k] for k in _FINGERPRINTED if k in stored},
                                        **{k: None for k, v in stored.items() if v is None and k not in _FINGERPRINTED})
    key_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("key")}
    train = apply_overrides(TrainConfig(method=method, dataset=str(row["dataset"]), category=str(row["category"]),
                                        seed=int(row["seed"])),
                            {k: v for k, v in config.items() if k in key_fields}, what="training")
    synthesis = method_config.synthesis()
    if synthesis is not None and config.get("synthesis"):
        synthesis = apply_overrides(synthesis, config["synthesis"], what="synthesis")
    method_cfg = to_dict(method_config)
    method_cfg.update({k: stored[k] for k in _FINGERPRINTED if k in stored})
    return Trial(train, method_config, synthesis), method_cfg  # positional: robust to field renames


def keys_of_row(row: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A version-1 row's ``trial_key``, ``training_key`` and ``config_json`` under :data:`KEY_VERSION`.

    Raises:
        UserError, ValueError, KeyError, TypeError: a row whose trial cannot be rebuilt.
    """
    from kdsearch.spaces import load_search_space

    config = json.loads(row["config_json"])
    trial, method_cfg = _rebuild(row, config)
    identity = trial.identity_with(method_cfg)
    try:
        axis = load_search_space(str(row["paper"])).axes.get(str(row["axis"]))
    except UserError:
        axis = None
    label = axis.key_label(str(row["value"])) if axis is not None else str(row["value"])
    trial_key = make_trial_key(row["paper"], row["axis"], label, row["dataset"], row["category"], row["seed"],
                               row["profile"], identity)
    training_key = make_training_key(row["method"], row["dataset"], row["category"], row["seed"],
                                     trial.training_identity_of(identity))
    return trial_key, training_key, identity


def _set(table: pa.Table, name: str, value: Any, kind: pa.DataType) -> pa.Table:
    column = pa.array([value] * table.num_rows, type=kind)
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, column) if index >= 0 else table.append_column(name, column)


def _move(old: Path, new: Path) -> None:
    """Move a file or folder to its new key's name, unless that is already there."""
    if old.exists() and not new.exists():
        os.replace(old, new)


def migrate_keys(results_dir: str | os.PathLike[str], *, quiet: bool = False) -> int:
    """Migrate the rows of ``results_dir`` keyed by an earlier rule; return how many were.

    Prints ``migrated N rows of RESULTS to key version 2`` when it migrated any (unless
    ``quiet``). A row whose trial cannot be rebuilt (its method is gone) keeps its keys,
    with a warning: a sweep plans its trial again. Idempotent; safe to call on every read.
    """
    root = Path(results_dir)
    if not root.is_dir() or not (_old_files(root) or (root / JOURNAL_NAME).exists()):
        return 0
    try:
        guard = open(root / LOCK_NAME, "a")
    except OSError as exc:
        warn(f"cannot migrate {root} to key version {KEY_VERSION} ({exc}); its rows keep their old keys, so a sweep "
             f"trains them again: make the folder writable")
        return 0
    with guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            return _migrate(root, quiet)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _migrate(root: Path, quiet: bool) -> int:
    journal_path = root / JOURNAL_NAME
    journal: dict[str, dict[str, str]] = {"trial": {}, "training": {}}
    if journal_path.exists():
        try:
            journal = {**journal, **json.loads(journal_path.read_text())}
        except (OSError, ValueError):
            pass
    plans = []
    for path in _old_files(root):  # taken again under the lock: another process may have migrated them
        table = pq.read_table(path)
        row = table.to_pylist()[0]
        try:
            trial_key, training_key, identity = keys_of_row(row)
        except (UserError, ValueError, KeyError, TypeError) as exc:
            warn(f"cannot migrate {path} to key version {KEY_VERSION} ({exc}); it keeps its old key and its trial "
                 f"is planned again")
            continue
        journal["trial"][str(row["trial_key"])] = trial_key
        if row.get("training_key"):
            journal["training"][str(row["training_key"])] = training_key
        plans.append((path, table, row, trial_key, training_key, identity))
    # The maps first: a row whose reused_from names a row migrated before a crash still finds it.
    _write_json(journal_path, journal)
    for path, table, row, trial_key, training_key, identity in plans:
        reused = row.get("reused_from")
        updates = {"trial_key": trial_key, "training_key": training_key if row.get("training_key") else None,
                   "reused_from": journal["trial"].get(reused, reused) if reused else reused,
                   "config_json": canonical_json(identity), "key_version": KEY_VERSION}
        for name, value in updates.items():
            table = _set(table, name, value, pa.int64() if name == "key_version" else pa.string())
        _atomic_write(table, path.parent / f"{trial_key}.parquet")
        curve = path.parent / EPOCHS_DIRNAME / path.name
        if curve.is_file():
            _atomic_write(_set(pq.read_table(curve), "trial_key", trial_key, pa.string()),
                          curve.parent / f"{trial_key}.parquet")
    # Followers written by a newer sweep may name a migrated row by its old key: none can,
    # as no sweep of this rule plans on a tree before migrating it.
    for old, new in journal["training"].items():
        for folder, suffixes in ((MODELS_DIRNAME, (".pt",)), (CLAIMS_DIRNAME, (".claim", ".wanted"))):
            for suffix in suffixes:
                _move(root / folder / f"{old}{suffix}", root / folder / f"{new}{suffix}")
    for path, _table, _row, trial_key, *_ in plans:
        if path.name != f"{trial_key}.parquet":
            (path.parent / EPOCHS_DIRNAME / path.name).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
    journal_path.unlink(missing_ok=True)
    if plans and not quiet:
        print(f"migrated {len(plans)} rows of {root} to key version {KEY_VERSION}", flush=True)
    return len(plans)


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "w") as handle:
        json.dump(obj, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)

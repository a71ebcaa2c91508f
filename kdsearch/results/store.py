"""The results tree on disk: where each file goes, writing it atomically, reading it back.

Every file is written under a temporary name starting with ``.`` in its final folder
and then renamed with :func:`os.replace`, so a reader never sees half a file and a
rerun of the same ``trial_key`` replaces the old file instead of adding a row. Readers
skip paper, axis and file names that start with ``.`` or ``_`` (temporary files, the
``_epochs`` curves, kept models, plots).
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kdsearch.errors import warn
from kdsearch.results.schema import EPOCH_SCHEMA, RESULT_SCHEMA, epoch_row, result_row
from kdsearch.vocabulary import STATUSES, Status

EPOCHS_DIRNAME = "_epochs"
#: Trained weights kept by ``--keep-models``: ``<results>/_models/<training_key>.pt``.
MODELS_DIRNAME = "_models"


def _atomic_write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_trial_result(row: Mapping[str, Any], results_dir: str | os.PathLike[str]) -> Path:
    """Write one trial's row as ``<results_dir>/<paper>/<axis>/<trial_key>.parquet``.

    Args:
        row: Column values; passed through :func:`result_row` (so a partial row
            gets its defaults and a bad one is refused before anything is written).
        results_dir: Root of the results tree.

    Returns:
        The path written. Writing the same ``trial_key`` again replaces the file.
    """
    full = result_row(**row)
    table = pa.Table.from_pylist([full], schema=RESULT_SCHEMA)
    path = Path(results_dir) / full["paper"] / full["axis"] / f"{full['trial_key']}.parquet"
    return _atomic_write(table, path)


def write_epoch_curves(rows: Sequence[Mapping[str, Any]], results_dir: str | os.PathLike[str]) -> Path:
    """Write one trial's per-epoch rows to ``<results_dir>/<paper>/<axis>/_epochs/<trial_key>.parquet``.

    Args:
        rows: One mapping per epoch (see :func:`epoch_row`), all of the same trial.
        results_dir: Root of the results tree.

    Returns:
        The path written (replacing an earlier file of the same trial).

    Raises:
        ValueError: If ``rows`` is empty or mixes trials, papers or axes.
    """
    full = [epoch_row(**r) for r in rows]
    if not full:
        raise ValueError("write_epoch_curves needs at least one row")
    ids = {(r["trial_key"], r["paper"], r["axis"]) for r in full}
    if len(ids) != 1:
        raise ValueError(f"epoch rows mix several trials: {sorted(ids)}")
    trial_key, paper, axis = ids.pop()
    table = pa.Table.from_pylist(full, schema=EPOCH_SCHEMA)
    return _atomic_write(table, Path(results_dir) / paper / axis / EPOCHS_DIRNAME / f"{trial_key}.parquet")


def _files(results_dir: str | os.PathLike[str], paper: str | None, axis: str | None, epochs: bool) -> list[Path]:
    root = Path(results_dir)
    if not root.is_dir():
        return []
    parts = [paper or "*", axis or "*", *([EPOCHS_DIRNAME] if epochs else [])]
    found = []
    for path in root.glob("/".join([*parts, "*.parquet"])):
        rel = path.relative_to(root).parts
        # paper, axis and file names starting with "." or "_" are hidden (temp files, _plots...)
        hidden = [rel[0], rel[1], rel[-1]]
        if path.is_file() and not any(name.startswith((".", "_")) for name in hidden):
            found.append(path)
    return sorted(found)


def _readable(files: list[Path], schema: pa.Schema) -> list[tuple[Path, pa.Schema]]:
    """The files that are results of this schema, with their schemas; one warning per other file.

    A file that cannot be read (cut short, not Parquet) or that lacks the schema's key
    columns (a foreign table someone put in the tree) is skipped, so a resumed sweep runs
    its trial again and the tables are built from the rest.
    """
    required = {"trial_key", "paper", "axis", "value", "status"} & set(schema.names) or set(schema.names[:1])
    usable = []
    for path in files:
        try:
            found = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            warn(f"skipping {path}: not a readable Parquet file ({type(exc).__name__}); its trial, if any, runs "
                 f"again on --resume; delete the file to silence this")
            continue
        missing = sorted(required - set(found.names))
        try:
            pa.unify_schemas([schema, found], promote_options="permissive")
        except pa.ArrowException:
            missing = missing or ["(columns of another type)"]
        if missing:
            warn(f"skipping {path}: not a kdsearch results file (lacks {', '.join(missing)}); delete or move it")
            continue
        usable.append((path, found))
    return usable


def _read(files: list[Path], schema: pa.Schema, columns: Sequence[str] | None = None) -> pd.DataFrame:
    usable = _readable(files, schema)
    files = [path for path, _ in usable]
    if not files:
        table = schema.empty_table()
        return table.select(list(columns)).to_pandas() if columns else table.to_pandas()
    unified = pa.unify_schemas([schema, *(found for _, found in usable)], promote_options="permissive")
    # The reference schema's types win; columns only some files have are appended.
    fields = [schema.field(n) if n in schema.names else unified.field(n) for n in unified.names]
    dataset = ds.dataset([str(f) for f in files], format="parquet", schema=pa.schema(fields, metadata=schema.metadata))
    return _current_labels(dataset.to_table(columns=list(columns) if columns else None).to_pandas())


def _current_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows recorded under a row's former label (its search space's ``former``) read as its current one."""
    if frame.empty or not {"paper", "axis", "value"} <= set(frame.columns):
        return frame
    from kdsearch.errors import UserError
    from kdsearch.spaces import load_search_space

    for (paper, axis_name), index in frame.groupby(["paper", "axis"]).groups.items():
        try:
            axis = load_search_space(str(paper)).axes.get(str(axis_name))
        except UserError:
            continue
        if axis is not None and axis.former:
            now = {was: label for label, was in axis.former.items()}
            frame.loc[index, "value"] = frame.loc[index, "value"].replace(now)
    return frame


def read_results(
    results_dir: str | os.PathLike[str],
    paper: str | None = None,
    axis: str | None = None,
) -> pd.DataFrame:
    """Read the trial rows of a results tree as one DataFrame.

    Args:
        results_dir: Root of the results tree.
        paper: Only this paper's folder, if given.
        axis: Only this axis's folders, if given.

    Returns:
        One row per trial file, with at least :data:`RESULT_SCHEMA`'s columns in its
        order (columns a file lacks are null). Empty, with those columns, when
        nothing is there. Epoch curves and temporary files are never included.
    """
    return _read(_files(results_dir, paper, axis, epochs=False), RESULT_SCHEMA)


def read_epoch_curves(
    results_dir: str | os.PathLike[str],
    paper: str | None = None,
    axis: str | None = None,
) -> pd.DataFrame:
    """Read the per-epoch curves of a results tree as one DataFrame.

    Args:
        results_dir: Root of the results tree.
        paper: Only this paper, if given.
        axis: Only this axis, if given.

    Returns:
        One row per (trial, epoch), with :data:`EPOCH_SCHEMA`'s columns; empty when
        nothing is there.
    """
    return _read(_files(results_dir, paper, axis, epochs=True), EPOCH_SCHEMA)


def completed_trial_keys(
    results_dir: str | os.PathLike[str],
    paper: str,
    axis: str,
    statuses: Iterable[str] = STATUSES,
) -> set[str]:
    """Return the keys of the trials already written for one paper and axis.

    Args:
        results_dir: Root of the results tree.
        paper: Paper short name.
        axis: Axis name.
        statuses: Count only trials with one of these statuses (e.g. ``("ok",)``
            to rerun failed and diverged ones).

    Returns:
        The set of ``trial_key`` values found.
    """
    return set(completed_trial_precisions(results_dir, paper, axis, statuses))


def completed_trial_precisions(
    results_dir: str | os.PathLike[str],
    paper: str,
    axis: str,
    statuses: Iterable[str] = STATUSES,
) -> dict[str, str | None]:
    """The trials already written for one paper and axis, each with the precision it was
    computed in (``bf16``/``fp32``; ``None`` for a row written before rows recorded it).

    Args and statuses as :func:`completed_trial_keys`.
    """
    wanted = set(statuses)
    unknown = wanted - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown status(es) {sorted(unknown)}; known: {STATUSES}")
    frame = _read(_files(results_dir, paper, axis, epochs=False), RESULT_SCHEMA,
                  columns=("trial_key", "status", "precision"))
    return {str(k): (p if isinstance(p, str) else None)
            for k, s, p in zip(frame["trial_key"], frame["status"], frame["precision"]) if s in wanted}


def repoint_row(results_dir: str | os.PathLike[str], row: Mapping[str, Any], reused_from: str) -> None:
    """Rewrite a recorded row so that its ``reused_from`` names ``reused_from`` (a row that
    trained the same ``training_key``), nothing else changed. A row that is gone is left gone."""
    path = Path(results_dir) / str(row["paper"]) / str(row["axis"]) / f"{row['trial_key']}.parquet"
    try:
        table = pq.read_table(path, schema=RESULT_SCHEMA)
    except (OSError, pa.ArrowException):
        return
    column = pa.array([reused_from] * table.num_rows, type=pa.string())
    _atomic_write(table.set_column(table.schema.get_field_index("reused_from"), "reused_from", column), path)


def recorded_trainings(results_dir: str | os.PathLike[str], method: str,
                       statuses: Iterable[str] = (Status.OK, Status.DIVERGED)) -> dict[str, list[dict[str, Any]]]:
    """Rows of ``method`` in the whole tree (every paper and axis) that hold a training's
    result, by ``training_key``: what a new row with the same training can be written from.

    Args:
        results_dir: Root of the results tree.
        method: Method name.
        statuses: Rows that count as a training's result (a failed one does not).

    Returns:
        ``training_key`` → its rows (``trial_key``, ``paper``, ``axis``, ``config_json``
        and the metric, timing and status columns); rows written before trainings were
        keyed (no ``training_key``) are left out.
    """
    wanted = set(statuses)
    frame = _read(_files(results_dir, None, None, epochs=False), RESULT_SCHEMA)
    if frame.empty:
        return {}
    frame = frame[(frame["method"] == method) & frame["training_key"].notna() & frame["status"].isin(wanted)]
    out: dict[str, list[dict[str, Any]]] = {}
    for row in frame.to_dict("records"):
        out.setdefault(str(row["training_key"]), []).append(row)
    return out


def kept_model_path(results_dir: str | os.PathLike[str], training_key: str) -> Path:
    """Where ``--keep-models`` keeps a training's weights (a hidden folder: dataset readers skip it)."""
    return Path(results_dir) / MODELS_DIRNAME / f"{training_key}.pt"

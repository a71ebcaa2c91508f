"""The results tree: one Parquet file per finished trial, written atomically.

Layout under a results directory::

    <results>/<paper>/<axis>/<trial_key>.parquet            one row: RESULT_SCHEMA
    <results>/<paper>/<axis>/_epochs/<trial_key>.parquet    per-epoch curves: EPOCH_SCHEMA

Every file is written under a temporary name starting with ``.`` in its final folder
and then renamed with :func:`os.replace`, so a reader never sees half a file and a
rerun of the same ``trial_key`` replaces the old file instead of adding a row.

Dataset readers skip names that start with ``.`` or ``_``, so the trial files read
as one table and the ``_epochs`` folders (a different schema) stay out of it::

    import pyarrow.dataset as ds
    table = ds.dataset("results", format="parquet").to_table()

    import pandas as pd
    frame = pd.read_parquet("results")                      # the whole tree
    frame = pd.read_parquet("results/adps/k")               # one paper and axis
    curves = pd.read_parquet("results/adps/k/_epochs")      # epoch curves of one axis

    import duckdb
    duckdb.sql("SELECT axis, value, avg(image_auroc) FROM "
               "read_parquet('results/*/*/*.parquet', union_by_name=true) GROUP BY ALL")
    duckdb.sql("SELECT * FROM read_parquet('results/*/*/_epochs/*.parquet', union_by_name=true)")

With duckdb use the fixed-depth glob above, not ``results/**/*.parquet``, which would
also match the epoch files. :func:`read_results` and :func:`read_epoch_curves` do the
same reading with the schema applied (columns a file lacks come back as nulls).

Metrics are fractions in [0, 1], NaN when undefined (e.g. no anomalous pixel).
``au_pro`` is the MVTec AD definition, ``au_pro_rd4ad`` the RD4AD code's protocol.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import numbers
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kdsearch.catalog import CATALOG
from kdsearch.trial import STATUSES, TEST_METRICS, Status

__all__ = [
    "EPOCHS_DIRNAME",
    "EPOCH_SCHEMA",
    "METRIC_COLUMNS",
    "MVTEC_OBJECTS",
    "MVTEC_TEXTURES",
    "mvtec_kind",
    "RESULT_SCHEMA",
    "STATUSES",
    "completed_trial_keys",
    "recorded_trainings",
    "epoch_row",
    "make_trial_key",
    "make_training_key",
    "kept_model_path",
    "read_epoch_curves",
    "read_results",
    "result_row",
    "write_epoch_curves",
    "write_trial_result",
]

SCHEMA_VERSION = "1"
EPOCHS_DIRNAME = "_epochs"
#: Trained weights kept by ``--keep-models``: ``<results>/_models/<training_key>.pt``.
MODELS_DIRNAME = "_models"
METRIC_COLUMNS = TEST_METRICS
# A row that names no kind of its own gets one from the MVTec AD split, the one every
# paper's texture/object table uses.
_MVTEC = CATALOG["mvtec"]
MVTEC_TEXTURES = _MVTEC.texture_categories
MVTEC_OBJECTS = _MVTEC.object_categories

_UTC_US = pa.timestamp("us", tz="UTC")
_META = {b"kdsearch.schema_version": SCHEMA_VERSION.encode()}

RESULT_SCHEMA = pa.schema(
    [
        ("trial_key", pa.string()),
        ("paper", pa.string()),
        ("axis", pa.string()),
        ("value", pa.string()),
        ("value_numeric", pa.float64()),
        ("method", pa.string()),
        ("dataset", pa.string()),
        ("category", pa.string()),
        ("category_kind", pa.string()),
        ("seed", pa.int64()),
        ("profile", pa.string()),
        ("epochs", pa.int64()),
        ("image_auroc", pa.float64()),
        ("pixel_auroc", pa.float64()),
        ("au_pro", pa.float64()),
        ("au_pro_rd4ad", pa.float64()),
        ("pixel_ap", pa.float64()),
        ("train_seconds", pa.float64()),
        ("eval_seconds", pa.float64()),
        ("train_images_per_second", pa.float64()),
        ("peak_memory_mb", pa.float64()),
        ("restarts", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("config_json", pa.string()),
        ("git_sha", pa.string()),
        ("device", pa.string()),
        ("created_at", _UTC_US),
        ("training_key", pa.string()),
        ("reused_from", pa.string()),
    ],
    metadata=_META,
)

EPOCH_SCHEMA = pa.schema(
    [
        ("trial_key", pa.string()),
        ("paper", pa.string()),
        ("axis", pa.string()),
        ("value", pa.string()),
        ("category", pa.string()),
        ("seed", pa.int64()),
        ("epoch", pa.int64()),
        ("loss", pa.float64()),
        ("val_metric", pa.float64()),
        ("val_metric_name", pa.string()),
        ("seconds", pa.float64()),
        ("extra_json", pa.string()),
    ],
    metadata=_META,
)

# Columns a caller must give; everything else has a default.
_RESULT_REQUIRED = ("paper", "axis", "value", "method", "dataset", "category", "seed", "profile", "status")
_EPOCH_REQUIRED = ("trial_key", "paper", "axis", "value", "category", "seed", "epoch", "loss")
# Columns that may be null; other float columns turn None into NaN ("undefined").
_RESULT_NULLABLE = {"value_numeric", "category_kind", "epochs", "restarts", "error", "git_sha", "device",
                    "training_key", "reused_from"}
_EPOCH_NULLABLE = {"val_metric", "val_metric_name", "seconds"}

_ROUNDING = 1e-9
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _canonical_json(obj: Any) -> str:
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
        of all arguments. Equal inputs give equal keys on every machine and run.

    Raises:
        ValueError: If ``config`` holds something JSON cannot express (NaN included).
    """
    payload = {
        "paper": str(paper),
        "axis": str(axis),
        "value": str(value),
        "dataset": str(dataset),
        "category": str(category),
        "seed": int(seed),
        "profile": str(profile),
        "config": dict(config),
    }
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()[:16]


def make_training_key(method: str, dataset: str, category: str, seed: int, training: Mapping[str, Any]) -> str:
    """The stable identity of one training: what decides its weights, whatever row asks for it.

    Args:
        method: method name.
        dataset: dataset name.
        category: category name.
        seed: random seed.
        training: the trial's training identity (:attr:`kdsearch.trial.Trial.training_identity`).

    Returns:
        16 hex characters of the SHA-256 of their canonical JSON; paper, axis, row and
        profile do not enter (the profile's budget is in ``training``).
    """
    payload = {"method": str(method), "dataset": str(dataset), "category": str(category), "seed": int(seed),
               "training": dict(training)}
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()[:16]


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _coerce(name: str, kind: pa.DataType, x: Any, nullable: bool) -> Any:
    """Check one field against its Arrow type and return the value to store."""
    if pa.types.is_floating(kind):
        if x is None:
            return None if nullable else math.nan
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise ValueError(f"column {name!r} needs a number, got {x!r}")
        return float(x)
    if x is None:
        if nullable:
            return None
        raise ValueError(f"column {name!r} may not be null")
    if pa.types.is_integer(kind):
        if not _is_int(x):
            raise ValueError(f"column {name!r} needs an integer, got {x!r}")
        return int(x)
    if pa.types.is_string(kind):
        if not isinstance(x, str):
            raise ValueError(f"column {name!r} needs a string, got {x!r}")
        return x
    if pa.types.is_timestamp(kind):
        if isinstance(x, pd.Timestamp):
            x = x.to_pydatetime()
        if not isinstance(x, dt.datetime) or x.tzinfo is None:
            raise ValueError(f"column {name!r} needs a timezone-aware datetime, got {x!r}")
        return x.astimezone(dt.timezone.utc)
    raise TypeError(f"unsupported column type {kind} for {name!r}")  # pragma: no cover


def _validate(
    fields: Mapping[str, Any],
    schema: pa.Schema,
    required: Iterable[str],
    nullable: set[str],
) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(schema.names))
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; known: {schema.names}")
    missing = [name for name in required if fields.get(name) is None]
    if missing:
        raise ValueError(f"missing required column(s) {missing}")
    return {f.name: _coerce(f.name, f.type, fields.get(f.name), f.name in nullable) for f in schema}


def _numeric_or_none(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def mvtec_kind(category: str) -> str | None:
    """``texture`` or ``object`` for an MVTec AD category name, else ``None`` (rows written
    before ``category_kind`` existed carry no kind of their own)."""
    return _MVTEC.published_kind(category)


def _check_name(what: str, name: str, pattern: re.Pattern[str] = _NAME_RE) -> None:
    if not pattern.match(name):
        raise ValueError(
            f"{what} {name!r} cannot be used as a folder or file name: use letters, digits, "
            "'_', '.', '+', '-', starting with a letter or digit"
        )


def result_row(**fields: Any) -> dict[str, Any]:
    """Build one validated row of :data:`RESULT_SCHEMA`.

    Args:
        **fields: Column values by name. Required: ``paper, axis, value, method,
            dataset, category, seed, profile, status``. ``config_json`` may be a
            JSON string or a mapping (stored as canonical JSON). Defaults:
            ``trial_key`` from :func:`make_trial_key` over the row and its config,
            ``value_numeric`` the value parsed as a number (null when it is a
            label), ``category_kind`` from the MVTec AD texture/object split,
            metrics and timings NaN, ``error``/``git_sha``/``device``/``epochs``
            null, ``config_json`` ``"{}"``, ``created_at`` now (UTC).

    Returns:
        A dict with every schema column, in schema order.

    Raises:
        ValueError: On an unknown column, a missing required one, a wrong type, a
            status outside :data:`STATUSES`, or a metric outside [0, 1].
    """
    fields = dict(fields)
    config = fields.get("config_json")
    if config is None:
        config = {}
    if isinstance(config, Mapping):
        config_map = dict(config)
        fields["config_json"] = _canonical_json(config_map)
    elif isinstance(config, str):
        try:
            config_map = json.loads(config)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config_json is not valid JSON: {exc}") from exc
        if not isinstance(config_map, dict):
            raise ValueError("config_json must encode a JSON object")
    else:
        raise ValueError(f"config_json needs a JSON string or a mapping, got {type(config).__name__}")
    if isinstance(fields.get("value"), str) and "value_numeric" not in fields:
        fields["value_numeric"] = _numeric_or_none(fields["value"])
    if isinstance(fields.get("category"), str) and "category_kind" not in fields:
        fields["category_kind"] = mvtec_kind(fields["category"])
    fields.setdefault("created_at", dt.datetime.now(dt.timezone.utc))
    if fields.get("trial_key") is None and not [n for n in _RESULT_REQUIRED if fields.get(n) is None]:
        fields["trial_key"] = make_trial_key(
            fields["paper"], fields["axis"], fields["value"], fields["dataset"],
            fields["category"], fields["seed"], fields["profile"], config_map,
        )
    row = _validate(fields, RESULT_SCHEMA, ("trial_key", *_RESULT_REQUIRED), _RESULT_NULLABLE)
    if row["status"] not in STATUSES:
        raise ValueError(f"status {row['status']!r} is not one of {STATUSES}")
    if row["category_kind"] is not None and row["category_kind"] not in ("texture", "object"):
        raise ValueError(f"category_kind {row['category_kind']!r} is not 'texture' or 'object'")
    for name in METRIC_COLUMNS:
        x = row[name]
        if math.isnan(x):
            continue
        if not -_ROUNDING <= x <= 1.0 + _ROUNDING:
            raise ValueError(f"metric {name}={x} is outside [0, 1]; store fractions, not percentages")
        row[name] = min(max(x, 0.0), 1.0)  # float round-off at the ends
    _check_name("paper", row["paper"])
    _check_name("axis", row["axis"])
    _check_name("trial_key", row["trial_key"], _KEY_RE)
    return row


def epoch_row(**fields: Any) -> dict[str, Any]:
    """Build one validated row of :data:`EPOCH_SCHEMA`.

    Args:
        **fields: Column values. Required: ``trial_key, paper, axis, value,
            category, seed, epoch, loss``. ``extra_json`` may be a mapping of other
            logged values (stored as canonical JSON); it defaults to ``"{}"``.

    Returns:
        A dict with every schema column, in schema order.

    Raises:
        ValueError: On an unknown column, a missing required one or a wrong type.
    """
    fields = dict(fields)
    extra = fields.get("extra_json")
    if extra is None:
        fields["extra_json"] = "{}"
    elif isinstance(extra, Mapping):
        fields["extra_json"] = _canonical_json(dict(extra))
    row = _validate(fields, EPOCH_SCHEMA, _EPOCH_REQUIRED, _EPOCH_NULLABLE)
    _check_name("paper", row["paper"])
    _check_name("axis", row["axis"])
    _check_name("trial_key", row["trial_key"], _KEY_RE)
    return row


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
    from kdsearch.errors import warn

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
    dataset = ds.dataset([str(f) for f in files], format="parquet", schema=pa.schema(fields, metadata=_META))
    return dataset.to_table(columns=list(columns) if columns else None).to_pandas()


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
    wanted = set(statuses)
    unknown = wanted - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown status(es) {sorted(unknown)}; known: {STATUSES}")
    frame = _read(_files(results_dir, paper, axis, epochs=False), RESULT_SCHEMA, columns=("trial_key", "status"))
    return {str(k) for k, s in zip(frame["trial_key"], frame["status"]) if s in wanted}


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

"""The columns of a result row and of an epoch curve, and building a validated row of each.

Metrics are fractions in [0, 1], NaN when undefined (e.g. no anomalous pixel).
``au_pro`` is the MVTec AD definition, ``au_pro_rd4ad`` the RD4AD code's protocol.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from kdsearch.catalog import CATALOG
from kdsearch.results.keys import KEY_VERSION, canonical_json, make_trial_key
from kdsearch.trial_result import TrialResult
from kdsearch.vocabulary import STATUSES, TEST_METRICS

SCHEMA_VERSION = "1"
METRIC_COLUMNS = TEST_METRICS
TIMING_COLUMNS = TrialResult.timing_fields()
#: How a row's numbers were computed: resolved precision, memory format, device model, torch.
NUMERICS_COLUMNS = TrialResult.numerics_fields()
# A row that names no kind of its own gets one from the MVTec AD split, the one every
# paper's texture/object table uses.
_MVTEC = CATALOG["mvtec"]

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
        *[(name, pa.float64()) for name in METRIC_COLUMNS],
        *[(name, pa.float64()) for name in TIMING_COLUMNS],
        ("restarts", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("config_json", pa.string()),
        ("git_sha", pa.string()),
        ("device", pa.string()),
        *[(name, pa.string()) for name in NUMERICS_COLUMNS],
        ("created_at", _UTC_US),
        ("training_key", pa.string()),
        ("reused_from", pa.string()),
        ("key_version", pa.int64()),
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
                    "training_key", "reused_from", "key_version", *NUMERICS_COLUMNS}
_EPOCH_NULLABLE = {"val_metric", "val_metric_name", "seconds"}

_ROUNDING = 1e-9
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


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
            null, ``config_json`` ``"{}"``, ``created_at`` now (UTC), ``key_version``
            :data:`~kdsearch.results.keys.KEY_VERSION` (a file written before rows
            recorded it reads back null: version 1).

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
        fields["config_json"] = canonical_json(config_map)
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
    fields.setdefault("key_version", KEY_VERSION)
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
        fields["extra_json"] = canonical_json(dict(extra))
    row = _validate(fields, EPOCH_SCHEMA, _EPOCH_REQUIRED, _EPOCH_NULLABLE)
    _check_name("paper", row["paper"])
    _check_name("axis", row["axis"])
    _check_name("trial_key", row["trial_key"], _KEY_RE)
    return row

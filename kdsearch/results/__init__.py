"""The results tree: one Parquet file per finished trial, written atomically.

Layout under a results directory::

    <results>/<paper>/<axis>/<trial_key>.parquet            one row: RESULT_SCHEMA
    <results>/<paper>/<axis>/_epochs/<trial_key>.parquet    per-epoch curves: EPOCH_SCHEMA

One module per job: :mod:`~kdsearch.results.schema` (the columns, validated rows),
:mod:`~kdsearch.results.keys` (trial and training keys), :mod:`~kdsearch.results.store`
(atomic writes, reading the tree back). Every name is importable from here.

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
"""
from __future__ import annotations

from kdsearch.results.keys import KEY_VERSION, make_trial_key, make_training_key
from kdsearch.results.schema import (
    EPOCH_SCHEMA,
    METRIC_COLUMNS,
    RESULT_SCHEMA,
    SCHEMA_VERSION,
    STATUSES,
    NUMERICS_COLUMNS,
    TIMING_COLUMNS,
    epoch_row,
    mvtec_kind,
    result_row,
)
from kdsearch.results.store import (
    EPOCHS_DIRNAME,
    MODELS_DIRNAME,
    completed_trial_keys,
    completed_trial_precisions,
    kept_model_path,
    read_epoch_curves,
    read_results,
    recorded_trainings,
    repoint_row,
    write_epoch_curves,
    write_trial_result,
)

__all__ = [
    "EPOCHS_DIRNAME",
    "KEY_VERSION",
    "EPOCH_SCHEMA",
    "METRIC_COLUMNS",
    "MODELS_DIRNAME",
    "mvtec_kind",
    "RESULT_SCHEMA",
    "SCHEMA_VERSION",
    "STATUSES",
    "NUMERICS_COLUMNS",
    "TIMING_COLUMNS",
    "completed_trial_keys",
    "completed_trial_precisions",
    "recorded_trainings",
    "repoint_row",
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

"""The results tree: schema, trial keys, atomic writes, reading with pyarrow / pandas / duckdb."""
from __future__ import annotations

import ast
import datetime as dt
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from kdsearch import results as R

REPO = Path(__file__).resolve().parent.parent


def _row(**over):
    row = dict(
        paper="adps", axis="k", value="4", method="adps", dataset="synthetic",
        category="carpet", seed=0, profile="smoke", status="ok",
        image_auroc=0.9, pixel_auroc=0.8, au_pro=0.7, au_pro_rd4ad=0.71, pixel_ap=0.5,
        config_json={"patch_k": 4, "lr": 1e-4},
    )
    row.update(over)
    return row


def test_schema_columns_in_order():
    expected = [
        "trial_key", "paper", "axis", "value", "value_numeric", "method", "dataset", "category",
        "category_kind", "seed", "profile", "epochs", "image_auroc", "pixel_auroc", "au_pro",
        "au_pro_rd4ad", "pixel_ap", "train_seconds", "eval_seconds", "train_images_per_second",
        "peak_memory_mb", "restarts", "status", "error", "config_json", "git_sha", "device", "precision",
        "memory_format", "device_model", "torch_version", "created_at",
    ]
    assert R.RESULT_SCHEMA.names[: len(expected)] == expected
    assert R.RESULT_SCHEMA.field("seed").type == pa.int64()
    assert R.RESULT_SCHEMA.field("value_numeric").type == pa.float64()
    assert R.RESULT_SCHEMA.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert R.STATUSES == ("ok", "failed", "diverged", "pruned")
    for name in ("trial_key", "paper", "axis", "value", "category", "seed", "epoch", "loss",
                 "val_metric", "val_metric_name", "seconds", "extra_json"):
        assert name in R.EPOCH_SCHEMA.names


KEY_ARGS = dict(paper="adps", axis="k", value="4", dataset="mvtec", category="carpet", seed=0,
                profile="paper", config={"patch_k": 4, "lr": 0.0001, "nested": {"a": [1, 2]}})


def test_trial_key_is_stable_and_order_free():
    key = R.make_trial_key(**KEY_ARGS)
    assert len(key) == 16 and int(key, 16) >= 0
    reordered = dict(KEY_ARGS, config={"nested": {"a": [1, 2]}, "lr": 0.0001, "patch_k": 4})
    assert R.make_trial_key(**reordered) == key
    assert R.make_trial_key(**KEY_ARGS) == key


@pytest.mark.parametrize("field,other", [
    ("paper", "mrkd"), ("axis", "stage"), ("value", "8"), ("dataset", "btad"), ("category", "grid"),
    ("seed", 1), ("profile", "quick"), ("config", {"patch_k": 8, "lr": 0.0001, "nested": {"a": [1, 2]}}),
    ("config", {"patch_k": 4, "lr": 0.0001, "nested": {"a": [2, 1]}}),
])
def test_trial_key_changes_with_every_field(field, other):
    assert R.make_trial_key(**dict(KEY_ARGS, **{field: other})) != R.make_trial_key(**KEY_ARGS)


def test_trial_key_rejects_nan_config():
    with pytest.raises(ValueError):
        R.make_trial_key(**dict(KEY_ARGS, config={"lr": math.nan}))


def test_result_row_defaults():
    row = R.result_row(**_row(value="W/O PW", axis="structure", config_json=None))
    assert list(row) == R.RESULT_SCHEMA.names
    assert row["value_numeric"] is None
    assert row["category_kind"] == "texture"
    assert row["error"] is None and row["config_json"] == "{}"
    assert math.isnan(row["train_seconds"])
    assert row["created_at"].tzinfo is not None
    assert row["trial_key"] == R.make_trial_key("adps", "structure", "W/O PW", "synthetic", "carpet", 0, "smoke", {})
    numeric = R.result_row(**_row(value="0.25", category="bottle"))
    assert numeric["value_numeric"] == 0.25 and numeric["category_kind"] == "object"
    assert numeric["config_json"] == '{"lr":0.0001,"patch_k":4}'


@pytest.mark.parametrize("bad,message", [
    ({"colour": "red"}, "unknown column"),
    ({"status": None}, "missing required"),
    ({"status": "crashed"}, "status"),
    ({"image_auroc": 91.0}, "outside"),
    ({"seed": "0"}, "integer"),
    ({"seed": True}, "integer"),
    ({"value": 4}, "string"),
    ({"created_at": dt.datetime(2024, 1, 1)}, "timezone"),
    ({"axis": "../escape"}, "folder"),
    ({"category_kind": "liquid"}, "category_kind"),
])
def test_result_row_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        R.result_row(**_row(**bad))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = R.write_trial_result(_row(), tmp_path)
    key = R.result_row(**_row())["trial_key"]
    assert path == tmp_path / "adps" / "k" / f"{key}.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{key}.parquet"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        R.write_trial_result(_row(value="8"), tmp_path)
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{key}.parquet"]


def test_rewriting_the_same_key_keeps_one_row(tmp_path):
    R.write_trial_result(_row(image_auroc=0.5), tmp_path)
    R.write_trial_result(_row(image_auroc=0.75), tmp_path)
    frame = R.read_results(tmp_path)
    assert len(frame) == 1
    assert frame["image_auroc"].iloc[0] == 0.75


def _tree(root: Path) -> None:
    for value in ("1", "4"):
        for seed in (0, 1):
            R.write_trial_result(_row(value=value, seed=seed, image_auroc=0.5 + 0.1 * seed), root)
            key = R.result_row(**_row(value=value, seed=seed))["trial_key"]
            R.write_epoch_curves([
                dict(trial_key=key, paper="adps", axis="k", value=value, category="carpet", seed=seed,
                     epoch=e, loss=1.0 / (e + 1), val_metric=0.5, val_metric_name="val_image_auroc",
                     seconds=0.1, extra_json={"distill": 0.3}) for e in range(3)
            ], root)
    R.write_trial_result(_row(paper="mrkd", axis="alpha", value="0.2", method="mrkd", status="failed",
                              error="out of memory", image_auroc=None), root)


def test_tree_reads_as_one_dataset_with_pyarrow_pandas_and_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    _tree(tmp_path)
    dataset = ds.dataset(tmp_path, format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 5
    assert "loss" not in table.schema.names  # epoch files stay out
    frame = pd.read_parquet(tmp_path)
    assert len(frame) == 5 and set(frame["paper"]) == {"adps", "mrkd"}
    sql = (f"SELECT paper, count(*) AS n FROM read_parquet('{tmp_path.as_posix()}/*/*/*.parquet', "
           "union_by_name=true) GROUP BY paper ORDER BY paper")
    assert duckdb.sql(sql).fetchall() == [("adps", 4), ("mrkd", 1)]
    ours = R.read_results(tmp_path)
    assert len(ours) == 5 and list(ours.columns) == R.RESULT_SCHEMA.names
    assert sorted(ours.loc[ours["axis"] == "k", "image_auroc"].round(6)) == [0.5, 0.5, 0.6, 0.6]


def test_read_results_filters_and_empty(tmp_path):
    _tree(tmp_path)
    assert set(R.read_results(tmp_path, paper="mrkd")["axis"]) == {"alpha"}
    assert len(R.read_results(tmp_path, paper="adps", axis="k")) == 4
    assert len(R.read_results(tmp_path, axis="alpha")) == 1
    empty = R.read_results(tmp_path / "missing")
    assert empty.empty and list(empty.columns) == R.RESULT_SCHEMA.names


def test_read_results_fills_columns_an_old_file_lacks(tmp_path):
    R.write_trial_result(_row(), tmp_path)
    old = pa.table({"trial_key": ["0123456789abcdef"], "paper": ["adps"], "axis": ["k"], "value": ["8"],
                    "status": ["ok"], "image_auroc": [0.8]})
    pq.write_table(old, tmp_path / "adps" / "k" / "0123456789abcdef.parquet")
    frame = R.read_results(tmp_path).set_index("trial_key")
    assert frame.loc["0123456789abcdef", "image_auroc"] == 0.8
    assert math.isnan(frame.loc["0123456789abcdef", "pixel_auroc"])


def test_completed_trial_keys_by_status(tmp_path):
    _tree(tmp_path)
    adps = R.completed_trial_keys(tmp_path, "adps", "k")
    assert len(adps) == 4
    assert R.completed_trial_keys(tmp_path, "mrkd", "alpha", statuses=("ok",)) == set()
    assert len(R.completed_trial_keys(tmp_path, "mrkd", "alpha")) == 1
    assert R.completed_trial_keys(tmp_path, "dskd", "lambda") == set()
    with pytest.raises(ValueError):
        R.completed_trial_keys(tmp_path, "adps", "k", statuses=("done",))


def test_epoch_curves_are_separate(tmp_path):
    _tree(tmp_path)
    curves = R.read_epoch_curves(tmp_path)
    assert len(curves) == 12 and list(curves.columns) == R.EPOCH_SCHEMA.names
    assert curves["extra_json"].iloc[0] == '{"distill":0.3}'
    assert len(R.read_epoch_curves(tmp_path, paper="adps", axis="k")) == 12
    assert len(pd.read_parquet(tmp_path / "adps" / "k" / R.EPOCHS_DIRNAME)) == 12
    assert len(R.read_results(tmp_path)) == 5
    with pytest.raises(ValueError, match="mix"):
        R.write_epoch_curves([
            dict(trial_key="a" * 16, paper="adps", axis="k", value="1", category="c", seed=0, epoch=0, loss=1.0),
            dict(trial_key="b" * 16, paper="adps", axis="k", value="1", category="c", seed=0, epoch=1, loss=1.0),
        ], tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        R.write_epoch_curves([], tmp_path)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [*sorted((REPO / "kdsearch" / "results").glob("*.py")), REPO / "kdsearch" / "catalog.py",
                                  *sorted((REPO / "analysis").glob("*.py"))],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_results_and_analysis_stay_free_of_torch_and_ray(path):
    assert not _imports(path) & {"torch", "ray", "torchvision", "timm", "wandb", "optuna"}


def test_unreadable_and_foreign_parquet_files_are_skipped_with_one_warning(tmp_path, capsys):
    good = R.write_trial_result(_row(trial_key="k1"), tmp_path)
    folder = good.parent
    (folder / "broken.parquet").write_bytes(b"PAR1 cut short")
    pq.write_table(pa.table({"x": [1, 2]}), folder / "foreign.parquet")
    frame = R.read_results(tmp_path)
    assert list(frame["trial_key"]) == ["k1"]
    err = capsys.readouterr().err
    assert err.count("warning: skipping") == 2
    assert "broken.parquet: not a readable Parquet file" in err and "foreign.parquet: not a kdsearch results file" in err
    assert R.completed_trial_keys(tmp_path, "adps", "k") == {"k1"}


def test_resume_reruns_failed_trials_but_not_diverged_ones(tmp_path):
    from kdsearch.plan import plan

    job = plan("mrkd", "modules", profile="smoke", results_dir=tmp_path)
    first, second, third = job.trainings[:3]
    for spec, status in ((first, "failed"), (second, "diverged"), (third, "ok")):
        R.write_trial_result(_row(trial_key=spec.trial_key, paper="mrkd", axis="modules", value=spec.value,
                                  method="mrkd", status=status), tmp_path)
    pending = {t.trial_key for t in plan("mrkd", "modules", profile="smoke", results_dir=tmp_path).trainings}
    assert first.trial_key in pending and second.trial_key not in pending and third.trial_key not in pending


def test_sixteen_writers_finishing_at_once_lose_no_row(tmp_path):
    import threading

    barrier = threading.Barrier(16)
    errors = []

    def write(index: int) -> None:
        try:
            barrier.wait()
            R.write_trial_result(_row(trial_key=f"key{index:02d}", value=str(index)), tmp_path)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    frame = R.read_results(tmp_path)
    assert sorted(frame["trial_key"]) == [f"key{i:02d}" for i in range(16)]
    assert not list((tmp_path / "adps" / "k").glob(".*"))  # no temporary file left behind


def test_a_trial_result_is_the_rows_metric_and_timing_columns_and_survives_a_stored_row():
    from kdsearch.trial_result import TrialResult

    for name in (*R.METRIC_COLUMNS, *R.TIMING_COLUMNS, "epochs", "restarts", "status", "error", "device"):
        assert name in R.RESULT_SCHEMA.names
    assert R.TIMING_COLUMNS == TrialResult.timing_fields()
    for name in R.TIMING_COLUMNS:
        assert R.RESULT_SCHEMA.field(name).type == pa.float64()
    result = TrialResult(status="ok", metrics={"image_auroc": 0.75, "pixel_auroc": 0.5, "au_pro": 0.25,
                                               "au_pro_rd4ad": 0.125, "pixel_ap": 0.0625},
                         epochs=3, train_seconds=1.5, eval_seconds=0.5, train_images_per_second=12.0,
                         peak_memory_mb=64.0, restarts=1, device="cpu")
    row = R.result_row(**_row(**result.summary(), config_json={}))
    stored = pa.Table.from_pylist([row], schema=R.RESULT_SCHEMA).to_pandas().iloc[0].to_dict()
    assert TrialResult.from_summary(stored) == result
    failed = TrialResult(status="failed", error="out of memory")
    stored = pa.Table.from_pylist([R.result_row(**_row(**failed.summary(), config_json={}))],
                                  schema=R.RESULT_SCHEMA).to_pandas().iloc[0].to_dict()
    back = TrialResult.from_summary(stored)
    assert (back.status, back.error, back.metrics, back.epochs) == ("failed", "out of memory", {}, 0)
    assert all(math.isnan(getattr(back, name)) for name in TrialResult.timing_fields())

"""A results tree keyed by the version-1 rule is migrated once to the current keys.

The fixture is written with the version-1 rule as it was (``v1_keys``, checked against the
golden keys that rule recorded): a trial's identity left out ``preprocessing`` at its default
and held only the synthesis fields set away from the method's default synthesis, and the
keys' hashes held no version.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kdsearch import key_migration
from kdsearch.config import to_dict
from kdsearch.plan import TrialSpec, plan
from kdsearch.results import KEY_VERSION, read_epoch_curves, read_results, write_epoch_curves, write_trial_result
from kdsearch.results.keys import canonical_json
from kdsearch.results.store import kept_model_path
from kdsearch.runlock import CLAIMS_DIRNAME

#: The keys tests/golden/smoke_trials/ recorded for these axes under the version-1 rule.
V1_GOLDEN = {
    "mrkd/score_maps": ["a11825ec7d2b251e", "a02aeef2d02a9052", "cb0227c50b23e889", "0e8ffbab2071adcd",
                        "83bc0693ba438837", "faa3dd2f98b512d4"],
    "mrkd/alpha": ["1df54dad38a9e356", "9e2fc6ab3e9d242a", "e286e6890eb7242f", "61d1a18fe861fb99",
                   "73b48a3047894d38", "9d303b210c3c461b"],
    "adps/k": ["5831921071e6a5c3", "d40c3a7c7ec5bcf6", "fdbd7f85fe06d3bf", "1ba3baf8c19e3463", "7691ef91facc728e"],
    "dmdd/msn": ["80b588a1f84268ed", "3c7852ec604f1cf8", "4df3c3d9cebd850b", "2fc042e16613f553", "7527a09ed7cde4ff"],
}
CASES = [("mrkd", "score_maps"), ("mrkd", "alpha"), ("adps", "k"), ("dmdd", "msn")]


def _hash(payload: dict) -> str:
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:16]


def v1_identity(spec: TrialSpec) -> dict:
    trial = spec.trial
    identity = {k: v for k, v in trial.identity.items() if k != "synthesis"}
    if identity["preprocessing"] == "opencv_area":
        del identity["preprocessing"]
    default = trial.method_config.synthesis()
    if trial.synthesis is not None and default is not None:
        mine, theirs = to_dict(trial.synthesis), to_dict(default)
        changed = {k: v for k, v in mine.items() if v != theirs[k]}
        if changed:
            identity["synthesis"] = changed
    return identity


def v1_keys(spec: TrialSpec, axis) -> tuple[str, str, dict]:
    """The trial key, training key and stored config the version-1 rule gave ``spec``."""
    trial, identity = spec.trial, v1_identity(spec)
    inert = trial.inert_settings | trial.category_inert_settings
    dropped = set(trial.method_config.inference_fields()) | {name for name in inert if "." not in name}
    training = {k: v for k, v in identity.items() if k not in dropped}
    if "synthesis" in training:
        kept = {k: v for k, v in training["synthesis"].items() if f"synthesis.{k}" not in inert}
        training = {k: v for k, v in training.items() if k != "synthesis"} | ({"synthesis": kept} if kept else {})
    training = trial.method_config.training_spelling(training)
    trial_key = _hash({"paper": spec.paper, "axis": spec.axis, "value": axis.key_label(spec.value),
                       "dataset": spec.dataset, "category": spec.category, "seed": spec.seed,
                       "profile": spec.profile, "config": identity})
    training_key = _hash({"method": spec.method, "dataset": spec.dataset, "category": spec.category,
                          "seed": spec.seed, "training": training})
    return trial_key, training_key, identity


def write_v1_tree(results: Path, cases: list[tuple[str, str]]) -> dict[str, str]:
    """Rows of ``cases`` (paper, axis) as a version-1 sweep wrote them: each training's first row
    trained it (with an epoch curve, a kept model and a stale claim), the others name it in
    ``reused_from``. Returns each row's v1 trial key → its v2 spec's trial key."""
    expected = {}
    for paper, axis_name in cases:
        job = plan(paper, axis_name, profile="smoke", results_dir=results / "_planning")
        for lead in job.trainings:
            rows = [lead, *job.followers.get(lead.trial_key, [])]
            lead_key, training_key, _ = v1_keys(lead, job.axis)
            for spec in rows:
                key, training, config = v1_keys(spec, job.axis)
                assert training == training_key
                path = write_trial_result(
                    {"trial_key": key, "paper": spec.paper, "axis": spec.axis, "value": spec.value,
                     "method": spec.method, "dataset": spec.dataset, "category": spec.category, "seed": spec.seed,
                     "profile": spec.profile, "status": "ok", "image_auroc": 0.75, "config_json": config,
                     "training_key": training, "reused_from": None if spec is lead else lead_key}, results)
                # A version-1 file has no key_version column.
                table = pq.read_table(path)
                pq.write_table(table.drop_columns(["key_version"]), path)
                expected[key] = spec.trial_key
            write_epoch_curves([{"trial_key": lead_key, "paper": paper, "axis": axis_name, "value": lead.value,
                                 "category": lead.category, "seed": lead.seed, "epoch": 1, "loss": 0.5}], results)
            kept_model_path(results, training_key).parent.mkdir(parents=True, exist_ok=True)
            kept_model_path(results, training_key).write_bytes(b"weights")
            (results / CLAIMS_DIRNAME).mkdir(exist_ok=True)
            (results / CLAIMS_DIRNAME / f"{training_key}.wanted").touch()
    return expected


def test_v1_fixture_is_the_v1_rule():
    """The fixture's keys are the ones the version-1 rule recorded in the golden files."""
    for paper, axis in CASES:
        job = plan(paper, axis, profile="smoke", results_dir="/nonexistent-results")
        specs = [*job.trainings, *(s for f in job.followers.values() for s in f)]
        keys = {spec.trial_key: v1_keys(spec, job.axis)[0] for spec in specs}
        assert [keys[k] for k in job.planned_keys] == V1_GOLDEN[f"{paper}/{axis}"]
        assert set(keys).isdisjoint(V1_GOLDEN[f"{paper}/{axis}"])  # the current rule's keys are new


def _check_migrated(results: Path, expected: dict[str, str]) -> None:
    frame = read_results(results)
    assert sorted(frame["trial_key"]) == sorted(expected.values())
    assert (frame["key_version"] == KEY_VERSION).all()
    trainers = frame[frame["reused_from"].isna()].set_index("trial_key")
    for paper, axis in CASES:
        job = plan(paper, axis, profile="smoke", results_dir=results)
        # --resume skips every migrated row: nothing to train, nothing answered anew.
        assert not (job.trainings or job.followers or job.reused or job.rescored or job.repoint)
        assert job.done == job.planned == len(job.planned_keys)
    by_key = {spec: row for spec, row in zip(frame["trial_key"], frame.to_dict("records"))}
    for row in by_key.values():
        if isinstance(row["reused_from"], str):
            # reused_from still names a row that trained the same training
            assert trainers.loc[row["reused_from"], "training_key"] == row["training_key"]
    curves = read_epoch_curves(results)
    assert set(curves["trial_key"]) <= set(trainers.index) and len(curves) == len(trainers)
    for key in set(trainers["training_key"]):
        assert kept_model_path(results, key).read_bytes() == b"weights"
        assert (results / CLAIMS_DIRNAME / f"{key}.wanted").exists()
    assert not (results / key_migration.JOURNAL_NAME).exists()


def test_migration_gives_the_keys_planning_computes(tmp_path, capsys):
    results = tmp_path / "results"
    expected = write_v1_tree(results, CASES)
    assert set(expected) != set(expected.values())
    assert key_migration.migrate_keys(results) == len(expected)
    assert capsys.readouterr().out.strip() == f"migrated {len(expected)} rows of {results} to key version 2"
    _check_migrated(results, expected)
    assert key_migration.migrate_keys(results) == 0  # once


def test_a_migration_cut_short_leaves_a_readable_tree_the_next_read_finishes(tmp_path, monkeypatch):
    results = tmp_path / "results"
    expected = write_v1_tree(results, CASES)
    written = []
    real = key_migration._atomic_write

    def crash_midway(table, path):
        if len(written) == len(expected) // 2:
            raise KeyboardInterrupt
        written.append(path)
        return real(table, path)

    monkeypatch.setattr(key_migration, "_atomic_write", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        key_migration.migrate_keys(results)
    monkeypatch.setattr(key_migration, "_atomic_write", real)
    assert len(read_results(results)) > len(expected) // 2  # readable, every row still there
    # planning migrates what is left
    plan(*CASES[0], profile="smoke", results_dir=results)
    _check_migrated(results, expected)


def test_a_row_keeps_its_fingerprints_and_a_row_that_cannot_be_rebuilt_keeps_its_keys(tmp_path, capsys):
    job = plan("adps", "k", profile="smoke", values="4", results_dir=tmp_path / "_planning")
    spec = job.trainings[0]
    key, training, config = v1_keys(spec, job.axis)
    row = {"trial_key": key, "paper": "adps", "axis": "k", "value": "4", "method": "adps", "dataset": spec.dataset,
           "category": spec.category, "seed": 0, "profile": "smoke", "training_key": training,
           "config_json": json.dumps({**config, "texture_root": "textures:0123456789abcdef"})}
    _, _, identity = key_migration.keys_of_row(row)
    assert identity["texture_root"] == "textures:0123456789abcdef"
    assert identity["synthesis"] == spec.trial.identity["synthesis"]

    results = tmp_path / "results"
    path = write_trial_result({**row, "method": "nosuch", "status": "ok"}, results)
    pq.write_table(pq.read_table(path).drop_columns(["key_version"]), path)
    assert key_migration.migrate_keys(results) == 0
    assert "cannot migrate" in capsys.readouterr().err
    assert list(read_results(results)["trial_key"]) == [key]

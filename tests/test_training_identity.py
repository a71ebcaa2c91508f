"""A training is keyed by what it trains: scoring fields and inert settings stay out of it."""
from __future__ import annotations

import tempfile

import pytest
import torch

from kdsearch.loop import fit_and_evaluate
from kdsearch.plan import plan
from kdsearch.settings import single_trial

# Every inference-only field a method declares, with two values to train under.
SCORING_FIELDS = [
    ("rd4ad", "gaussian_sigma", 4.0, 1.0),
    ("dskd", "score_maps", [1, 2, 3], [2]),
    ("mrkd", "score_maps", [1, 2, 3], [1]),
    ("mrkd", "flm_at_test", True, False),
    ("dmdd", "score_top_k", 100, 10),
]


def _trained(method: str, settings: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The trained weights and test metrics of a 2-epoch smoke trial (a second epoch follows an
    evaluation, so a scoring field that moved the training's random stream would show)."""
    captured = {}

    def on_epoch(record, state):
        captured["model"] = {k: v.clone() for k, v in state()["model"].items()}

    trial = single_trial(method, "smoke", {"device": "cpu", "epochs": 2, "precision": "fp32", **settings})
    outcome = fit_and_evaluate(trial, on_epoch=on_epoch, progress=False)
    assert outcome.status == "ok", outcome.error
    return captured["model"], outcome.metrics


@pytest.mark.parametrize(("method", "name", "first", "second"), SCORING_FIELDS)
def test_a_scoring_field_leaves_the_training_bit_identical(method, name, first, second) -> None:
    extra = {"msn": False} if method == "dmdd" else {}
    a, b = single_trial(method, "smoke", {name: first, **extra}), single_trial(method, "smoke", {name: second, **extra})
    assert name in a.method_config.inference_fields()
    assert a.training_identity == b.training_identity and a.identity != b.identity
    weights_a, _ = _trained(method, {name: first, **extra})
    weights_b, _ = _trained(method, {name: second, **extra})
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), name


def test_dmdds_top_k_trains_the_msn_when_the_msn_is_on() -> None:
    a, b = single_trial("dmdd", "smoke", {"score_top_k": 100}), single_trial("dmdd", "smoke", {"score_top_k": 10})
    assert "score_top_k" not in a.method_config.inference_fields() and a.training_identity != b.training_identity


def test_mrkd_alpha_zero_and_ilm_off_are_one_training() -> None:
    alpha0, no_ilm = single_trial("mrkd", "smoke", {"alpha": 0.0}), single_trial("mrkd", "smoke", {"ilm": False})
    assert alpha0.training_identity == no_ilm.training_identity and alpha0.identity != no_ilm.identity
    assert single_trial("mrkd", "smoke", {"alpha": 0.2}).training_identity != alpha0.training_identity
    weights_a, metrics_a = _trained("mrkd", {"alpha": 0.0})
    weights_b, metrics_b = _trained("mrkd", {"ilm": False})
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_a == metrics_b


def test_a_variant_scored_on_a_shared_training_equals_its_own_training() -> None:
    """MRKD draws feature masks at test time: each evaluation runs on the trial's own stream."""
    sm1 = single_trial("mrkd", "smoke", {"device": "cpu", "precision": "fp32", "score_maps": [1]})
    sm3 = single_trial("mrkd", "smoke", {"device": "cpu", "precision": "fp32", "score_maps": [3]})
    shared = fit_and_evaluate(sm1, progress=False, scoring_variants={"sm3": sm3.method_config})
    alone = fit_and_evaluate(sm3, progress=False)
    assert shared.variant_metrics["sm3"] == alone.metrics
    assert shared.metrics == fit_and_evaluate(sm1, progress=False).metrics
    assert shared.metrics != shared.variant_metrics["sm3"]


@pytest.mark.parametrize(("paper", "axis", "rows", "trainings"), [("dskd", "maps", 60, 15), ("mrkd", "score_maps", 90, 15)])
def test_scoring_axes_train_once_per_category_at_the_paper_budget(paper, axis, rows, trainings) -> None:
    with tempfile.TemporaryDirectory() as folder:
        job = plan(paper, axis, profile="paper", results_dir=folder, extra={"pretrained": "none"})
    assert job.planned == rows and len(job.trainings) == trainings and job.pending_rows == rows
    assert len({t.training_key for t in job.trainings}) == trainings


def test_rows_of_different_axes_that_train_the_same_model_share_a_key(tmp_path) -> None:
    def keys(paper, axis, values):
        return {t.value: t.training_key for t in plan(paper, axis, profile="smoke", values=values, results_dir=tmp_path).trainings}

    stage, structure, fusion = keys("adps", "stage", "0,1"), keys("adps", "structure", "ADPS,W/O T"), keys("adps", "fusion", "WMB")
    assert stage["0"] == structure["ADPS"] == fusion["WMB"] and stage["1"] != stage["0"]
    assert structure["W/O T"] != structure["ADPS"]
    assert keys("mrkd", "modules", "FLM")["FLM"] == keys("mrkd", "alpha", "0")["0"]


def test_a_row_written_from_a_recorded_training_copies_it_and_names_it(tmp_path) -> None:
    from kdsearch import recording
    from kdsearch.trial_result import TrialResult

    stage = plan("adps", "stage", profile="smoke", values="0", results_dir=tmp_path)
    writer = recording.ResultWriter(tmp_path, quiet=True)
    trained = writer.finished(stage.trainings[0], TrialResult("ok", {"image_auroc": 0.625}, epochs=1),
                              [{"epoch": 1, "loss": 0.3}])
    structure = plan("adps", "structure", profile="smoke", values="ADPS,W/O S", results_dir=tmp_path)
    assert [s.value for s, _ in structure.reused] == ["ADPS"] and [t.value for t in structure.trainings] == ["W/O S"]
    row = writer.reused(*structure.reused[0])
    assert row["reused_from"] == trained["trial_key"] and row["training_key"] == trained["training_key"]
    assert row["image_auroc"] == 0.625 and row["status"] == "ok" and row["epochs"] == 1
    assert row["error"] is None and row["device"] is None  # nulls stay null, not the text "nan"
    assert row["trial_key"] != trained["trial_key"] and row["axis"] == "structure"

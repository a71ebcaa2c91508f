"""A row says how it was computed (precision, memory format, device model, torch), and rows
computed in another precision are never resumed, reused or resumed from a checkpoint."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from kdsearch.analysis.assemble import numerics_captions
from kdsearch import plan as plan_lib
from kdsearch import recording, results
from kdsearch.errors import UserError
from kdsearch.loop import fit_and_evaluate
from kdsearch.numerics import cpu_has_bf16_units, resolve_numerics, resolved_precision
from kdsearch.settings import single_trial
from kdsearch.trial_result import TrialResult


def _plan(tmp_path, **kw):
    return plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", results_dir=tmp_path / "res", **kw)


def test_a_trained_row_records_its_resolved_numerics(tmp_path):
    outcome = fit_and_evaluate(single_trial("rd4ad", "smoke", {"precision": "bf16", "memory_format": "contiguous",
                                                          "device": "cpu"}), progress=False)
    assert (outcome.precision, outcome.memory_format) == ("bf16", "contiguous")
    assert outcome.torch_version == torch.__version__ and outcome.device_model
    spec = _plan(tmp_path).trainings[0]
    row = results.result_row(**recording.result_fields(spec, outcome))
    assert {name: row[name] for name in results.NUMERICS_COLUMNS} == {
        "precision": "bf16", "memory_format": "contiguous", "device_model": outcome.device_model,
        "torch_version": torch.__version__}
    results.write_trial_result(row, tmp_path / "res")
    stored = results.read_results(tmp_path / "res").iloc[0]
    assert TrialResult.from_summary(stored.to_dict()).precision == "bf16"


def test_auto_resolves_by_the_device_and_the_cpu():
    assert resolved_precision("auto", "cuda") == "bf16"
    assert resolved_precision("auto", "cpu") == ("bf16" if cpu_has_bf16_units() else "fp32")
    assert resolved_precision("fp32", "cuda") == "fp32"
    assert resolve_numerics(torch.device("cpu"), "bf16").precision == "bf16"
    assert resolve_numerics(torch.device("cpu"), "fp32", "contiguous").memory_format == "contiguous"


@pytest.mark.parametrize("recorded, done", [("fp32", 1), ("bf16", 0), (None, 1)])
def test_resume_takes_only_rows_computed_in_this_runs_precision(tmp_path, recorded, done):
    spec = _plan(tmp_path, extra={"precision": "fp32"}).trainings[0]
    results.write_trial_result(recording.result_fields(spec, TrialResult("ok", precision=recorded)), tmp_path / "res")
    again = _plan(tmp_path, extra={"precision": "fp32"})
    assert again.done == done and len(again.trainings) == 1 - done
    notes = " ".join(again.warnings)
    if recorded == "bf16":
        assert "1 recorded row(s) of this axis were computed in bf16 and this run computes in fp32" in notes
        assert "--set precision=bf16" in notes
    if recorded is None:
        assert "written before rows named their precision" in notes


@pytest.mark.parametrize("trial_device", ["cuda", "cpu"])
@pytest.mark.parametrize("recorded", ["fp32", "bf16"])
def test_a_recorded_training_in_another_precision_is_not_reused(tmp_path, trial_device, recorded):
    # The same training, recorded by another axis of the method.
    spec = _plan(tmp_path, extra={"precision": "auto"}).trainings[0]
    row = recording.result_fields(spec, TrialResult("ok", {"image_auroc": 0.5}, precision=recorded))
    results.write_trial_result({**row, "axis": "elsewhere", "trial_key": "0123456789abcdef"}, tmp_path / "res")
    job = _plan(tmp_path, extra={"precision": "auto"}, trial_device=trial_device)
    same = recorded == resolved_precision("auto", trial_device)
    assert bool(job.reused) == same and len(job.trainings) == (0 if same else 1)


def test_a_checkpoint_goes_on_only_in_its_own_precision():
    from kdsearch.loop import _refuse_other_precision

    fp32 = resolve_numerics(torch.device("cpu"), "fp32")
    _refuse_other_precision({"precision": "fp32"}, fp32)
    _refuse_other_precision({}, fp32)  # a checkpoint written before checkpoints said
    with pytest.raises(UserError, match="trained in bf16 and this run computes in fp32.*--set precision=bf16"):
        _refuse_other_precision({"precision": "bf16"}, fp32)


def test_a_table_says_its_numerics_and_flags_mixed_precisions():
    frame = pd.DataFrame({"precision": ["bf16", "bf16", "fp32"], "memory_format": ["channels_last"] * 3,
                          "device_model": ["AMD EPYC"] * 3, "torch_version": ["2.13.0+cpu"] * 3})
    lines = numerics_captions(frame)
    assert "2 row(s) in bf16 · channels_last · AMD EPYC · 2.13.0+cpu" in lines[0]
    assert lines[1].startswith("WARNING: this table mixes precisions (bf16: 2, fp32: 1)")
    assert len(numerics_captions(frame.iloc[:2])) == 1

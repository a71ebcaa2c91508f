"""The single-process training loop and its CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from kdsearch.errors import run_cli
from kdsearch.checkpoint import load_checkpoint
from kdsearch.loop import fit_and_evaluate
from kdsearch.methods import list_methods
from kdsearch.train import main
from kdsearch.settings import single_trial

SMOKE = ["--method", "rd4ad", "--profile", "smoke"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsearch.train", *args], capture_output=True, text=True, timeout=300)


def test_cli_smoke_json_prints_metrics_on_last_line():
    proc = _run([*SMOKE, "--json"])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("image_auroc", "pixel_auroc", "au_pro", "au_pro_rd4ad", "pixel_ap"):
        assert math.isnan(result[key]) or 0.0 <= result[key] <= 1.0
    assert result["train_seconds"] > 0 and result["train_images_per_second"] > 0
    assert result["status"] == "ok" and result["category"] == "weave"


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--set", "patch_k=4"], "unknown setting 'patch_k'"),
    (["--set", "epochs=zero"], "epochs must be an integer"),
    (["--dataset", "mvtec"], "--data-root"),
    (["--category", "nonexistent"], "nonexistent"),
    (["--resume"], "--resume needs --out"),
    (["--pretrained", "/nonexistent/weights.pth"], "does not exist"),
])
def test_cli_user_errors_exit_2_without_traceback(args, message, capsys):
    # In-process: the same run_cli the entry point uses (one subprocess test below).
    assert run_cli(main, [*SMOKE, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_the_entry_point_turns_a_user_error_into_exit_2_without_traceback():
    proc = _run([*SMOKE, "--method", "nope"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: unknown method 'nope'") and "Traceback" not in proc.stderr


def test_same_seed_repeats_and_resume_continues(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMOKE, "--epochs", "2", "--out", str(out), "--json"]) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and len(state["epoch_records"]) == 2
    assert state["train_config"]["method"] == "rd4ad" and "backbone" in state["method_config"]

    # A second run killed after epoch 1 (simulated by a 1-epoch budget) and resumed to 2.
    partial = tmp_path / "partial"
    assert main([*SMOKE, "--epochs", "1", "--out", str(partial), "--json"]) == 0
    capsys.readouterr()
    assert main([*SMOKE, "--epochs", "2", "--out", str(partial), "--resume", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["epochs"] == 2
    for key in ("image_auroc", "pixel_auroc", "pixel_ap"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key


def test_resume_refuses_a_command_that_changes_what_the_checkpoint_trained(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMOKE, "--epochs", "2", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    stored = load_checkpoint(out / "checkpoint.pt")
    assert run_cli(main, [*SMOKE, "--epochs", "2", "--out", str(out), "--resume", "--category", "stone",
                          "--set", "lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume") and err.count("\n") == 1
    assert "category: checkpoint 'weave', command 'stone'" in err
    assert f"lr: checkpoint {stored['method_config']['lr']!r}, command 0.01" in err
    # Fewer epochs than the run was planned for would change its schedule: refused too.
    assert run_cli(main, [*SMOKE, "--epochs", "1", "--out", str(out), "--resume"]) == 2
    assert "epochs: checkpoint 2, command 1" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == stored["epoch"]  # nothing was trained or written


def test_resuming_a_finished_run_reports_its_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMOKE, "--epochs", "2", "--out", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*SMOKE, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert "· 2 epochs ·" in capsys.readouterr().out
    assert main([*SMOKE, "--epochs", "2", "--out", str(out), "--resume", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["epochs"] == 2 and again["pixel_auroc"] == first["pixel_auroc"]


def test_nan_loss_is_recorded_as_diverged():
    outcome = fit_and_evaluate(single_trial("rd4ad", "smoke", {"epochs": 2, "lr": 1e30}), progress=False)
    assert outcome.status == "diverged"
    assert "loss became" in outcome.error
    assert outcome.metrics == {}


def test_mean_image_distance_scores_rank_a_spot_above_a_normal_image():
    from kdsearch.evaluate import mean_image_distance_scores

    train = torch.full((4, 3, 32, 32), 100, dtype=torch.uint8)
    train[::2] = 110
    test = torch.full((2, 3, 32, 32), 105, dtype=torch.uint8)
    test[1, :, 10:14, 10:14] = 205
    scores = mean_image_distance_scores(train, test, sigma=1.0)
    assert scores.shape == (2,)
    assert scores[0].item() == 0.0
    assert 30.0 < scores[1].item() < 100.0


@pytest.mark.slow
@pytest.mark.parametrize("category", ["washer", "stone"])
def test_trained_rd4ad_beats_pixel_distance_to_mean_image(category: str) -> None:
    """The synthetic data is not trivially separable, yet RD4AD learns it, even with a random-init teacher."""
    from kdsearch.data import load_category
    from kdsearch.evaluate import mean_image_distance_scores
    from kdsearch.metrics import image_auroc

    trial = single_trial("rd4ad", "quick", {"category": category})
    assert trial.method_config.pretrained == "none"
    outcome = fit_and_evaluate(trial, progress=False)
    data = load_category("synthetic", category, trial.train.image_size)
    naive = image_auroc(mean_image_distance_scores(data.train.images, data.test.images), data.test.labels)
    assert outcome.metrics["image_auroc"] > naive + 0.05, (outcome.metrics["image_auroc"], naive)
    assert outcome.metrics["pixel_auroc"] > 0.75


@pytest.mark.parametrize("method", list_methods())
def test_cuda_numerics_path_trains_every_method_on_cpu(method: str) -> None:
    """bf16 autocast + channels-last, forced on the CPU, run the code path CUDA takes by default."""
    overrides = {"precision": "bf16", "memory_format": "channels_last", "device": "cpu"}
    outcome = fit_and_evaluate(single_trial(method, "smoke", overrides), progress=False)
    assert outcome.status == "ok", outcome.error
    assert math.isfinite(outcome.epoch_records[-1]["loss"])
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro"):
        assert 0.0 <= outcome.metrics[key] <= 1.0, key


def test_precision_changes_the_computation_and_auto_follows_the_cpu() -> None:
    from kdsearch.numerics import cpu_has_bf16_units

    losses = {}
    for precision, memory_format in (("auto", "auto"), ("fp32", "channels_last"), ("bf16", "channels_last")):
        trial = single_trial("rd4ad", "smoke", {"precision": precision, "device": "cpu", "memory_format": memory_format})
        losses[precision] = fit_and_evaluate(trial, progress=False).epoch_records[0]["loss"]
    assert losses["auto"] == losses["bf16" if cpu_has_bf16_units() else "fp32"]
    assert losses["bf16"] != losses["fp32"] and losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_numerics_resolve_per_device_and_reject_unknown_values() -> None:
    from kdsearch.numerics import cpu_has_bf16_units, resolve_numerics

    cuda = resolve_numerics(torch.device("cuda", 0))
    assert cuda.autocast_dtype == torch.bfloat16 and cuda.channels_last
    cpu = resolve_numerics(torch.device("cpu"))
    assert (cpu.autocast_dtype == torch.bfloat16) == cpu_has_bf16_units() and cpu.channels_last
    plain = resolve_numerics(torch.device("cpu"), "fp32", "contiguous")
    assert plain.autocast_dtype is None and not plain.channels_last
    forced = resolve_numerics(torch.device("cpu"), "bf16", "channels_last")
    with forced.autocast():
        out = torch.nn.functional.conv2d(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 1, 1))
    assert out.dtype == torch.bfloat16
    assert forced.format(torch.randn(1, 2, 4, 4)).is_contiguous(memory_format=torch.channels_last)
    assert resolve_numerics(torch.device("cuda", 0), "fp32", "contiguous").autocast_dtype is None
    with pytest.raises(ValueError, match="precision"):
        resolve_numerics(torch.device("cpu"), "fp16")


def test_cli_rejects_an_unknown_precision_with_exit_2(capsys):
    assert run_cli(main, [*SMOKE, "--set", "precision=fp16"]) == 2
    assert "precision must be one of auto, bf16, fp32" in capsys.readouterr().err


class _RunsACommand:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "ran"
    torch.save({"model": _RunsACommand(str(marker)), "epoch": 0}, out / "checkpoint.pt")
    assert run_cli(main, [*SMOKE, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a kdsearch checkpoint" in err
    assert not marker.exists()


def test_resume_refuses_a_file_that_is_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a zip file")
    assert run_cli(main, [*SMOKE, "--out", str(out), "--resume"]) == 2
    assert "not a kdsearch checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["mrkd", "dmdd"])
def test_prefetching_changes_no_number(method: str) -> None:
    results = []
    for depth in (0, 3):
        outcome = fit_and_evaluate(single_trial(method, "smoke", {"prefetch": depth, "device": "cpu", "epochs": 2}),
                                   progress=False)
        results.append(([r["loss"] for r in outcome.epoch_records], outcome.metrics))
    assert results[0] == results[1]


def test_a_resumed_trial_draws_what_an_unbroken_one_would(tmp_path, capsys):
    """MRKD's feature masks come from the global torch generator: resuming must restore it."""
    base = ["--method", "mrkd", "--profile", "smoke", "--json"]
    assert main([*base, "--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # A run whose budget ended after epoch 1 (as a killed one would have), resumed to 3.
    assert main([*base, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    torch.manual_seed(12345)  # whatever the process did meanwhile
    assert main([*base, "--epochs", "3", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro"):
        assert resumed[key] == full[key], key
    assert resumed["restarts"] == 1 and full["restarts"] == 0
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert not any(k.startswith("network.teacher.") for k in state["model"])  # the frozen teacher is rebuilt


@pytest.mark.parametrize("flags, native", [("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16", True),
                                           ("fpu avx2 avx512f", False)])
def test_bf16_units_are_read_from_the_cpu_flags(monkeypatch, flags, native) -> None:
    import io

    from kdsearch import numerics

    monkeypatch.setattr(numerics, "open", lambda path: io.StringIO(f"processor : 0\nflags : {flags}\n"),
                        raising=False)
    assert numerics.cpu_has_bf16_units() is native
    fast = numerics.resolve_numerics(torch.device("cpu"))
    assert (fast.autocast_dtype == torch.bfloat16) is native and fast.channels_last


def test_a_cpu_without_cpuinfo_computes_in_fp32(monkeypatch) -> None:
    from kdsearch import numerics

    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(numerics, "open", missing, raising=False)
    assert not numerics.cpu_has_bf16_units()
    assert numerics.resolve_numerics(torch.device("cpu")).autocast_dtype is None


def test_refusals_leave_nothing_behind(tmp_path, capsys):
    from kdsearch.errors import run_cli

    fresh = tmp_path / "new-run"
    assert run_cli(main, ["--method", "rd4ad", "--profile", "smoke", "--resume", "--out", str(fresh)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err and not fresh.exists()
    assert run_cli(main, ["--method", "rd4ad", "--profile", "smoke", "--data-root", str(tmp_path)]) == 2
    assert "the built-in synthetic dataset reads none" in capsys.readouterr().err
    assert run_cli(main, ["--method", "rd4ad", "--profile", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --profile: invalid choice") and "usage:" not in err

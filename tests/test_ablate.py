"""Planning, rows and the CLI of ``python -m kdsearch.ablate`` — no Ray involved."""
from __future__ import annotations

import dataclasses
import json
import shutil
import math

import pyarrow.parquet as pq
import pytest

from kdsearch import ablate, recording, results, tracking
from kdsearch import plan as plan_lib
from kdsearch.cost import job_cost
from kdsearch.errors import UserError
from kdsearch.trial_result import TrialResult


def _plan(tmp_path, **kw):
    kw.setdefault("profile", "smoke")
    return plan_lib.plan("rd4ad", kw.pop("axis", "backbone"), results_dir=tmp_path / "res", **kw)


def test_grid_plan_is_rows_times_categories_times_seeds(tmp_path):
    job = _plan(tmp_path, categories="weave,stone", seeds="2")
    assert job.is_grid and job.planned == 3 * 2 * 2 == len(job.trainings) and job.done == 0
    cells = {(t.value, t.category, t.seed) for t in job.trainings}
    assert len(cells) == 12
    assert len({t.trial_key for t in job.trainings}) == 12
    first = job.trainings[0]
    assert first.value == "resnet18" and first.method == "rd4ad" and first.category_kind == "texture"
    # The axis row beats the smoke profile's backbone; the profile sets the budget.
    backbones = {t.value: t.identity["backbone"] for t in job.trainings}
    assert backbones == {"resnet18": "resnet18", "resnet50": "resnet50", "wide_resnet50_2": "wide_resnet50_2"}
    assert first.identity["epochs"] == 1 and first.identity["image_size"] == 64
    assert first.trial.train.category == "weave" and first.trial.train.seed == 0


def test_trial_keys_are_stable_and_depend_on_config(tmp_path):
    a = _plan(tmp_path, values="resnet18")
    b = _plan(tmp_path, values="resnet18")
    c = _plan(tmp_path, values="resnet18", extra={"epochs": 2})
    assert a.trainings[0].trial_key == b.trainings[0].trial_key
    assert c.trainings[0].trial_key != a.trainings[0].trial_key
    assert c.trainings[0].identity["epochs"] == 2
    expected = results.make_trial_key("rd4ad", "backbone", "resnet18", "synthetic", "weave", 0, "smoke",
                                      a.trainings[0].identity)
    assert a.trainings[0].trial_key == expected


def test_done_keys_are_skipped(tmp_path):
    job = _plan(tmp_path)
    done = job.trainings[1]
    results.write_trial_result(recording.result_fields(done, TrialResult("ok", {"image_auroc": 0.5})), tmp_path / "res")
    again = _plan(tmp_path)
    assert again.planned == 3 and again.done == 1
    assert done.trial_key not in {t.trial_key for t in again.trainings}
    assert len(_plan(tmp_path, skip_done=False).trainings) == 3


def test_seeds_categories_and_values_parsing():
    assert plan_lib.parse_seeds("3", [0]) == [0, 1, 2]
    assert plan_lib.parse_seeds("4,7", [0]) == [4, 7]
    assert plan_lib.parse_seeds(None, [5]) == [5]
    for bad in ("0", "x", "1,1"):
        with pytest.raises(UserError):
            plan_lib.parse_seeds(bad, None)
    assert plan_lib.resolve_categories(None, "synthetic", None, ["weave"]) == ["weave"]
    assert plan_lib.resolve_categories("all", "synthetic", None, ["weave"]) == ["weave", "stone", "washer", "pill"]
    with pytest.raises(UserError, match="carpet"):
        plan_lib.resolve_categories("weave,carpet", "synthetic", None, None)


def test_plan_errors(tmp_path):
    with pytest.raises(UserError, match="no axis"):
        _plan(tmp_path, axis="nope")
    with pytest.raises(UserError, match="no row"):
        _plan(tmp_path, values="resnet9")
    with pytest.raises(UserError, match="search"):
        _plan(tmp_path, axis="lr", values="0.1")
    with pytest.raises(UserError):
        _plan(tmp_path, extra={"not_a_field": 1})


def test_search_plan_counts_and_history(tmp_path):
    job = _plan(tmp_path, axis="lr", n_trials=4, seeds="2")
    assert not job.is_grid and job.planned == 8 and [s.n_trials for s in job.studies] == [4, 4]
    spec = job.spec_for({"lr": 0.00123456789}, study=1)
    assert spec.value == "0.00123457" and spec.seed == 1 and spec.identity["lr"] == pytest.approx(0.00123456789)
    assert spec.value_numeric == pytest.approx(0.00123456789)
    # One finished trial and one ASHA-stopped trial (curves only) of study 0 count as done.
    root = tmp_path / "res"
    finished = job.spec_for({"lr": 0.001}, study=0)
    stopped = job.spec_for({"lr": 0.004}, study=0)
    results.write_trial_result(recording.result_fields(finished, TrialResult("ok")), root)
    for spec_, val in ((finished, 0.7), (stopped, 0.4)):
        rows = recording.epoch_fields(spec_, [{"epoch": 1, "loss": 1.0, "val_image_auroc": val, "seconds": 1.0}])
        results.write_epoch_curves(rows, root)
    again = _plan(tmp_path, axis="lr", n_trials=4, seeds="2")
    assert [s.n_trials for s in again.studies] == [2, 4] and again.done == 2
    assert sorted(again.studies[0].history) == [(0.001, 0.7), (0.004, 0.4)]


def test_rows_validate_against_the_schema(tmp_path):
    spec = _plan(tmp_path, values="resnet50").trainings[0]
    final = {"status": "ok", "image_auroc": 0.9, "pixel_auroc": 0.8, "au_pro": 0.7, "au_pro_rd4ad": 0.6,
             "pixel_ap": 0.5, "train_seconds": 2.0, "eval_seconds": 1.0, "train_images_per_second": 8.0,
             "peak_memory_mb": 100.0, "device": "cpu", "epochs": 1}
    result = TrialResult.from_summary(final)
    assert TrialResult.from_summary(result.summary()) == result  # a report carries it whole
    path = results.write_trial_result(recording.result_fields(spec, result, git_sha=None), tmp_path / "r")
    table = pq.read_table(path)
    assert table.schema.names == results.RESULT_SCHEMA.names
    row = table.to_pylist()[0]
    assert row["trial_key"] == spec.trial_key and row["status"] == "ok" and row["epochs"] == 1
    assert {k: row[k] for k in final} == final  # every field lands in its column
    assert json.loads(row["config_json"])["backbone"] == "resnet50"
    failed = results.result_row(**recording.result_fields(spec, TrialResult("failed", error="boom")))
    assert failed["status"] == "failed" and failed["error"] == "boom" and math.isnan(failed["image_auroc"])
    curves = recording.epoch_fields(spec, [{"epoch": 1, "loss": 0.5, "val_image_auroc": 0.6, "seconds": 3.0,
                                         "images": 16, "val_pixel_auroc": float("nan")}], node="127.0.0.2")
    written = pq.read_table(results.write_epoch_curves(curves, tmp_path / "r")).to_pylist()[0]
    assert written["val_metric"] == 0.6 and json.loads(written["extra_json"])["node"] == "127.0.0.2"
    assert "val_pixel_auroc" not in json.loads(written["extra_json"])  # NaN is not JSON


def test_summary_table_lists_every_row():
    rows = [{"value": "a", "category": "weave", "seed": 0, "image_auroc": 0.5, "pixel_auroc": 0.25,
             "au_pro": math.nan, "pixel_ap": 0.1, "train_seconds": 1.0, "eval_seconds": 0.5, "status": "ok"}]
    text = recording.summary_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["value", "category", "seed"] and len(lines) == 3
    assert "50.0%" in lines[2] and "25.0%" in lines[2] and "1.5" in lines[2] and "—" in lines[2]


def test_list_of_an_empty_search_space_folder_says_where_it_looked(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KDSEARCH_SEARCH_SPACES", str(tmp_path))
    assert ablate.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"no search spaces (<paper>.yaml) in {tmp_path}") and "KDSEARCH_SEARCH_SPACES" in out


def test_cli_list_and_dry_run(capsys, tmp_path, monkeypatch):
    from kdsearch import numerics

    # The fp32 reference CPU (AVX-512, no bf16 units), whatever this one is.
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "cache"))  # no figures saved by bench here
    assert ablate.main(["--list", "--costs"]) == 0
    out = capsys.readouterr().out
    assert "rd4ad" in out and "backbone" in out
    # Costs per axis: quick on this machine, paper on a GPU; the datasets of each paper's tables.
    assert "quick 20 trainings, 5,120 images, 0.06 h · paper 75 trainings, 5,443,500 images, 2.68 h" in out
    assert "datasets with the paper's tables: mvtec (every axis); mtd, btad (main results" in out
    assert ablate.main(["--paper", "rd4ad", "--axis", "backbone", "--profile", "smoke", "--dry-run",
                        "--seeds", "2", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "6 trial(s)" in out[0] and len(out) == 9
    # 6 trainings of 1 epoch on the smoke budget's 16 images; smoke has no measured throughput.
    assert out[7].startswith("cost of what remains: 6 training(s), 96 training images processed")
    assert "hours unknown until `python -m kdsearch.bench --methods rd4ad --profile smoke --save`" in out[7]
    assert not (tmp_path / "rd4ad").exists()  # a dry run writes nothing


def test_paper_profile_applies_what_a_paper_changes_on_another_dataset(tmp_path):
    mtd = plan_lib.plan("dskd", "main", profile="paper", dataset="mtd", results_dir=tmp_path).trainings
    assert [t.category for t in mtd] == ["mtd"] and mtd[0].trial.train.image_size == 128
    mvtec = plan_lib.plan("dskd", "main", profile="paper", results_dir=tmp_path).trainings
    assert len(mvtec) == 15 and {t.trial.train.image_size for t in mvtec} == {256}
    # 80 % of the published 952 defect-free tiles, every one trained on in a paper grid.
    assert job_cost(plan_lib.plan("dskd", "main", profile="paper", dataset="mtd", results_dir=tmp_path),
                           "cuda", "a GPU").images == 200 * 762


_HEAVY = ("torch", "pandas", "pyarrow", "ray", "numpy")


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["--list"], 0),
    (["--paper", "adsp", "--axis", "k"], 2),     # a misspelt paper
    (["--paper", "adps", "--axis", "kk"], 2),    # a misspelt axis
    (["--paper", "adps", "--axsi", "k"], 2),     # a misspelt option
    (["--paper", "dskd", "--axis", "dfe", "--values", "w/o DEF"], 2),  # a misspelt row
])
def test_help_list_and_argument_errors_import_neither_torch_nor_pandas_nor_ray(argv, code):
    """The fast answers come from the search-space files alone, in a fresh interpreter."""
    import subprocess
    import sys

    probe = ("import runpy, sys\n"
             f"sys.argv = ['kdsearch.ablate', *{argv!r}]\n"
             "try:\n    runpy.run_module('kdsearch.ablate', run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             f"print('HEAVY', [m for m in {_HEAVY!r} if m in sys.modules], code)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == f"HEAVY [] {code}", done.stdout[-500:] + done.stderr[-500:]
    if argv == ["--list"]:
        from kdsearch.spaces import list_papers, load_search_space

        lines = done.stdout.splitlines()
        for paper in list_papers():
            space = load_search_space(paper)
            assert f"{paper} (method {space.method})" in lines
            for axis in space.axes.values():
                assert any(line.split()[:2] == [axis.name, axis.table.split()[0] if axis.table else "-"]
                           for line in lines), (paper, axis.name)
        assert "add --costs" in done.stdout and " h · paper " not in done.stdout


def test_costs_goes_with_list(capsys):
    from kdsearch.errors import run_cli

    assert run_cli(ablate.main, ["--paper", "adps", "--axis", "k", "--costs"]) == 2
    assert "--costs goes with --list" in capsys.readouterr().err


def test_cli_user_errors_exit_2(capsys, tmp_path):
    from kdsearch.errors import run_cli

    assert run_cli(ablate.main, ["--paper", "rd4ad", "--axis", "nope", "--dry-run"]) == 2
    assert "no axis" in capsys.readouterr().err
    assert run_cli(ablate.main, ["--paper", "nope", "--axis", "x"]) == 2
    spec = _plan(tmp_path, values="resnet18").trainings[0]
    results.write_trial_result(recording.result_fields(spec, TrialResult("ok")), tmp_path / "res")
    argv = ["--paper", "rd4ad", "--axis", "backbone", "--profile", "smoke", "--results", str(tmp_path / "res")]
    assert run_cli(ablate.main, argv) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--set", "alpha=0.5"], "--set alpha: axis 'alpha' sweeps it in every row"),
    (["--set", "method.alpha=0.5"], "--set alpha: axis 'alpha' sweeps it"),
    (["--values", "1,1"], "--values lists 1 more than once"),
    (["--seeds=-1,0"], "--seeds must be >= 0, got -1"),
    (["--seeds=-1"], "--seeds must be >= 1, got -1"),
    (["--max-failures", "-1"], "--max-failures must be >= 0, got -1"),
    (["--checkpoint-every", "-5"], "--checkpoint-every must be >= 0"),
    # Nothing is silently ignored, and a typo is one line, not argparse's usage block.
    (["--n-trials", "3"], "--n-trials sets the trials of a search axis; 'alpha' is a grid"),
    (["--data-root", "."], "the built-in synthetic dataset reads none"),
    (["--profile", "nosuch"], "invalid choice: 'nosuch'"),
    (["--storage", "{file}"], "is a file; give a folder for the checkpoints"),
    (["--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
])
def test_bad_sweep_input_is_refused_before_anything_runs(capsys, tmp_path, extra, message):
    from kdsearch.errors import run_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    extra = [a.format(file=blocker) for a in extra]
    argv = ["--paper", "mrkd", "--axis", "alpha", "--profile", "smoke", "--results", str(tmp_path / "res"), *extra]
    assert run_cli(ablate.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("option, value, message", [
    ("workers_per_trial", 0, "--workers-per-trial must be >= 1, got 0"),
    ("gpus_per_trial", -0.5, "--gpus-per-trial must be >= 0, got -0.5"),
    ("cpus_per_trial", -1.0, "--cpus-per-trial must be >= 0, got -1.0"),
    ("checkpoint_every", -5.0, "--checkpoint-every must be >= 0, got -5.0"),
    ("max_failures", -1, "--max-failures must be >= 0, got -1"),
    ("max_concurrent", 0, "--max-concurrent must be >= 1, got 0"),
])
def test_each_run_option_out_of_its_bounds_is_refused_by_name(option, value, message):
    from kdsearch.run_bounds import check_run_bounds

    defaults = {"workers_per_trial": 1, "gpus_per_trial": None, "cpus_per_trial": None, "checkpoint_every": 120.0,
                "max_failures": 2, "max_concurrent": None}
    check_run_bounds(**defaults)
    check_run_bounds(**{**defaults, "gpus_per_trial": 0.0, "cpus_per_trial": 0.25, "checkpoint_every": 0.0,
                        "max_failures": 0, "max_concurrent": 1})  # the edges are allowed
    with pytest.raises(UserError) as caught:
        check_run_bounds(**{**defaults, option: value})
    assert str(caught.value) == message


def test_an_empty_search_space_folder_says_so(capsys, tmp_path, monkeypatch):
    from kdsearch.errors import run_cli
    from kdsearch.spaces import SEARCH_SPACES_ENV

    monkeypatch.setenv(SEARCH_SPACES_ENV, str(tmp_path))
    assert run_cli(ablate.main, ["--paper", "adps", "--axis", "k", "--dry-run"]) == 2
    assert f"the search-space folder {tmp_path} holds no <paper>.yaml file" in capsys.readouterr().err


def test_a_search_validates_every_epoch_whatever_the_profile_says(tmp_path):
    job = plan_lib.plan("adps", "lr", profile="quick", n_trials=1, results_dir=tmp_path)
    study = job.studies[0]
    assert study.trial(job.space, job.axis, 1e-4).trial.train.val_every == 1
    grid = plan_lib.plan("adps", "k", profile="quick", results_dir=tmp_path)
    assert {t.trial.train.val_every for t in grid.trainings} == {grid.trainings[0].epochs}  # the profile's: the last only
    with pytest.raises(UserError, match="validates every epoch; remove val_every=2"):
        plan_lib.plan("adps", "lr", profile="quick", extra={"val_every": 2}, results_dir=tmp_path)


def test_a_fixed_field_of_the_axis_is_refused_too(tmp_path):
    with pytest.raises(UserError, match="axis 'stage' fixes it"):
        plan_lib.plan("adps", "stage", profile="smoke", extra={"patch_k": 8}, results_dir=tmp_path)
    # a field the axis leaves alone is every trial's
    job = plan_lib.plan("adps", "stage", profile="smoke", extra={"lr": 0.01}, results_dir=tmp_path)
    assert {t.trial.method_config.lr for t in job.trainings} == {0.01}


def test_storage_that_is_a_file_is_refused_before_ray_starts(capsys, tmp_path):
    from kdsearch.errors import run_cli

    blocker = tmp_path / "ckpt"
    blocker.write_text("not a folder")
    argv = ["--paper", "rd4ad", "--axis", "backbone", "--profile", "smoke", "--values", "resnet18",
            "--results", str(tmp_path / "res"), "--storage", str(blocker)]
    assert run_cli(ablate.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --storage {blocker} is a file") and "Traceback" not in err
    assert run_cli(ablate.main, [*argv[:-1], str(blocker / "below")]) == 2
    assert "cannot write checkpoints to --storage" in capsys.readouterr().err


def test_tracking_mode_and_sweep_config(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.resolve_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("HOME", "/nonexistent")
    assert tracking.resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.resolve_mode("auto") == "disabled" and tracking.resolve_mode("offline") == "offline"
    grid = tracking.sweep_config("rd4ad-backbone", {"kind": "grid", "values": ["a", "b"]}, "val_image_auroc")
    assert grid["method"] == "grid" and grid["parameters"] == {"axis_value": {"values": ["a", "b"]}}
    search = tracking.sweep_config("x", {"kind": "search", "param": "lr", "distribution": "loguniform",
                                         "low": 1e-4, "high": 1e-2, "choices": []}, "val_image_auroc")
    assert search["parameters"]["lr"] == {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}
    assert search["metric"] == {"name": "val_image_auroc", "goal": "maximize"}


def _fake_run(statuses: list[str]):
    """A run_job stand-in: records the job's first trials with the given statuses, then stops."""
    def run_job(job, options, writer, progress=None):
        spec = job.studies[0].trial(job.space, job.axis, 1e-3) if not job.is_grid else None
        for index, status in enumerate(statuses):
            trial = spec if spec is not None else job.trainings[index]
            trial = dataclasses.replace(trial, value=f"{trial.value}-{index}", trial_key=f"{trial.trial_key}{index}")
            records = [{"epoch": 1, "loss": 0.5, "val_image_auroc": 0.6}]
            if status == "pruned":
                writer.pruned(trial, records)
            else:
                metrics = {"image_auroc": 0.7, "pixel_auroc": 0.8, "pixel_ap": 0.1, "au_pro": 0.5, "au_pro_rd4ad": 0.5}
                writer.finished(trial, TrialResult(status, metrics, error=None if status == "ok" else "boom"), records)
    return run_job


def _fake_sweep(monkeypatch, tmp_path, statuses: list[str], n_trials: int) -> int:
    from kdsearch import distributed

    monkeypatch.setattr(distributed, "run_job", _fake_run(statuses))
    return ablate.main(["--paper", "rd4ad", "--axis", "lr", "--profile", "smoke", "--n-trials", str(n_trials),
                        "--results", str(tmp_path), "--wandb", "disabled", "--quiet"])


def test_a_search_that_prunes_trials_exits_0_and_counts_them_once(monkeypatch, tmp_path, capsys):
    assert _fake_sweep(monkeypatch, tmp_path, ["ok", "pruned", "pruned"], 3) == 0
    captured = capsys.readouterr()
    assert "3 trial(s): 1 ok, 0 failed or diverged, 2 stopped early" in captured.out
    assert "did not run" not in captured.err


def test_an_interrupted_search_still_says_how_many_did_not_run(monkeypatch, tmp_path, capsys):
    assert _fake_sweep(monkeypatch, tmp_path, ["pruned", "ok"], 5) == 130
    assert "interrupted: 3 trial(s) did not run" in capsys.readouterr().err


def test_a_failed_trial_still_makes_the_sweep_exit_1(monkeypatch, tmp_path, capsys):
    assert _fake_sweep(monkeypatch, tmp_path, ["ok", "failed"], 2) == 1
    assert "2 trial(s): 1 ok, 1 failed or diverged" in capsys.readouterr().out


def test_trial_key_hashes_the_weights_file_not_its_path(tmp_path):
    import torch

    from kdsearch.methods import create_method

    state = create_method("rd4ad", 64, {"backbone": "resnet18"}).network.teacher.encoder.state_dict()
    first, moved = tmp_path / "a" / "w.pth", tmp_path / "b" / "other-name.pth"
    first.parent.mkdir()
    moved.parent.mkdir()
    torch.save(state, first)
    shutil.copy(first, moved)  # the same file, elsewhere under another name

    def key(path):
        job = plan_lib.plan("rd4ad", "lr", profile="smoke", results_dir=tmp_path, extra={"pretrained": str(path)})
        return job.studies[0].trial(job.space, job.axis, 1e-3)

    assert key(first).trial_key == key(moved).trial_key
    assert key(first).identity["pretrained"].startswith("weights:")
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, first)
    assert key(first).trial_key != key(moved).trial_key


def test_an_address_where_no_cluster_answers_fails_fast(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.5", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    # The message is the reachability check's, made before Ray is asked: Ray itself would
    # retry for minutes. (No wall-clock assert: a loaded machine would make it flaky.)
    proc = subprocess.run([sys.executable, "-m", "kdsearch.ablate", "--paper", "rd4ad", "--axis", "lr", "--profile",
                           "smoke", "--n-trials", "1", "--results", str(tmp_path), "--wandb", "disabled",
                           "--address", f"127.0.0.5:{port}"], capture_output=True, text=True, timeout=120)
    # The progress line comes first; then one error line, the last, and nothing else.
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("kdsearch: trainings")]
    assert proc.returncode == 2 and errors[0].startswith(f"error: no Ray cluster answers at 127.0.0.5:{port}")
    assert len(errors) == 1
    assert "ray start --head" in proc.stderr and "Traceback" not in proc.stderr


def test_a_finished_sweep_names_the_table_the_report_the_wandb_runs_and_what_would_test_the_paper(tmp_path,
                                                                                                  monkeypatch):
    from kdsearch.next_steps import next_steps

    monkeypatch.delenv("WANDB_DIR", raising=False)
    job = _plan(tmp_path, values="resnet18")
    root = tmp_path / "res"
    for run in ("offline-run-1", "offline-run-2"):
        (root / "_wandb" / "wandb" / run).mkdir(parents=True)
    text = "\n".join(next_steps(job, root, [{"dataset": "synthetic", "seed": 0}]))
    assert f"python analysis/tables.py --paper rd4ad --axis backbone --results {root}" in text
    assert "--report report.html" in text
    assert f"wandb sync {root / '_wandb' / 'wandb'}/offline-run-*" in text and "2 offline W&B run(s)" in text
    assert "`smoke` numbers on synthetic data" in text and "--profile paper --data-root" in text
    paper_job = dataclasses.replace(job, profile="paper")
    one_seed = "\n".join(next_steps(paper_job, root, [{"dataset": "mvtec", "seed": 0}]))
    assert "One seed: the claims are indicative only; --seeds 3" in one_seed and "wandb sync" in one_seed



def test_a_sweep_interrupted_before_any_row_suggests_no_table_and_qualifies_no_numbers(tmp_path, monkeypatch):
    """Ctrl-C before the first row printed "These are `smoke` numbers on no data" and the
    tables command for an axis with no rows."""
    from kdsearch.next_steps import next_steps

    monkeypatch.delenv("WANDB_DIR", raising=False)
    job = _plan(tmp_path, values="resnet18")
    (tmp_path / "res" / "_wandb" / "wandb" / "offline-run-1").mkdir(parents=True)
    assert next_steps(job, tmp_path / "res", []) == []

# --------------------------------------------------------------- refused before Ray starts


def _tiny_mvtec(root, category: str = "bottle"):
    """A tiny MVTec AD category: 6 training images, 2 good and 2 cracked test images with masks."""
    import cv2
    import numpy as np

    def write(path, array):
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), array)

    image, mask = np.full((32, 32, 3), 120, np.uint8), np.zeros((32, 32), np.uint8)
    mask[:16, :16] = 255
    folder = root / category
    for i in range(6):
        write(folder / "train" / "good" / f"{i:03d}.png", image + i)
    for i in range(2):
        write(folder / "test" / "good" / f"{i:03d}.png", image)
        write(folder / "test" / "crack" / f"{i:03d}.png", image)
        write(folder / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if anything starts Ray."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for a sweep that should have been refused")

    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert not ray.is_initialized()


def _refused(capsys, argv: list[str]) -> str:
    """Run ablate; it must exit 2 with one ``error:`` line, its last, and no traceback. Returns that line."""
    from kdsearch.errors import run_cli

    assert run_cli(ablate.main, [*argv, "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("argv", [
    ["--paper", "adps", "--axis", "k", "--profile", "smoke", "--dataset", "mvtec"],
    ["--paper", "adps", "--axis", "stage", "--profile", "paper"],  # the README's next step, without --data-root
])
def test_a_real_dataset_without_its_data_root_is_refused_before_ray_starts(no_ray, capsys, tmp_path, argv):
    line = _refused(capsys, [*argv, "--results", str(tmp_path / "res")])
    assert line.startswith("error: dataset 'mvtec' (MVTec AD) needs its data root: pass --data-root")
    assert not (tmp_path / "res").exists()


def test_an_empty_data_root_is_refused_and_nothing_is_created(no_ray, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = _refused(capsys, ["--paper", "adps", "--axis", "k", "--profile", "smoke", "--dataset", "mvtec",
                             "--data-root", str(tmp_path / "empty"), "--results", str(tmp_path / "res")])
    assert line.startswith(f"error: data root {tmp_path / 'empty'} holds no MVTec AD category: expected the MVTec AD "
                           f"layout <root>/<category>/train/good/*.png")
    assert not (tmp_path / "res").exists()


def test_weights_that_cannot_be_had_are_refused_before_ray_starts(no_ray, capsys, tmp_path, monkeypatch):
    from kdsearch.nn import backbones

    root = _tiny_mvtec(tmp_path / "mvtec")
    sweep = ["--paper", "dskd", "--axis", "maps", "--dataset", "mvtec", "--data-root", str(root), "--categories", "bottle",
             "--results", str(tmp_path / "res")]
    missing = tmp_path / "missing.pth"
    line = _refused(capsys, [*sweep, "--profile", "smoke", "--set", f"pretrained={missing}"])
    assert line.startswith(f"error: weights file {missing} does not exist; pass --pretrained PATH (a sweep: "
                           f"--set pretrained=PATH)")
    # The paper profile's ImageNet weights, neither cached nor reachable (offline): refused once, at once.
    probes = []
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout_s=3.0: probes.append(1) and False)
    monkeypatch.setattr(backbones, "_cached_weight_file", lambda hub_id: None)
    line = _refused(capsys, [*sweep, "--profile", "paper"])
    assert line.startswith("error: ImageNet weights for ") and "are not cached and the model hub cannot be reached" in line
    assert "--set pretrained=PATH" in line and len(probes) == 1
    assert not (tmp_path / "res").exists()


def test_an_unreadable_image_is_refused_before_ray_starts(no_ray, capsys, tmp_path):
    root = _tiny_mvtec(tmp_path / "mvtec")
    bad = root / "bottle" / "train" / "good" / "003.png"
    bad.write_bytes(b"not a png")
    line = _refused(capsys, ["--paper", "adps", "--axis", "k", "--profile", "smoke", "--dataset", "mvtec",
                             "--data-root", str(root), "--categories", "bottle", "--results", str(tmp_path / "res")])
    assert line == f"error: cannot decode {bad}: not an image OpenCV can read; replace or remove the file"
    assert not (tmp_path / "res").exists()


def test_a_layout_problem_in_any_category_is_refused_before_any_image_is_decoded(no_ray, capsys, tmp_path,
                                                                                 monkeypatch):
    from kdsearch.data import load

    root = _tiny_mvtec(_tiny_mvtec(tmp_path / "mvtec", "bottle"), "zipper")
    mask = root / "zipper" / "ground_truth" / "crack" / "001_mask.png"
    mask.unlink()
    decoded = []
    monkeypatch.setattr(load, "tensorize", lambda *a, **k: decoded.append(a) or {})
    line = _refused(capsys, ["--paper", "adps", "--axis", "k", "--profile", "smoke", "--dataset", "mvtec",
                             "--data-root", str(root), "--results", str(tmp_path / "res")])
    assert "has no ground-truth mask" in line and str(mask) in line
    assert decoded == [] and not (tmp_path / "res").exists()


def test_a_refusal_met_after_ray_is_joined_leaves_no_empty_results_folder(capsys, tmp_path, monkeypatch):
    """The driver's own refusals (a GPU cluster without --gpus-per-trial, a cluster that cannot
    be joined) come after the axis's folder is made: it used to stay, empty."""
    from kdsearch import distributed

    def refuse(*args, **kwargs):
        raise UserError("the Ray cluster can add nodes with GPUs but has none up yet; pass --gpus-per-trial 1")

    monkeypatch.setattr(distributed, "run_job", refuse)
    root = tmp_path / "res"
    error = _refused(capsys, ["--paper", "rd4ad", "--axis", "backbone", "--profile", "smoke", "--values", "resnet18",
                              "--results", str(root)])
    assert "--gpus-per-trial" in error and not root.exists()
    kept = tmp_path / "kept"  # a results folder that held something stays, with what it held
    (kept / "rd4ad").mkdir(parents=True)
    (kept / "notes.txt").write_text("mine")
    _refused(capsys, ["--paper", "rd4ad", "--axis", "backbone", "--profile", "smoke", "--values", "resnet18",
                      "--results", str(kept)])
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt", "rd4ad"] and not (kept / "rd4ad" / "backbone").exists()


def test_keep_models_into_a_folder_that_cannot_be_written_is_refused(capsys, tmp_path):
    from kdsearch.errors import run_cli

    root = tmp_path / "res"
    root.mkdir()
    (root / results.MODELS_DIRNAME).write_text("a file where the folder should be")
    argv = ["--paper", "rd4ad", "--axis", "backbone", "--profile", "smoke", "--values", "resnet18",
            "--results", str(root), "--keep-models"]
    assert run_cli(ablate.main, argv) == 2
    err = capsys.readouterr().err
    assert "cannot write kept models to" in err and "--keep-models" in err and "Traceback" not in err
    # Refused before the axis's results folder is made: nothing is left behind.
    assert sorted(p.name for p in root.iterdir()) == [results.MODELS_DIRNAME]

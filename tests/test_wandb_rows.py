"""W&B offline: one run per result row (rows that share a training too), every loss part a
method logs, and the sweep's definition kept with the runs. No Ray runs here: the driver's
callback is fed the reports a trial makes."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("wandb")

from kdsearch import distributed, recording  # noqa: E402
from kdsearch import plan as plan_lib  # noqa: E402
from kdsearch.distributed.driver import _Recorder  # noqa: E402
from kdsearch.tracking import Tracker, sweep_config, sweep_definition  # noqa: E402
from kdsearch.vocabulary import VAL_METRIC  # noqa: E402


class _Trial:
    def __init__(self, trial_id: str, index: int) -> None:
        self.trial_id, self.config, self.last_result, self.error_file = trial_id, {"trial": index}, None, None


def _tracker(job, root: Path) -> Tracker:
    return Tracker("offline", "kdsearch", f"{job.space.paper}/{job.axis.name}", root / "_wandb",
                   sweep=sweep_config(job.name, job.search_description(), VAL_METRIC),
                   definition=sweep_definition(job, VAL_METRIC))


def _feed(job, root: Path, reports: list[dict]) -> recording.ResultWriter:
    """What the driver does with one training's reports: its epochs, then its final one."""
    writer = recording.ResultWriter(root, quiet=True)
    tracker = _tracker(job, root)
    recorder = _Recorder(job, None, writer, tracker, distributed.RunOptions(results_dir=str(root), wandb="offline"))
    trial = _Trial("t0", 0)
    recorder.on_trial_start(0, [], trial)
    for report in reports[:-1]:
        trial.last_result = report
        recorder.on_trial_result(0, [], trial, report)
    trial.last_result = reports[-1]
    recorder.on_trial_complete(0, [], trial)
    tracker.close()
    return writer


def _runs(root: Path) -> list[Path]:
    """The offline runs, once W&B's service has written them out: ``finish()`` returns before
    its separate process has flushed every record to the run file."""
    runs = sorted((root / "_wandb" / "wandb").glob("offline-run-*"))
    _wait_until_written(runs)
    return runs


def _wait_until_written(runs: list[Path], quiet_s: float = 0.5, limit_s: float = 20.0) -> None:
    """Wait until no run file has grown for ``quiet_s`` (at most ``limit_s``)."""
    deadline, last, since = time.monotonic() + limit_s, None, time.monotonic()
    while time.monotonic() < deadline:
        sizes = [f.stat().st_size for run in runs for f in sorted(run.glob("*.wandb"))]
        if sizes != last:
            last, since = sizes, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)


def _logged(run: Path, key: str) -> bool:
    """Whether the run's log holds ``key`` as a whole protobuf string (not a longer name containing it)."""
    blob = b"".join(p.read_bytes() for p in run.glob("*.wandb"))
    return bytes([len(key)]) + key.encode() in blob


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_every_row_has_a_run_also_rows_that_share_or_reuse_a_training(tmp_path, offline):
    root = tmp_path / "res"
    job = plan_lib.plan("dskd", "maps", profile="smoke", results_dir=root)
    assert len(job.trainings) == 1 and job.pending_rows == 4  # M1, M2, M3, M1-3: one training
    epoch = {"epoch": 1, "seconds": 1.0, "images": 16, "loss": 0.5, "loss_e": 0.2, "loss_d": 0.3,
             "val_image_auroc": 0.6}
    metrics = {"image_auroc": 0.7, "pixel_auroc": 0.8, "au_pro": 0.5, "pixel_ap": 0.2}
    variants = {f.trial_key: {"image_auroc": 0.6 + 0.01 * i} for i, f in enumerate(job.rows_of(job.trainings[0])[1:])}
    reports = [{**epoch, "epoch_record": epoch, "final": False, "node": "n", "restarts": 0, "time_this_iter_s": 1.0},
               {"final": True, "status": "ok", "epochs": 1, "epoch": 2, **metrics, "train_seconds": 1.0,
                "eval_seconds": 0.5, "epoch_records": [epoch], "variant_metrics": variants, VAL_METRIC: 0.6,
                "node": "n", "restarts": 0}]
    writer = _feed(job, root, reports)
    runs = _runs(root)
    assert len(writer.rows) == 4 == len(runs)
    for key in ("loss_e", "loss_d", "val_image_auroc", "reused_from"):
        assert sum(_logged(run, key) for run in runs) >= (4 if key != "reused_from" else 3), key
    assert not any(_logged(run, "time_this_iter_s") for run in runs)  # Ray's own fields are not the method's
    # The sweep, saved next to the runs: the W&B sweep config and the axis's rows with their settings.
    saved = json.loads((root / "_wandb" / "wandb" / "sweep-dskd-maps.json").read_text())
    assert saved["wandb_sweep"]["parameters"]["axis_value"]["values"] == ["M1", "M2", "M3", "M1-3"]
    assert saved["rows"]["M1-3"] == {"score_maps": [1, 2, 3]} and saved["table"] == "Table 9"
    # Each run's "sweep" config group holds the same definition (as JSON in the run's config).
    assert all(_logged(run, "sweep") and b'"wandb_sweep"' in b"".join(p.read_bytes() for p in run.glob("*.wandb"))
               for run in runs)

    # DSKD's main row is that same training, recorded: its run is written without Ray.
    main = plan_lib.plan("dskd", "main", profile="smoke", results_dir=root)
    assert len(main.reused) == 1 and main.pending_trainings == 0
    distributed.run_job(main, distributed.RunOptions(results_dir=str(root), wandb="offline"),
                        recording.ResultWriter(root, quiet=True))
    assert len(_runs(root)) == 5


@pytest.mark.slow
def test_every_loss_part_a_method_returns_reaches_wandb(tmp_path, offline, worker_reports):
    """ADPS logs distill and focal next to loss: a real smoke epoch, through the worker's reports."""
    import torch

    from kdsearch.distributed import worker

    root = tmp_path / "res"
    job = plan_lib.plan("adps", "k", profile="smoke", values="4", results_dir=root)
    threads = torch.get_num_threads()
    try:
        worker.train_func({"spec": job.trainings[0], "options": distributed.RunOptions(results_dir=str(root),
                                                                                   wandb="disabled"),
                           "in_train": False})
    finally:
        torch.set_num_threads(threads)
    parts = {k for k, v in worker_reports[0]["epoch_record"].items() if isinstance(v, (int, float)) and math.isfinite(v)}
    assert {"loss", "distill", "focal"} <= parts
    _feed(job, root, worker_reports)
    [run] = _runs(root)
    assert all(_logged(run, key) for key in parts), [k for k in parts if not _logged(run, k)]



def test_a_trial_trained_again_from_scratch_logs_its_retrained_epochs(tmp_path, offline, capfd):
    """An unreadable checkpoint makes a trial train again from epoch 1: W&B printed "Steps must
    be monotonically increasing" and dropped the retrained epochs (the Parquet records were right)."""
    root = tmp_path / "res"
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", results_dir=root)

    def epoch(n: int, loss: float) -> dict:
        record = {"epoch": n, "seconds": 1.0, "images": 16, "loss": loss}
        return {**record, "epoch_record": record, "final": False, "node": "n", "restarts": 0}

    metrics = {"image_auroc": 0.7, "pixel_auroc": 0.8, "au_pro": 0.5, "pixel_ap": 0.2}
    final = {"final": True, "status": "ok", "epochs": 2, "epoch": 3, **metrics, "train_seconds": 1.0,
             "eval_seconds": 0.5, "node": "n", "restarts": 1}
    _feed(job, root, [epoch(1, 0.9), epoch(2, 0.8), epoch(1, 0.7), epoch(2, 0.6), final])
    err = capfd.readouterr().err
    assert "monotonically increasing" not in err and "less than the current step" not in err
    assert len(_runs(root)) == 1


def test_retrained_epochs_reach_wandb_at_steps_that_only_go_forward():
    """What the run is given: every epoch, retrained ones too, each at a later W&B step than the
    one before (W&B drops a step that goes back), its epoch a logged field."""
    logged: list[tuple[dict, int | None]] = []

    class Run:
        def log(self, values, step=None):
            logged.append((dict(values), step))

    tracker = Tracker("disabled", "kdsearch", "rd4ad/backbone", "unused")
    tracker.runs["k"] = Run()
    for epoch in (1, 2, 3, 2, 3, 1, 2, 3, 4):  # a restart from epoch 1's checkpoint, then from scratch
        tracker.log("k", {"loss": 0.1 * epoch}, step=epoch)
    steps = [step for _, step in logged]
    assert [values["epoch"] for values, _ in logged] == [1, 2, 3, 2, 3, 1, 2, 3, 4]
    assert all(a < b for a, b in zip(steps, steps[1:])) and steps[:3] == [1, 2, 3]  # an unbroken run: step = epoch

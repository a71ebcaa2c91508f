"""Ablations on a real (local) Ray: rows, readers, faults, resume, W&B offline, clusters.

One Ray session serves the in-process tests of this module; the kill-and-resume test
runs the CLI in subprocesses with their own Ray. Everything Ray executes lives in the
installed package (kdsearch.distributed). Slow tests (a two-node cluster on loopback
addresses, a DDP trial under TorchTrainer) are marked ``slow``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import torch  # noqa: E402

from kdsearch import distributed, recording, results  # noqa: E402
from kdsearch import plan as plan_lib  # noqa: E402
from kdsearch.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE_KEY = "kdsearchfakekey" + "0" * 25  # 40 characters, the shape of a W&B key


@pytest.fixture(scope="module")
def ray_session():
    temp = tempfile.mkdtemp(dir="/tmp", prefix="kdr")  # short: Unix socket paths are limited
    distributed.start_ray(None, temp_dir=temp, num_cpus=2)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _run(job, root: Path, epoch_hook=None, **options) -> recording.ResultWriter:
    options.setdefault("checkpoint_every_s", 0.0)  # every epoch: the fault tests resume from epoch 1
    writer = recording.ResultWriter(root, quiet=True)
    distributed.run_job(job, distributed.RunOptions(results_dir=str(root), **options), writer, epoch_hook=epoch_hook)
    return writer


def test_a_checkpoint_is_due_once_its_interval_has_passed():
    now = [0.0]
    timer = distributed.CheckpointTimer(120.0, clock=lambda: now[0])
    due = []
    for now[0] in (30.0, 119.0, 121.0, 200.0, 241.0, 250.0):
        due.append(timer.due())
    assert due == [False, False, True, False, True, False]
    every_epoch = distributed.CheckpointTimer(0.0, clock=lambda: now[0])
    assert every_epoch.due() and every_epoch.due()


def _always_fails(trial_key: str, epoch: int, rank: int, in_train: bool) -> None:
    raise RuntimeError(f"injected failure after epoch {epoch}")


def test_a_trial_that_fails_every_attempt_records_its_restarts_as_an_integer(ray_session, tmp_path, capfd):
    root = tmp_path / "res"
    # Two epochs: the restart resumes from epoch 1's checkpoint and fails after epoch 2.
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", extra={"epochs": 2},
                        results_dir=root)
    _run(job, root, _always_fails, wandb="disabled", max_failures=1)
    row = results.read_results(root, "rd4ad", "backbone").iloc[0]
    assert row["status"] == "failed" and "injected failure after epoch 2" in row["error"]
    assert row["restarts"] == 1 and float(row["restarts"]).is_integer()
    assert row["error"] == "RuntimeError: injected failure after epoch 2"  # one sentence, not Ray's traceback
    assert "restart 1 of 1" in capfd.readouterr().err


class CorruptCheckpointOnce:
    """Cuts the checkpoint just reported to half its size, then kills the trial's process:
    the restart finds a checkpoint that cannot be read."""

    def __init__(self, marker_dir: Path, storage: Path) -> None:
        self.marker_dir, self.storage = str(marker_dir), str(storage)

    def __call__(self, trial_key: str, epoch: int, rank: int, in_train: bool) -> None:
        marker = Path(self.marker_dir) / f"{trial_key}.corrupted"
        if epoch != 1 or marker.exists():
            return
        for state in Path(self.storage).glob("*/*/checkpoint_*/state.pt"):
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("corrupted\n")
        os._exit(1)


def test_an_unreadable_checkpoint_is_moved_aside_and_the_trial_trains_again(ray_session, tmp_path, capfd):
    root = tmp_path / "res"
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", extra={"epochs": 2},
                        results_dir=root)
    _run(job, root, CorruptCheckpointOnce(tmp_path / "markers", root / "_ray"), wandb="disabled", max_failures=1)
    row = results.read_results(root, "rd4ad", "backbone").iloc[0]
    # One restart was enough: it did not read the cut file again, it trained from scratch.
    assert row["status"] == "ok" and row["restarts"] == 1 and row["epochs"] == 2
    curves = results.read_epoch_curves(root, "rd4ad", "backbone")
    assert [json.loads(e)["resumed_from_epoch"] for e in curves.sort_values("epoch")["extra_json"]] == [0, 0]
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if "is not a readable kdsearch checkpoint" in line]
    assert len(said) == 1 and "renamed state.pt.unreadable" in said[0] and "trains again from scratch" in said[0], err[-2000:]
    assert said[0].startswith(f"kdsearch: trial {job.trainings[0].trial_key} ")


class CrashOnce:
    """Kills one rank's process of a trial, as a lost node would, once per trial, right after
    the checkpoint of ``after_epoch`` was reported; a marker file per trial makes it once.
    ``sigkill`` ends it as the OOM killer or ``kill -9`` would, else it exits with code 1."""

    def __init__(self, marker_dir: Path, after_epoch: int, rank: int = 0, sigkill: bool = False) -> None:
        self.marker_dir, self.after_epoch, self.rank, self.sigkill = str(marker_dir), after_epoch, rank, sigkill

    def __call__(self, trial_key: str, epoch: int, rank: int, in_train: bool) -> None:
        marker = Path(self.marker_dir) / f"{trial_key}.crashed"
        if rank != self.rank or epoch != self.after_epoch or marker.exists():
            return
        if in_train:
            # Train registers a reported checkpoint asynchronously; dying before that would
            # test Ray's race, not kdsearch's restart. Wait until every report is committed.
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=60)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("crashed\n")
        if self.sigkill:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)


# Ray workers cannot import this test module: ship CrashOnce to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _subprocess_env(tmp: str) -> dict[str, str]:
    env = dict(os.environ, RAY_TMPDIR=tmp, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def _smoke_sweep_argv(root: Path, seeds: int) -> list[str]:
    """The CLI of a small real sweep: RD4AD resnet18 at the smoke budget, one trial at a time."""
    return [sys.executable, "-m", "kdsearch.ablate", "--paper", "rd4ad", "--axis", "backbone", "--values", "resnet18",
            "--profile", "smoke", "--seeds", str(seeds), "--results", str(root), "--max-concurrent", "1",
            "--wandb", "disabled", "--checkpoint-every", "0"]


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(pids: list[int], grace: float = 5.0) -> None:
    """Stop exactly these processes: SIGTERM, then SIGKILL after a grace period."""
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


@pytest.mark.timeout(300)
def test_grid_run_rows_readers_crash_recovery_divergence_and_wandb(ray_session, tmp_path, monkeypatch, capfd):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    # A key in the environment must never be copied into results or run files.
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "res"
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", seeds="2", extra={"epochs": 2},
                      results_dir=root)
    # lr=1e30 makes Adam blow the weights up: the loss is NaN at the second step.
    diverging = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", extra={"lr": 1e30},
                            results_dir=root)
    job = dataclasses.replace(job, trainings=(*job.trainings, *diverging.trainings))
    markers = tmp_path / "markers"
    writer = _run(job, root, CrashOnce(markers, after_epoch=1), wandb="offline", max_failures=1, max_concurrent=2,
                  wandb_images=2)

    frame = results.read_results(root, "rd4ad", "backbone")
    assert len(frame) == 3 == len(writer.rows) and frame["trial_key"].is_unique
    # Each crashed worker is named once, by trial, with its restart count.
    err = capfd.readouterr().err
    for spec in job.trainings[:2]:
        assert f"kdsearch: trial {spec.trial_key} (backbone=resnet18, weave, seed {spec.seed}) lost its worker; " \
               f"restart 1 of 1" in err
    assert (frame.loc[frame["status"] == "ok", "restarts"] == 1).all()
    assert set(frame["trial_key"]) == {t.trial_key for t in job.trainings}
    by_status = frame.groupby("status").size().to_dict()
    assert by_status == {"ok": 2, "diverged": 1}
    ok = frame[frame.status == "ok"]
    assert (ok["epochs"] == 2).all() and ok["image_auroc"].between(0, 1).all() and ok["au_pro"].between(0, 1).all()
    assert (ok["device"] == "cpu").all() and (ok["train_seconds"] > 0).all()
    bad = frame[frame.status == "diverged"].iloc[0]
    assert "nan" in bad["error"].lower() and pd.isna(bad["image_auroc"])
    for path in (root / "rd4ad" / "backbone").glob("*.parquet"):
        assert pq.read_schema(path).names == results.RESULT_SCHEMA.names

    # The tree reads as one table with pyarrow.dataset, pandas and duckdb.
    assert ds.dataset(str(root), format="parquet").to_table().num_rows == 3
    assert len(pd.read_parquet(root)) == 3
    con = duckdb.connect()
    count = con.execute(f"SELECT count(*) FROM read_parquet('{root}/*/*/*.parquet', union_by_name=true)").fetchone()[0]
    ok_count = con.execute(f"SELECT count(*) FROM read_parquet('{root}/*/*/*.parquet') WHERE status = 'ok'").fetchone()[0]
    assert (count, ok_count) == (3, 2)

    # Each ok trial died once after epoch 1 and restarted from that checkpoint.
    assert sorted(p.stem for p in markers.iterdir()) == sorted(ok["trial_key"] + "")
    curves = results.read_epoch_curves(root, "rd4ad", "backbone")
    for key in ok["trial_key"]:
        trial = curves[curves.trial_key == key].sort_values("epoch")
        assert trial["epoch"].tolist() == [1, 2]
        # Epoch 1 was trained by the first attempt, epoch 2 by the restart from its checkpoint.
        assert [json.loads(e)["resumed_from_epoch"] for e in trial["extra_json"]] == [0, 1]
        assert trial["val_metric"].between(0, 1).all()

    # W&B offline: one run per trial, with its config; the key is nowhere.
    runs = sorted((root / "_wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3
    texts = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    assert not any(FAKE_KEY.encode() in t for t in texts)
    configs = [p for run in runs for p in run.rglob("config.yaml")]
    blobs = b"".join(p.read_bytes() for run in runs for p in run.rglob("*.wandb"))
    keys_seen = {t.trial_key for t in job.trainings if t.trial_key.encode() in blobs
                 or any(t.trial_key in c.read_text() for c in configs)}
    assert keys_seen == {t.trial_key for t in job.trainings}
    pngs = [p for run in runs for p in run.rglob("*.png")]
    assert len(pngs) >= 2  # anomaly-map panels of the ok trials
    # A finished Tuner leaves no checkpoints behind.
    assert not any((root / "_ray").glob("*/*/checkpoint_*"))


@pytest.mark.timeout(300)
def test_search_axis_runs_tpe_with_asha_and_counts_every_trial(ray_session, tmp_path):
    root = tmp_path / "res"
    job = plan_lib.plan("rd4ad", "lr", profile="smoke", n_trials=3, extra={"epochs": 2}, results_dir=root)
    writer = _run(job, root, wandb="disabled", max_concurrent=2)
    rows = results.read_results(root, "rd4ad", "lr")
    curves = results.read_epoch_curves(root, "rd4ad", "lr")
    keys = set(rows["trial_key"]) | set(curves["trial_key"])
    assert len(keys) == 3 and len(rows) == len(writer.rows) >= 1  # ASHA may stop the others early
    for value in rows["value"]:
        assert 1e-4 <= float(value) <= 1e-2
    assert set(curves["val_metric_name"]) == {"val_image_auroc"}
    again = plan_lib.plan("rd4ad", "lr", profile="smoke", n_trials=3, extra={"epochs": 2}, results_dir=root)
    assert again.done == 3 and [s.n_trials for s in again.studies] == [0]
    assert len(again.studies[0].history) == 3


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_resume_after_killed_driver_finishes_without_duplicates(tmp_path):
    raytmp = tempfile.mkdtemp(dir="/tmp", prefix="kdk")
    root = tmp_path / "res"
    argv = _smoke_sweep_argv(root, 4)
    env = _subprocess_env(raytmp)
    started: list[int] = []
    try:
        driver = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        folder = root / "rd4ad" / "backbone"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None and not list(folder.glob("*.parquet")):
            started = sorted(set(started) | set(_descendants(driver.pid)))
            time.sleep(0.2)
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        started = sorted(set(started) | set(_descendants(driver.pid)))
        driver.send_signal(signal.SIGKILL)  # the driver dies without any cleanup
        driver.wait(30)
        _kill(started)  # the local Ray it had started (raylet, GCS, workers)
        before = results.read_results(root, "rd4ad", "backbone")
        assert 1 <= len(before) < 4

        again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 2 and "--resume" in again.stderr  # no silent rerun
        resumed = subprocess.run([*argv, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        left = 4 - len(before)
        assert f"{left} row(s): {left} training(s) to run, 0 sharing one of them" in resumed.stdout
        assert f"({len(before)} already done)" in resumed.stdout
        after = results.read_results(root, "rd4ad", "backbone")
        assert len(after) == 4 and after["trial_key"].is_unique and set(after["status"]) == {"ok"}
        assert sorted(after["seed"]) == [0, 1, 2, 3]
        # The rows written before the kill are untouched.
        kept = after.set_index("trial_key").loc[before["trial_key"], "created_at"]
        assert kept.tolist() == before["created_at"].tolist()
        # The summary table lists every trial.
        assert resumed.stdout.count("resnet18  weave") == 4
    finally:
        _kill(started)
        shutil.rmtree(raytmp, ignore_errors=True)


def test_trial_resources_split_over_workers():
    opts = distributed.RunOptions
    assert distributed.trial_resources(opts(), 0) == {"cpu": 1.0, "gpu": 0.0, "worker_cpu": 1.0, "worker_gpu": 0.0}
    packed = distributed.trial_resources(opts(gpus_per_trial=0.25), 8)
    assert packed["gpu"] == 0.25 and packed["cpu"] == 1.0
    ddp = distributed.trial_resources(opts(workers_per_trial=2, cpus_per_trial=2), 0)
    assert ddp["cpu"] == distributed.DRIVER_CPU and ddp["worker_gpu"] == 0.0
    assert ddp["cpu"] + 2 * ddp["worker_cpu"] == pytest.approx(2.0)  # fits a 2-CPU machine exactly
    gpu = distributed.trial_resources(opts(workers_per_trial=4), 8)
    assert gpu["worker_gpu"] == 1.0 and gpu["worker_cpu"] == pytest.approx((4 - distributed.DRIVER_CPU) / 4)


def _ddp_smoke_trial(tmp_path: Path, epochs: int, crash: CrashOnce, paper: str = "rd4ad", axis: str = "backbone",
                     values: str = "resnet18"):
    """One smoke trial (RD4AD's by default) on two gloo workers (Ray Train TorchTrainer), on a Ray of its own."""
    temp = tempfile.mkdtemp(dir="/tmp", prefix="kdd")
    root = tmp_path / "res"
    try:
        distributed.start_ray(None, temp_dir=temp, num_cpus=2)
        job = plan_lib.plan(paper, axis, profile="smoke", values=values, extra={"epochs": epochs}, results_dir=root)
        _run(job, root, crash, wandb="disabled", workers_per_trial=2, cpus_per_trial=2, max_failures=2)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return job, results.read_results(root, paper, axis), results.read_epoch_curves(root, paper, axis)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ddp_trial_under_torch_trainer_recovers_from_a_crash(tmp_path):
    """Rank 0 of the two workers dies once after epoch 1."""
    job, frame, curves = _ddp_smoke_trial(tmp_path, 2, CrashOnce(tmp_path / "markers", after_epoch=1))
    assert frame["status"].tolist() == ["ok"] and frame["epochs"].tolist() == [2]
    assert curves["epoch"].tolist() == [1, 2]
    assert json.loads(curves["extra_json"].iloc[-1])["resumed_from_epoch"] == 1
    assert (tmp_path / "markers" / f"{job.trainings[0].trial_key}.crashed").exists()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_ddp_trial_that_loses_a_rank_resumes_from_its_checkpoint_and_says_so(tmp_path, capfd):
    """Rank 1 of two is SIGKILLed after epoch 1's checkpoint: the trial goes on from epoch 2."""
    crash = CrashOnce(tmp_path / "markers", after_epoch=1, rank=1, sigkill=True)
    job, frame, curves = _ddp_smoke_trial(tmp_path, 3, crash)
    row = frame.iloc[0]
    assert row["status"] == "ok" and row["epochs"] == 3 and row["restarts"] == 1
    assert curves["epoch"].tolist() == [1, 2, 3]
    assert [json.loads(x)["resumed_from_epoch"] for x in curves["extra_json"]] == [0, 1, 1]
    err = capfd.readouterr().err
    key = job.trainings[0].trial_key
    assert err.count(f"kdsearch: trial {key}") == 1 and "restart 1 of 2" in err, err[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(840)
def test_a_restarted_ddp_trial_equals_the_unbroken_one(tmp_path):
    """Each rank draws its own shard and anomalies (MRKD's NSA patches): after rank 1 is killed,
    every rank must go on from its own streams, not rank 0's, or the losses and metrics drift."""
    trial = {"paper": "mrkd", "axis": "alpha", "values": "1"}
    _, unbroken, unbroken_curves = _ddp_smoke_trial(tmp_path / "a", 3, CrashOnce(tmp_path / "ma", after_epoch=99),
                                                    **trial)
    crash = CrashOnce(tmp_path / "mb", after_epoch=1, rank=1, sigkill=True)
    _, restarted, restarted_curves = _ddp_smoke_trial(tmp_path / "b", 3, crash, **trial)
    assert restarted["restarts"].tolist() == [1] and unbroken["restarts"].tolist() == [0]
    for metric in ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro"):
        assert restarted[metric].tolist() == unbroken[metric].tolist(), metric
    assert restarted_curves["loss"].tolist() == unbroken_curves["loss"].tolist()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    """`ray start --head` on 127.0.0.2 plus a worker node on 127.0.0.3, then ablate --address."""
    temp = tempfile.mkdtemp(dir="/tmp", prefix="kdc")
    env = dict(_subprocess_env(temp), RAY_AUTH_MODE="token")
    port = _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    started: list[int] = []
    head_cmd = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.2", f"--port={port}", "--num-cpus=1",
                "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}", "--block"]
    worker_cmd = [ray_bin, "start", f"--address=127.0.0.2:{port}", "--node-ip-address=127.0.0.3", "--num-cpus=1",
                  "--num-gpus=0", "--block"]
    root = tmp_path / "res"
    procs = []
    try:
        # --block keeps `ray start` in the foreground, so its PID and children are ours to stop.
        head = subprocess.Popen(head_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        procs.append(head)
        _wait_for_nodes(port, env, 1)
        worker = subprocess.Popen(worker_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        procs.append(worker)
        _wait_for_nodes(port, env, 2)
        run = subprocess.run(
            [sys.executable, "-m", "kdsearch.ablate", "--paper", "rd4ad", "--axis", "backbone", "--values", "resnet18",
             "--profile", "smoke", "--seeds", "2", "--results", str(root), "--address", f"127.0.0.2:{port}",
             "--wandb", "disabled", "--set", "epochs=2"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        frame = results.read_results(root, "rd4ad", "backbone")
        assert len(frame) == 2 and set(frame["status"]) == {"ok"}
        curves = results.read_epoch_curves(root, "rd4ad", "backbone")
        nodes = {json.loads(e)["node"] for e in curves["extra_json"]}
        assert nodes == {"127.0.0.2", "127.0.0.3"}
    finally:
        for proc in procs:
            started += [proc.pid, *_descendants(proc.pid)]
        _kill(sorted(set(started)), grace=10)
        shutil.rmtree(temp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return sock.getsockname()[1]


def _wait_for_nodes(port: int, env: dict[str, str], count: int, timeout: float = 60) -> None:
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code, f"127.0.0.2:{port}"], env=env, capture_output=True,
                             text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster did not reach {count} node(s): {out.stderr[-2000:]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_full_disk_stops_the_sweep_with_the_space_needed_and_resume_finishes_once_freed(tmp_path):
    """A real small disk (tmpfs; needs the right to mount): 100 MB cannot hold one 176 MB
    checkpoint; 300 MB holds one at a time, so three trials fit only because each
    trial's checkpoint is deleted as soon as its row is written."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    raytmp = tempfile.mkdtemp(dir="/tmp", prefix="kdf")
    root = disk / "res"
    argv = _smoke_sweep_argv(root, 3)
    env = _subprocess_env(raytmp)
    try:
        full = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert full.returncode == 2, full.stdout[-2000:] + full.stderr[-3000:]
        assert "Traceback" not in full.stderr and "Logging error" not in full.stderr
        assert "Unhandled error" not in full.stderr
        error = [line for line in full.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and error[0].startswith(f"error: the disk holding {root / '_ray'} is full")
        needed = int(error[0].split("each running trial needs about ")[1].split(" MB")[0])
        assert 150 <= needed <= 200  # the smoke RD4AD checkpoint: student and its Adam state, no teacher
        assert "--resume" in error[0] and "--storage" in error[0]
        assert results.read_results(root, "rd4ad", "backbone").empty  # no trial recorded as done

        subprocess.run(["mount", "-o", "remount,size=300m", str(disk)], check=True)
        resumed = subprocess.run([*argv, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        after = results.read_results(root, "rd4ad", "backbone")
        assert len(after) == 3 and after["trial_key"].is_unique and set(after["status"]) == {"ok"}
        assert not [p for p in (root / "_ray").rglob("checkpoint_*")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
        shutil.rmtree(raytmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("size_mb", [150, 250, 400])
def test_a_small_disk_at_any_size_stops_cleanly_or_finishes(tmp_path, size_mb):
    """MRKD's smoke alpha sweep, two trials at a time, each checkpoint about 194 MB: below one,
    between one and two, and about two checkpoints. The sweep ends with one error line that
    gives the space a trial needs, no traceback, and the stopped trials' checkpoints removed;
    or, where the deletions keep up, it finishes. (At 250 MB this once ended in Ray's copy
    of an exception that could not be rebuilt: a TypeError traceback.) W&B (offline) writes
    its folder on the same disk, as it does by default: neither Ray's "Unhandled error"
    tracebacks nor Python's "--- Logging error ---" blocks of W&B's log reach stderr."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    raytmp = tempfile.mkdtemp(dir="/tmp", prefix="kdf")
    root = disk / "res"
    try:
        argv = [sys.executable, "-m", "kdsearch.ablate", "--paper", "mrkd", "--axis", "alpha", "--profile", "smoke",
                "--results", str(root), "--wandb", "offline", "--checkpoint-every", "0"]
        run = subprocess.run(argv, cwd=REPO, env=_subprocess_env(raytmp), capture_output=True, text=True, timeout=500)
        assert "Traceback" not in run.stderr and "TypeError" not in run.stderr, run.stderr[-3000:]
        assert "Logging error" not in run.stderr and "Unhandled error" not in run.stderr, run.stderr[-3000:]
        assert not [p for p in (root / "_ray").rglob("checkpoint_*")]
        if run.returncode == 0:
            assert len(results.read_results(root, "mrkd", "alpha")) == 6
            return
        assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
        error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "each running trial needs about " in error[0], run.stderr[-3000:]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
        shutil.rmtree(raytmp, ignore_errors=True)


def test_a_result_that_cannot_be_written_stops_the_sweep_naming_the_trial(ray_session, tmp_path, monkeypatch):
    root = tmp_path / "res"
    job = plan_lib.plan("mrkd", "modules", profile="smoke", results_dir=root)

    def unwritable(self, spec, final, records, **kwargs):
        raise NotADirectoryError(20, "Not a directory", str(root / "mrkd" / "modules"))

    monkeypatch.setattr(recording.ResultWriter, "finished", unwritable)
    writer = recording.ResultWriter(root, quiet=True)
    with pytest.raises(UserError) as info:
        distributed.run_job(job, distributed.RunOptions(results_dir=str(root), wandb="disabled", max_concurrent=1,
                                                        checkpoint_every_s=0), writer)
    assert (root / "_ray").is_dir() and not list((root / "_ray").rglob("checkpoint_*"))  # removed on the way out
    message = str(info.value)
    first = next(t for t in job.trainings if t.trial_key in message)
    assert f"({first.axis}={first.value}, {first.category}, seed 0)" in message
    assert str(root / "mrkd" / "modules") in message and "--resume" in message


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_prints_the_summary_and_the_resume_hint_and_leaves_no_process(tmp_path):
    raytmp = tempfile.mkdtemp(dir="/tmp", prefix="kdi")
    root = tmp_path / "res"
    argv = _smoke_sweep_argv(root, 4)
    driver = subprocess.Popen(argv, cwd=REPO, env=_subprocess_env(raytmp), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    started: list[int] = []
    try:
        folder = root / "rd4ad" / "backbone"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None and not list(folder.glob("*.parquet")):
            started = sorted(set(started) | set(_descendants(driver.pid)))
            time.sleep(0.2)
        assert driver.poll() is None
        started = sorted(set(started) | set(_descendants(driver.pid)))
        interrupted = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
        assert time.monotonic() - interrupted < 30
        assert driver.returncode == 130, err[-2000:]
        assert "value" in out and "status" in out  # the summary table of what finished
        assert "did not run; run the same command with --resume" in err
        time.sleep(2)
        assert not [pid for pid in started if psutil_alive(pid)]
        assert not (folder / ".sweep.lock").exists()
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill(started)
        shutil.rmtree(raytmp, ignore_errors=True)


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(300)
def test_rows_that_share_a_training_train_it_once_within_and_across_sweeps(ray_session, tmp_path):
    """MRKD's score-map rows share one training in a sweep; ADPS's stage-0 row answers Table IV's
    ADPS row from the results tree in a later sweep of another axis."""
    import pandas as pd

    from kdsearch.loop import fit_and_evaluate

    root = tmp_path / "results"
    job = plan_lib.plan("mrkd", "score_maps", profile="smoke", values="SM1,SM3", results_dir=root)
    assert len(job.trainings) == 1 and [r.value for r in job.rows_of(job.trainings[0])] == ["SM1", "SM3"]
    _run(job, root, wandb="disabled")
    rows = results.read_results(root, "mrkd", "score_maps").set_index("value")
    assert set(rows["status"]) == {"ok"} and rows["training_key"].nunique() == 1
    assert rows.loc["SM3", "reused_from"] == rows.loc["SM1", "trial_key"] and pd.isna(rows.loc["SM1", "reused_from"])
    assert len(results.read_epoch_curves(root, "mrkd", "score_maps")["trial_key"].unique()) == 1
    # The shared row's metrics are those of its own training, run separately (here with
    # another thread count than the Ray trial's one: equal to float noise; exactly equal in
    # one process, tests/test_training_identity.py).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray trial trained: one CPU, so the same kernels
    try:
        alone = fit_and_evaluate(job.rows_of(job.trainings[0])[1].trial, progress=False)
    finally:
        torch.set_num_threads(threads)
    for name in ("image_auroc", "pixel_auroc", "au_pro"):
        assert rows.loc["SM3", name] == pytest.approx(alone.metrics[name], abs=1e-6), name

    _run(plan_lib.plan("adps", "stage", profile="smoke", values="0", results_dir=root), root, wandb="disabled")
    structure = plan_lib.plan("adps", "structure", profile="smoke", values="ADPS,W/O S", results_dir=root)
    assert [s.value for s, _ in structure.reused] == ["ADPS"] and [t.value for t in structure.trainings] == ["W/O S"]
    writer = _run(structure, root, wandb="disabled")
    assert len(writer.rows) == 2
    stage = results.read_results(root, "adps", "stage").iloc[0]
    table4 = results.read_results(root, "adps", "structure").set_index("value")
    assert table4.loc["ADPS", "training_key"] == stage["training_key"]
    assert table4.loc["ADPS", "reused_from"] == stage["trial_key"]
    for name in ("image_auroc", "pixel_auroc", "au_pro", "pixel_ap", "train_seconds"):
        assert table4.loc["ADPS", name] == stage[name]
    assert pd.isna(table4.loc["W/O S", "reused_from"])


@pytest.mark.timeout(300)
def test_kept_weights_score_a_variant_asked_for_later_without_training(ray_session, tmp_path):
    import pandas as pd

    from kdsearch.checkpoint import load_checkpoint
    from kdsearch.loop import score_kept_model

    root = tmp_path / "results"
    first = plan_lib.plan("mrkd", "score_maps", profile="smoke", values="SM1", results_dir=root)
    _run(first, root, wandb="disabled", keep_models=True)
    kept = results.kept_model_path(root, first.trainings[0].training_key)
    assert kept.is_file()
    later = plan_lib.plan("mrkd", "score_maps", profile="smoke", values="SM1,SM2", results_dir=root)
    assert not later.trainings and [s.value for s, _ in later.rescored] == ["SM2"] and later.done == 1
    writer = _run(later, root, wandb="disabled")
    assert [r["value"] for r in writer.rows] == ["SM2"]
    rows = results.read_results(root, "mrkd", "score_maps").set_index("value")
    assert rows.loc["SM2", "reused_from"] == rows.loc["SM1", "trial_key"] and pd.isna(rows.loc["SM1", "reused_from"])
    assert rows.loc["SM2", "training_key"] == rows.loc["SM1", "training_key"]
    # Scored as its own training would score it (the same evaluation and stream; equality with
    # a separate training is shown in tests/test_training_identity.py).
    state = load_checkpoint(kept)
    assert rows.loc["SM2", "pixel_auroc"] == score_kept_model(later.rescored[0][0].trial, state)["pixel_auroc"]
    assert rows.loc["SM2", "pixel_auroc"] != rows.loc["SM1", "pixel_auroc"]
    # Without kept weights the same request trains again.
    kept.unlink()
    assert [t.value for t in plan_lib.plan("mrkd", "score_maps", profile="smoke", values="SM1,SM3",
                                           results_dir=root).trainings] == ["SM3"]


# --------------------------------------------------------------- a user's mistake inside a trial


def test_a_user_error_in_a_trial_ends_it_failed_once_instead_of_raising(tmp_path, worker_reports):
    from kdsearch.distributed import worker

    # No pre-flight here: the trial itself meets the missing data root.
    job = plan_lib.plan("adps", "k", profile="smoke", dataset="mvtec", categories="bottle", values="4",
                        results_dir=tmp_path)
    options = distributed.RunOptions(results_dir=str(tmp_path), wandb="disabled")
    # Raised, Tune would restart it --max-failures times as a lost worker; it returns instead.
    worker.train_func({"spec": job.trainings[0], "options": options, "in_train": False})
    [report] = worker_reports
    assert report["final"] is True and report["status"] == "failed" and report["restarts"] == 0
    assert report["user_error"].startswith("dataset 'mvtec' (MVTec AD) needs its data root: pass --data-root")
    assert report["error"] == report["user_error"] and report["epoch"] == 1


class _FakeTrial:
    def __init__(self, trial_id: str, index: int) -> None:
        self.trial_id, self.config, self.last_result = trial_id, {"trial": index}, None
        self.error_file = None
        self.pickled_error_file = None


class _NoTracker:
    def start(self, *args, **kwargs): ...
    def start_row(self, *args, **kwargs): ...
    def log(self, *args, **kwargs): ...
    def finish(self, *args, **kwargs): ...
    def row(self, *args, **kwargs): ...


def _recorder(tmp_path, job):
    from kdsearch.distributed.driver import _Recorder

    writer = recording.ResultWriter(tmp_path, quiet=True)
    options = distributed.RunOptions(results_dir=str(tmp_path), wandb="disabled")
    return _Recorder(job, None, writer, _NoTracker(), options), writer


def _ends(recorder, trial, final: dict) -> None:
    trial.last_result = {"final": True, **final}
    recorder.on_trial_complete(0, [], trial)


def test_the_sweep_stops_once_every_running_trial_failed_with_the_same_user_error(tmp_path):
    from kdsearch.distributed.worker import user_error_report

    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", results_dir=tmp_path)
    mistake = user_error_report(UserError("cannot decode texture image x.png; remove it"), epochs=0, node="n",
                                restarts=0)
    recorder, writer = _recorder(tmp_path, job)
    first, second, third = (_FakeTrial(f"t{i}", i) for i in range(3))
    recorder.on_trial_start(0, [], first)
    recorder.on_trial_start(0, [], second)  # two at once
    _ends(recorder, first, mistake)
    assert recorder.failure is None  # the other running trial may still succeed
    recorder.on_trial_start(0, [], third)
    _ends(recorder, second, mistake)
    assert recorder.failure == "cannot decode texture image x.png; remove it"  # what _fit raises: error:, exit 2
    assert [r["status"] for r in writer.rows] == ["failed", "failed"]
    assert {r["error"] for r in writer.rows} == {"cannot decode texture image x.png; remove it"}
    assert {r["restarts"] for r in writer.rows} == {0}
    # One trial at a time: the first one's mistake is every running trial's.
    recorder, _ = _recorder(tmp_path / "one", job)
    recorder.on_trial_start(0, [], first)
    _ends(recorder, first, mistake)
    assert recorder.failure == "cannot decode texture image x.png; remove it"

    # A trial that ended otherwise, or another mistake, says the error is not every trial's: the sweep goes on.
    for other in ({"status": "ok", "epochs": 1}, user_error_report(UserError("another"), epochs=0, node="n",
                                                                     restarts=0)):
        recorder, writer = _recorder(tmp_path / str(len(other)), job)
        first, second, third = (_FakeTrial(f"t{i}", i) for i in range(3))
        recorder.on_trial_start(0, [], first)
        recorder.on_trial_start(0, [], second)
        _ends(recorder, first, other)
        recorder.on_trial_start(0, [], third)
        _ends(recorder, second, mistake)
        _ends(recorder, third, mistake)
        assert recorder.failure is None and len(writer.rows) == 3


def _user_error_after_epoch_1(trial_key: str, epoch: int, rank: int, in_train: bool) -> None:
    raise UserError(f"injected mistake after epoch {epoch}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_user_error_in_every_running_trial_is_not_retried_and_stops_the_sweep(ray_session, tmp_path, capfd):
    root = tmp_path / "res"
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", seeds="4", extra={"epochs": 2},
                        results_dir=root)
    with pytest.raises(UserError, match="^injected mistake after epoch 1$"):
        _run(job, root, _user_error_after_epoch_1, wandb="disabled", max_failures=2, max_concurrent=2)
    frame = results.read_results(root, "rd4ad", "backbone")
    # Each trial that ran failed once, with the sentence; none was restarted; the others never ran.
    assert 1 <= len(frame) <= 2 and set(frame["status"]) == {"failed"} and set(frame["restarts"]) == {0}
    assert set(frame["error"]) == {"injected mistake after epoch 1"} and set(frame["epochs"]) == {1}
    err = capfd.readouterr().err
    assert "lost its worker" not in err and "failed with the same error; stopping the sweep" in err


def test_a_killed_workers_staged_checkpoint_is_removed_and_a_live_ones_kept(tmp_path):
    from kdsearch.distributed.storage import STAGING_PREFIX, remove_orphaned_staging

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = tmp_path / f"{STAGING_PREFIX}{int(gone.stdout)}-abc"
    live = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-def"
    other = tmp_path / "kdsearch-something-else"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"x" * 1024)
    assert remove_orphaned_staging(tmp_path) == 1
    assert not dead.exists() and live.exists() and other.exists()


def test_rays_trials_did_not_complete_line_is_silenced():
    """Tune's closing 'Trials did not complete: [tune_trial_…]' (logged at ERROR by
    ray.tune.tune) followed kdsearch's own line naming the failed trial."""
    import logging

    from ray.tune import tune as tune_module

    from kdsearch.distributed.session import _quiet_logs

    _quiet_logs()
    assert tune_module.logger.name == "ray.tune.tune"
    assert not tune_module.logger.isEnabledFor(logging.ERROR)


def test_a_trial_that_loses_its_worker_with_no_restart_left_is_named(tmp_path, capsys):
    """With --max-failures 0 no restart line comes first: the failure itself names the trial."""
    job = plan_lib.plan("rd4ad", "backbone", profile="smoke", values="resnet18", results_dir=tmp_path)
    recorder, writer = _recorder(tmp_path, job)
    recorder.max_failures = 0
    trial = _FakeTrial("t0", 0)
    # What Tune leaves for a lost worker: the error file holds str(exc) alone (no type name),
    # the exception itself is pickled next to it.
    import cloudpickle
    from ray.exceptions import ActorDiedError

    trial.error_file = str(tmp_path / "error.txt")
    Path(trial.error_file).write_text("Failure # 1 (occurred at 2026-01-01_00-00-00)\n"
                                      "The actor died unexpectedly before finishing this task.\n")
    trial.pickled_error_file = str(tmp_path / "error.pkl")
    Path(trial.pickled_error_file).write_bytes(cloudpickle.dumps(ActorDiedError()))
    recorder.on_trial_start(0, [], trial)
    recorder.on_trial_error(0, [], trial)
    spec = job.trainings[0]
    err = capsys.readouterr().err
    assert f"kdsearch: trial {spec.trial_key} (backbone=resnet18, {spec.category}, seed 0) failed after 0 of 0 " \
           f"restart(s): ActorDiedError: The actor died unexpectedly" in err
    assert writer.rows[0]["error"].startswith("ActorDiedError: The actor died unexpectedly")
    assert [r["status"] for r in writer.rows] == ["failed"]


def test_a_sweeps_worker_temp_folder_is_its_own_and_goes_with_what_its_workers_left(tmp_path):
    """Ray workers that are killed or leave by os._exit (DDP workers at every trial's end) never
    removed the empty tmp*wandb-media / tmp*wandb-artifacts folders W&B makes at import (timm
    imports it): they piled up in the system temp folder. Each sweep's workers now get a temp
    folder of their own, emptied when the same sweep runs again (--resume after a killed
    driver) and removed when it ends."""
    from kdsearch.distributed.storage import (
        fresh_worker_temp_dir,
        remove_worker_temp_dir,
        worker_env,
        worker_temp_dir,
    )

    system = tmp_path / "tmp"
    results_dir = tmp_path / "res"
    folder = fresh_worker_temp_dir(results_dir, "mrkd-alpha", system)
    assert folder.is_dir() and folder.parent == system and len(str(folder)) < len(str(system)) + 30
    assert worker_temp_dir(results_dir, "mrkd-alpha", system) == folder  # the next run of this sweep finds it
    other = fresh_worker_temp_dir(results_dir, "mrkd-main", system)  # another axis: another folder
    elsewhere = fresh_worker_temp_dir(tmp_path / "res2", "mrkd-alpha", system)
    assert len({folder, other, elsewhere}) == 3
    for made in ("tmpa1wandb-media", "tmpb2wandb-artifacts", "kdsearch-ckpt-1-x"):  # what killed workers left
        (folder / made).mkdir()
    assert not list(fresh_worker_temp_dir(results_dir, "mrkd-alpha", system).iterdir())  # a killed driver's: emptied
    (folder / "tmpc3wandb-media").mkdir()
    remove_worker_temp_dir(results_dir, "mrkd-alpha", system)
    assert not folder.exists() and other.is_dir() and elsewhere.is_dir()
    env = worker_env(folder)
    assert env["TMPDIR"] == str(folder)
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):  # the compile cache outlives the sweep, where torch keeps it
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        assert env["TORCHINDUCTOR_CACHE_DIR"] == default_cache_dir()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_ddp_sweep_leaves_no_wandb_temp_folders_in_the_system_temp_folder(tmp_path):
    """An unbroken DDP trial (--workers-per-trial 2) left 6 empty tmp*wandb* folders in the
    system temp folder, a killed worker 2 more."""
    raytmp = tempfile.mkdtemp(dir="/tmp", prefix="kdw")
    system = tmp_path / "systmp"
    system.mkdir()
    root = tmp_path / "res"
    argv = _smoke_sweep_argv(root, 1) + ["--workers-per-trial", "2", "--set", "epochs=1"]
    env = dict(_subprocess_env(raytmp), TMPDIR=str(system))
    driver = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started: list[int] = []
    try:
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline and driver.poll() is None:
            started = sorted(set(started) | set(_descendants(driver.pid)))
            time.sleep(0.5)
        out, err = driver.communicate(timeout=60)
        assert driver.returncode == 0, err[-3000:]
        assert len(results.read_results(root)) == 1
        _kill(started)  # Ray's processes of this run, all gone before the folder is counted
        left = sorted(p.name for p in system.iterdir() if "wandb" in p.name or p.name.startswith("kdsearch-"))
        assert left == [], left
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill(started)
        shutil.rmtree(raytmp, ignore_errors=True)

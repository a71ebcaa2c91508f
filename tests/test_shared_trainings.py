"""One experiment is trained once, also by sweeps that run at once, and ``reused_from``
always names a row that trained.

The sweeps here are the real planner and driver (claims, reuse, re-pointing) with Tune's
fit replaced by a stub that "trains" each training at once: no Ray. MRKD's smoke axes
share trainings: Table 7's score-map rows (one training), the main row, alpha=1 and
modules ILM+FLM (the same one), alpha=0 and modules FLM (another).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kdsearch import plan as plan_lib
from kdsearch import recording, results
from kdsearch.distributed import driver
from kdsearch.distributed.options import RunOptions
from kdsearch.reuse import _scoring_json, _scoring_of, split_recorded, trained
from kdsearch.runlock import CLAIMS_DIRNAME, wanted_path

AXES = {"score_maps": ["SM1", "SM2", "SM3", "SM1&2", "SM2&3", "SM1&2&3"], "main": ["default"],
        "alpha": ["0", "0.2", "1"], "modules": ["Baseline", "FLM", "ILM+FLM"]}


class _Killed(Exception):
    """A sweep killed (SIGKILL) after some of its trainings."""


class _NoTracker:
    def start(self, *args, **kwargs): ...
    def log(self, *args, **kwargs): ...
    def finish(self, *args, **kwargs): ...
    def row(self, *args, **kwargs): ...
    def close(self): ...


class _Trial:
    def __init__(self, trial_id: str, index: int) -> None:
        self.trial_id, self.config, self.error_file = trial_id, {"trial": index}, None
        self.last_result = {"final": True, "status": "ok", "epochs": 1, "image_auroc": 0.7, "pixel_auroc": 0.8,
                            "pixel_ap": 0.1, "au_pro": 0.5, "train_seconds": 1.0}


class Trainings:
    """Tune's fit stubbed: records every training and checks it may run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.trained: list[str] = []
        self.kill_after: int | None = None  # the next fit dies after this many trainings
        self.before_keeping: threading.Event | None = None  # a training ends once it is set

    def fit(self, trainable, name, options, search_alg, scheduler, num_samples, callback, max_failures):
        kill_after, self.kill_after = self.kill_after, None
        for index, spec in enumerate(callback.job.trainings[:num_samples]):
            if kill_after is not None and index >= kill_after:
                # Its claims stay behind as a killed process's.
                for path in (self.root / CLAIMS_DIRNAME).glob("*.claim"):
                    if path.stem in callback.claims.held:
                        path.write_text(json.dumps({**json.loads(path.read_text()), "pid": _dead_pid(),
                                                    "claim": "killed"}))
                raise _Killed()
            self._check_may_train(callback.job, spec)
            with self.lock:
                assert spec.training_key not in self.running, "two sweeps train one training at once"
                self.running.add(spec.training_key)
            time.sleep(0.02)
            trial = _Trial(f"{name}-{index}", index)
            callback.on_trial_start(0, [], trial)
            with self.lock:
                self.running.discard(spec.training_key)
                self.trained.append(spec.training_key)
            if self.before_keeping is not None:
                self.before_keeping.wait(10)
            if wanted_path(self.root, spec.training_key).exists():  # as the worker: keep the weights
                kept = results.kept_model_path(self.root, spec.training_key)
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_bytes(b"weights")
            callback.on_trial_complete(0, [], trial)

    def _check_may_train(self, job, spec) -> None:
        """No row that trained this training (or follows one) already answers these rows."""
        valid, _ = split_recorded(results.recorded_trainings(self.root, "mrkd"))
        wanted = {_scoring_json(row) for row in job.rows_of(spec)}
        recorded = [row for row in valid.get(spec.training_key, []) if _scoring_of(row) in wanted]
        assert not recorded, f"{spec.label} trained again: {[r['trial_key'] for r in recorded]} answer it"


_DEAD: list[int] = []


def _dead_pid() -> int:
    if not _DEAD:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        _DEAD.append(int(gone.stdout))
    return _DEAD[0]


@pytest.fixture
def trainings(tmp_path, monkeypatch):
    stub = Trainings(tmp_path)
    monkeypatch.setattr(driver, "_fit", stub.fit)
    monkeypatch.setattr(driver, "_trainable", lambda *args, **kwargs: None)  # Ray's object store: not here
    monkeypatch.setattr(driver, "CLAIM_POLL_S", 0.01)

    def ready(self):
        self.tracker = self.tracker or _NoTracker()

    monkeypatch.setattr(driver._Runner, "ready", ready)

    def score_kept(spec, source, options, writer):  # scoring kept weights, stubbed as the training is
        assert results.kept_model_path(tmp_path, spec.training_key).is_file()
        return writer.reused(spec, source, scored={"image_auroc": 0.6, "eval_seconds": 0.1})

    monkeypatch.setattr(driver, "_score_kept", score_kept)
    return stub


def _sweep(root: Path, axis: str, values: list[str]) -> recording.ResultWriter:
    job = plan_lib.plan("mrkd", axis, profile="smoke", values=",".join(values), results_dir=root)
    return _run(root, job)


def _run(root: Path, job) -> recording.ResultWriter:
    writer = recording.ResultWriter(root, quiet=True)
    driver.run_job(job, RunOptions(results_dir=str(root), wandb="disabled"), writer)
    return writer


def _at_once(root: Path, jobs, names: list[str] | None = None) -> None:
    """Run sweeps at once (threads: each holds its own claims), raising what any raised."""
    errors: list[BaseException] = []

    def run(job):
        try:
            _run(root, job)
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,), name=(names or [None] * len(jobs))[i])
               for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a sweep waits for ever"
    if errors:
        raise errors[0]


def _rows(root: Path) -> dict[str, dict]:
    frame = results.read_results(root, "mrkd")
    return {row["trial_key"]: row for row in frame.to_dict("records")}


def check_invariant(root: Path, swept: str | None = None) -> None:
    """Every ``reused_from`` names a row that trained the same training, or, where that row is
    gone, no row trains it anywhere (the next sweep of its axis trains it). ``swept``: an
    axis whose sweep just finished: each of its rows is answered by a row that trained."""
    rows = _rows(root)
    trainers: dict[str, set[str]] = {}
    for key, row in rows.items():
        if trained(row):
            trainers.setdefault(row["training_key"], set()).add(key)
    for row in rows.values():
        if trained(row):
            continue
        source = rows.get(row["reused_from"])
        if source is not None:
            assert trained(source), f"{row['axis']}/{row['value']} reuses a row that did not train"
            assert source["training_key"] == row["training_key"]
        else:
            assert not trainers.get(row["training_key"]), (
                f"{row['axis']}/{row['value']} names a lost row while {trainers[row['training_key']]} trained it")
            assert row["axis"] != swept, f"{row['axis']}/{row['value']} still names a lost row after its sweep"


def _delete(root: Path, axis: str, value: str) -> None:
    for key, row in _rows(root).items():
        if row["axis"] == axis and row["value"] == value:
            (root / "mrkd" / axis / f"{key}.parquet").unlink()


def test_a_deleted_training_row_is_trained_again_and_never_leaves_a_cycle(tmp_path, trainings):
    root = tmp_path
    _sweep(root, "alpha", ["0"])
    _sweep(root, "modules", ["FLM"])  # reuses alpha=0's training
    rows = _rows(root)
    alpha0 = next(k for k, r in rows.items() if r["value"] == "0")
    assert next(r for r in rows.values() if r["value"] == "FLM")["reused_from"] == alpha0
    _delete(root, "alpha", "0")
    # Before: alpha=0 was written from FLM's row, which named alpha=0: a cycle, and no row that trained.
    _sweep(root, "alpha", ["0"])
    check_invariant(root, "alpha")
    rows = _rows(root)
    assert trained(rows[alpha0]) and len(trainings.trained) == 2
    assert next(r for r in rows.values() if r["value"] == "FLM")["reused_from"] == alpha0


def test_a_row_written_from_a_follower_names_the_row_that_trained(tmp_path, trainings):
    root = tmp_path
    _sweep(root, "score_maps", AXES["score_maps"])  # SM1 trains, the other five follow it
    _sweep(root, "main", ["default"])  # scored as SM1&2&3: written from that follower
    _sweep(root, "alpha", ["1"])
    rows = _rows(root)
    sm1 = next(k for k, r in rows.items() if r["value"] == "SM1")
    for value in ("SM1&2&3", "default", "1"):
        assert next(r for r in rows.values() if r["value"] == value)["reused_from"] == sm1  # not a chain
    assert len(trainings.trained) == 1
    # Losing the training's row, another axis's sweep that needs it trains it and re-points its rows.
    _delete(root, "score_maps", "SM1")
    _sweep(root, "modules", ["ILM+FLM"])
    check_invariant(root, "modules")
    rows = _rows(root)
    ilm_flm = next(k for k, r in rows.items() if r["value"] == "ILM+FLM")
    assert trained(rows[ilm_flm]) and len(trainings.trained) == 2
    assert {r["reused_from"] for r in rows.values() if r["value"] in ("SM2", "default", "1")} == {ilm_flm}


def test_resume_says_why_a_row_pointing_at_a_deleted_training_does_not_count(tmp_path, trainings):
    """--resume of an axis whose only row followed a deleted training row said "nothing of
    mrkd/score_maps is recorded yet"; it is recorded, and is trained again."""
    root = tmp_path
    _sweep(root, "score_maps", ["SM1", "SM2"])  # SM1 trains, SM2 follows it
    _delete(root, "score_maps", "SM1")
    job = plan_lib.plan("mrkd", "score_maps", profile="smoke", values="SM2", results_dir=root)
    assert job.done == 0
    text = recording.resume_text(job, root)
    assert "nothing" not in text and "recorded yet" not in text
    assert "none of the 1 recorded row(s) of mrkd/score_maps" in text and "whose row was deleted" in text
    empty = plan_lib.plan("mrkd", "alpha", profile="smoke", values="0", results_dir=root)
    assert recording.resume_text(empty, root).startswith("--resume: nothing of mrkd/alpha is recorded in")


def test_a_deleted_trainers_curve_goes_when_its_row_is_written_from_another_training(tmp_path):
    """SM1 trained (its curve under its key), its row was deleted, and SM1 was written again
    from another row's training: its old curve stayed, a second curve of a training SM1 no
    longer reports."""
    from kdsearch.trial_result import TrialResult

    root = tmp_path
    [sm1] = plan_lib.plan("mrkd", "score_maps", profile="smoke", values="SM1", results_dir=root).trainings
    writer = recording.ResultWriter(root, quiet=True)
    ok = TrialResult.from_summary({"status": "ok", "epochs": 1, "image_auroc": 0.7})
    writer.finished(sm1, ok, [{"epoch": 1, "loss": 0.5, "seconds": 1.0}])
    curve = root / "mrkd" / "score_maps" / results.EPOCHS_DIRNAME / f"{sm1.trial_key}.parquet"
    assert curve.exists()
    (root / "mrkd" / "score_maps" / f"{sm1.trial_key}.parquet").unlink()  # the row deleted, its curve kept
    writer.finished(sm1, ok, [], reused_from="f" * 16)  # written again from another row's training
    assert not curve.exists()
    assert results.read_epoch_curves(root, "mrkd", "score_maps").empty


def test_two_sweeps_at_once_train_their_shared_training_once(tmp_path, trainings):
    root = tmp_path
    # Both planned before either trained anything, then run at once.
    jobs = [plan_lib.plan("mrkd", axis, profile="smoke", results_dir=root) for axis in ("score_maps", "main")]
    _at_once(root, jobs)
    assert len(trainings.trained) == 1
    rows = _rows(root)
    assert len(rows) == 7 and sum(trained(r) for r in rows.values()) == 1
    check_invariant(root, "main")
    assert not list((root / CLAIMS_DIRNAME).glob("*.claim")) and not list((root / CLAIMS_DIRNAME).glob("*.wanted"))


def test_a_sweep_waiting_for_a_training_scores_its_own_rows_on_the_weights_kept_for_it(tmp_path, trainings,
                                                                                       monkeypatch):
    """main claims the training first: score_maps' other five scorings are not in main's row,
    so main's trial keeps the weights for it, and they are scored, not trained again."""
    root = tmp_path
    jobs = [plan_lib.plan("mrkd", axis, profile="smoke", results_dir=root) for axis in ("main", "score_maps")]
    main_claimed, asked = threading.Event(), threading.Event()

    class MainFirst(driver.TrainingClaims):
        def take(self, training_key):
            if threading.current_thread().name == "score-maps-sweep":
                main_claimed.wait(10)
            taken = super().take(training_key)
            main_claimed.set()
            return taken

        def want_model(self, training_key):
            super().want_model(training_key)
            asked.set()

    monkeypatch.setattr(driver, "TrainingClaims", MainFirst)
    trainings.before_keeping = asked  # main's trial ends once score_maps has asked for the weights
    _at_once(root, jobs, names=["main-sweep", "score-maps-sweep"])
    assert len(trainings.trained) == 1
    rows = _rows(root)
    assert len(rows) == 7 and sum(trained(r) for r in rows.values()) == 1
    assert sum(r["image_auroc"] == 0.6 for r in rows.values()) == 5  # scored on the kept weights
    check_invariant(root, "score_maps")


def test_a_claim_of_a_killed_sweep_is_taken_over(tmp_path, trainings):
    root = tmp_path
    trainings.kill_after = 0
    with pytest.raises(_Killed):
        _sweep(root, "main", ["default"])
    assert len(list((root / CLAIMS_DIRNAME).glob("*.claim"))) == 1
    _sweep(root, "alpha", ["1"])  # the same training: not waited for forever
    assert len(trainings.trained) == 1 and not list((root / CLAIMS_DIRNAME).glob("*.claim"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_invariant_holds_over_random_sweeps_kills_and_deletions(tmp_path, trainings, seed):
    rng = random.Random(seed)
    root = tmp_path
    for _ in range(14):
        action = rng.choice(["sweep", "sweep", "kill", "delete", "pair"])
        if action == "delete":
            keys = list(_rows(root))
            if keys:
                row = _rows(root)[rng.choice(keys)]
                _delete(root, row["axis"], row["value"])
                check_invariant(root)
            continue
        if action == "pair":
            axes = rng.sample(list(AXES), 2)
            jobs = [plan_lib.plan("mrkd", a, profile="smoke", values=",".join(rng.sample(AXES[a], rng.randint(1, len(AXES[a])))),
                                  results_dir=root) for a in axes]
            _at_once(root, jobs)
            for axis in axes:
                check_invariant(root, axis)
            continue
        axis = rng.choice(list(AXES))
        values = rng.sample(AXES[axis], rng.randint(1, len(AXES[axis])))
        if action == "kill":
            trainings.kill_after = rng.randint(0, 1)
            try:
                _sweep(root, axis, values)
            except _Killed:
                pass
            trainings.kill_after = None  # a sweep with nothing to train was not killed
            check_invariant(root)
        else:
            _sweep(root, axis, values)
            check_invariant(root, axis)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_real_sweeps_at_once_train_the_shared_training_once(tmp_path):
    """MRKD's smoke score_maps and main sweeps started together into one folder, each with its
    own local Ray: one training, seven rows (it used to train twice, both exiting 0)."""
    import shutil
    import tempfile

    repo = Path(__file__).resolve().parent.parent
    root = tmp_path / "res"
    runs, temps = [], []
    for axis in ("score_maps", "main"):
        temp = tempfile.mkdtemp(dir="/tmp", prefix="kds")
        temps.append(temp)
        env = dict(os.environ, RAY_TMPDIR=temp, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
        env.pop("RAY_ADDRESS", None)
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "kdsearch.ablate", "--paper", "mrkd", "--axis", axis, "--profile", "smoke",
             "--results", str(root), "--wandb", "disabled", "--quiet"],
            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [run.communicate(timeout=800) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)
    for run, (out, err) in zip(runs, outs):
        assert run.returncode == 0, out[-2000:] + err[-3000:]
    rows = _rows(root)
    assert len(rows) == 7 and len({r["training_key"] for r in rows.values()}) == 1
    assert sum(trained(r) for r in rows.values()) == 1
    check_invariant(root, "main")
    check_invariant(root, "score_maps")
    assert len(list(root.glob("mrkd/*/_epochs/*.parquet"))) == 1  # one training's curve
    assert not list((root / CLAIMS_DIRNAME).glob("*.claim"))

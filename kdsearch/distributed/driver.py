"""The driver: one Tuner per job or study, and the callback that records every trial."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from kdsearch.diskspace import checkpoint_mb_in, disk_full_advice, is_disk_full, says_disk_full
from kdsearch.distributed.options import RunOptions, check_gpu_request, trial_resources
from kdsearch.distributed.session import offered_gpu_node_types, start_ray
from kdsearch.distributed.storage import (
    fresh_worker_temp_dir,
    remove_experiment,
    remove_fit_folders,
    remove_orphaned_staging,
    remove_stale_experiments,
    remove_worker_temp_dir,
    worker_env,
)
from kdsearch.distributed.worker import train_run_name, tune_trial
from kdsearch.errors import UserError, error_sentence
from kdsearch.plan import Job, TrialSpec
from kdsearch.search_axis import probe_value
from kdsearch.progress import SweepProgress
from kdsearch.recording import ResultWriter
from kdsearch.results import kept_model_path, repoint_row
from kdsearch.runlock import TrainingClaims, wanted_path
from kdsearch.trial_result import TrialResult
from kdsearch.vocabulary import TEST_METRICS, VAL_METRIC, Status

class _StopAfterWriteFailure(tune.Stopper):
    """Stops every trial once the recorder could not write a result."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.recorder.failure is not None

    def stop_all(self) -> bool:
        return self.recorder.failure is not None


class _Recorder(tune.Callback):
    """Driver-side callback: writes every finished trial and mirrors it to W&B."""

    def __init__(self, job: Job, study: int | None, writer: ResultWriter, tracker: Any, options: RunOptions,
                 progress: SweepProgress | None = None, claims: TrainingClaims | None = None) -> None:
        self.job, self.study, self.writer, self.tracker = job, study, writer, tracker
        self.claims = claims
        self.results_dir = options.results_dir
        self.job_workers = options.workers_per_trial
        # A DDP trial's restarts are Train's, with the same budget as Tune's for one worker.
        self.max_failures = options.max_failures
        self.storage = options.storage_path()  # where checkpoints go
        self.progress = progress
        self.specs: dict[str, TrialSpec] = {}  # by Tune's trial id: resolved once, not on every report
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self.nodes: dict[str, str] = {}
        self.recorded: set[str] = set()
        self.train_runs: list[str] = []  # Train V2 run folders of DDP trials, removed after the fit
        self.failure: str | None = None  # set when a result could not be written: the sweep stops
        self.restarts: dict[str, int] = {}
        self.checkpoint_problems: dict[str, str] = {}  # said once per trial
        self.disk_full = False
        self.checkpoint_mb: float | None = None
        # A user error ends its trial without a restart (see worker.user_error_report); when every
        # trial that ran ended with the same one, the sweep stops rather than meet it in all the rest.
        self.running: set[str] = set()
        self.most_running = 0  # the most trials seen running at once
        self.user_errors: list[str] = []
        self.ended_otherwise = 0

    def _spec(self, trial) -> TrialSpec:
        if trial.trial_id not in self.specs:
            self.specs[trial.trial_id] = self.job.spec_for(trial.config, self.study)
        return self.specs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self.most_running = max(self.most_running, len(self.running))
        if self.progress is not None:
            self.progress.trial_started(trial.trial_id)
        self.tracker.start_row(self._spec(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if int(result.get("restarts") or 0) > self.restarts.get(trial.trial_id, 0):
            # A DDP trial's group was restarted by Train, out of Tune's sight: say so now.
            self.restarts[trial.trial_id] = int(result["restarts"])
            self._say_restart(trial)
        problem = result.get("checkpoint_problem")
        if problem and trial.trial_id not in self.checkpoint_problems:
            self.checkpoint_problems[trial.trial_id] = problem
            spec = self._spec(trial)
            print(f"kdsearch: trial {spec.trial_key} ({spec.axis}={spec.value}, {spec.category}, seed {spec.seed}): "
                  f"{problem}", file=sys.stderr, flush=True)
        if result.get("final"):
            return
        epoch = int(result.get("epoch", 0))
        # The epoch's record as the training loop made it: every loss part the method logs
        # (ADPS's distill and focal too), the validation metrics, seconds and images.
        record = dict(result.get("epoch_record") or {k: v for k, v in result.items()
                                                     if k in _EPOCH_KEYS or k.startswith(("val_", "loss"))})
        self.epochs.setdefault(trial.trial_id, {})[epoch] = record
        self.nodes[trial.trial_id] = str(result.get("node", ""))
        spec = self._spec(trial)
        self.tracker.log(spec.trial_key, record, step=epoch)

    def _records(self, trial) -> list[dict[str, Any]]:
        return [r for _, r in sorted(self.epochs.get(trial.trial_id, {}).items())]

    def _record(self, trial, ok: bool = True):
        self.recorded.add(trial.trial_id)
        self.running.discard(trial.trial_id)
        if self.progress is not None:
            self.progress.trial_finished(trial.trial_id, ok)
        spec = self._spec(trial)
        if self.job_workers > 1:
            self.train_runs.append(train_run_name(self.job, spec))
        return spec

    def _drop_checkpoints(self, trial) -> None:
        """Delete a recorded trial's checkpoints now: the row holds what counts, and on a
        long sweep finished trials' checkpoints would fill the disk."""
        import pyarrow.fs as pafs

        try:
            fs, folder = trial.storage.storage_filesystem, trial.path
            for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                    fs.delete_dir(info.path)
        except (OSError, AttributeError, ValueError):
            pass  # left for the end of the fit, which removes the whole experiment
        if self.job_workers > 1 and self.storage:
            remove_experiment(self.storage, train_run_name(self.job, self._spec(trial)))

    def _disk_full(self, trial) -> bool:
        """Stop the sweep when ``trial`` failed for a full disk (retrying would fail the same way)."""
        text = _trial_error(trial)
        if not says_disk_full(text):
            return False
        self.disk_full = True
        self.checkpoint_mb = checkpoint_mb_in(text) or self.checkpoint_mb
        self.failure = self.failure or "disk full"  # told once the sweep has stopped (see _fit)
        print("kdsearch: no space left for checkpoints; stopping the sweep", file=sys.stderr, flush=True)
        return True

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.recorded:
            self._guard(self._complete, trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.failure or self._disk_full(trial):
            return
        self.restarts[trial.trial_id] = self.restarts.get(trial.trial_id, 0) + 1
        self._say_restart(trial)

    def _say_restart(self, trial) -> None:
        # Ray's own report of a dead worker points at the OOM killer; say which trial it was.
        spec = self._spec(trial)
        print(f"kdsearch: trial {spec.trial_key} ({spec.axis}={spec.value}, {spec.category}, seed {spec.seed}) "
              f"lost its worker; restart {self.restarts[trial.trial_id]} of {self.max_failures} from its last "
              f"checkpoint", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.recorded and not self.failure and not self._disk_full(trial):
            self._guard(self._error, trial)

    def _guard(self, fn, trial) -> None:
        # An exception in a Tune callback would fail the trial and restart it. A result that
        # cannot be written stops the sweep instead (see _StopAfterWriteFailure): training on
        # would only throw more results away.
        try:
            fn(trial)
        except Exception as exc:  # noqa: BLE001
            try:
                spec = self._spec(trial)
                which = f"trial {spec.trial_key} ({spec.axis}={spec.value}, {spec.category}, seed {spec.seed})"
            except Exception:  # noqa: BLE001 - the trial's identity is only for the message
                which = f"Ray trial {trial.trial_id}"
            folder = Path(self.writer.results_dir) / self.job.space.paper / self.job.axis.name
            if is_disk_full(exc):
                advice = disk_full_advice(str(folder), None, None)
                self.failure = self.failure or f"could not record {which}: {advice}"
            else:
                self.failure = self.failure or (
                    f"could not record {which} in {folder}: {type(exc).__name__}: {exc}; make that a writable "
                    f"folder and run the same command with --resume")
            print(f"kdsearch: could not record {which}; stopping the sweep", file=sys.stderr, flush=True)

    def _user_error(self, message: str) -> None:
        """Count a trial a user error ended; stop the sweep once every trial that ran (at least
        as many as ever ran at once) ended with this same error."""
        self.user_errors.append(message)
        if self.ended_otherwise or len(set(self.user_errors)) > 1 or len(self.user_errors) < self.most_running:
            return
        if not self.failure:
            self.failure = message
            print(f"kdsearch: every trial run so far ({len(self.user_errors)}) failed with the same error; stopping "
                  f"the sweep", file=sys.stderr, flush=True)

    def _release(self, spec: TrialSpec) -> None:
        """Its rows are written: a sweep waiting for this training may read them now."""
        if self.claims is not None and self.study is None:
            self.claims.release(spec.training_key)

    def _complete(self, trial) -> None:
        final = dict(trial.last_result or {})
        user_error = final.get("user_error") if final.get("final") else None
        spec = self._record(trial, ok=not user_error)
        # A restart from scratch (no readable checkpoint) is counted here, not in the trial.
        final["restarts"] = max(int(final.get("restarts") or 0), self.restarts.get(trial.trial_id, 0))
        if not final.get("final") and self.failure:
            return  # stopped because the sweep stops: not a result, it runs again on --resume
        if not user_error:
            self.ended_otherwise += 1
        if not final.get("final"):  # stopped early by ASHA: no test evaluation
            self.writer.pruned(spec, self._records(trial), self.nodes.get(trial.trial_id))
            self._drop_checkpoints(trial)
            self.tracker.finish(spec.trial_key, {"status": str(Status.PRUNED)})
            return
        records = final.get("epoch_records") or self._records(trial)
        row = self.writer.finished(spec, TrialResult.from_summary(final), records, node=final.get("node"))
        if final.get("kept_model_error"):
            print(f"warning: {spec.label}: --keep-models could not keep its weights ({final['kept_model_error']}); "
                  f"its rows stand, but rows that score it differently will train it again", file=sys.stderr, flush=True)
        variants = final.get("variant_metrics") or {}
        self.tracker.finish(spec.trial_key, _summary(row), final.get("images") or (), failed=row["status"] != Status.OK)
        for follower in self.job.rows_of(spec)[1:]:
            # A row that only scores the same model differently: its own test metrics.
            shared = self.writer.finished(
                follower, TrialResult.from_summary({**final, **variants.get(follower.trial_key, {})}),
                records, node=final.get("node"), reused_from=spec.trial_key)
            self.tracker.row(follower, _summary(shared), records, reused_from=spec.trial_key,
                             failed=shared["status"] != Status.OK)
        # Rows elsewhere whose training's row was lost: this row trained it now.
        for orphan in self.job.orphans.get(spec.training_key, []):
            repoint_row(self.results_dir, orphan, spec.trial_key)
        self._release(spec)
        self._drop_checkpoints(trial)
        if user_error:
            self._user_error(str(user_error))

    def _error(self, trial) -> None:
        spec = self._record(trial, ok=False)
        self.ended_otherwise += 1
        restarts, records = self.restarts.get(trial.trial_id, 0), self._records(trial)
        failed = TrialResult(Status.FAILED, epochs=len(records), restarts=restarts,
                             error=error_sentence(_trial_error(trial)))
        # Ray's own text names its trial id only (and with --max-failures 0 no restart line
        # came before): say which trial failed and why.
        print(f"kdsearch: trial {spec.trial_key} ({spec.axis}={spec.value}, {spec.category}, seed {spec.seed}) failed "
              f"after {restarts} of {self.max_failures} restart(s): {failed.error}", file=sys.stderr, flush=True)
        row = self.writer.finished(spec, failed, records, node=self.nodes.get(trial.trial_id))
        self._release(spec)
        self.tracker.finish(spec.trial_key, _summary(row), failed=True)
        for follower in self.job.rows_of(spec)[1:]:
            shared = self.writer.finished(follower, failed, [], reused_from=spec.trial_key)
            self.tracker.row(follower, _summary(shared), records, reused_from=spec.trial_key, failed=True)
        self._drop_checkpoints(trial)


_EPOCH_KEYS = {"epoch", "seconds", "images"}


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("status", *TEST_METRICS, *TrialResult.timing_fields(), "epochs")
    return {k: row[k] for k in keys if row.get(k) is not None and not (isinstance(row[k], float) and math.isnan(row[k]))}


def _trial_error(trial) -> str:
    """The error a failed trial left (its traceback's text), else a generic note.

    A lost worker's error (Ray's ``ActorDiedError`` and kin) is written to the trial's error
    file as its message alone; it is read from the pickled exception instead, so the sentence
    names its type (``ActorDiedError: The actor is dead …``)."""
    died = _actor_error(trial)
    if died:
        return died
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            return Path(path).read_text()[-4000:]
    except Exception:  # noqa: BLE001
        pass
    try:
        error = trial.get_error()
        if error is not None:
            return "".join(traceback.format_exception_only(type(error), error))[-4000:]
    except Exception:  # noqa: BLE001
        pass
    return "trial failed (its worker died or raised); see Ray's logs"


def _actor_error(trial) -> str | None:
    """``Type: message`` (on one line) of a trial's pickled error when its worker died, else None."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        path = trial.pickled_error_file
        if not path or not os.path.exists(path):
            return None
        import cloudpickle

        with open(path, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # noqa: BLE001 - the text file is the fallback
        return None
    if not isinstance(error, RayActorError) or isinstance(error, RayTaskError):
        return None
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _optuna_space(description: Mapping[str, Any]) -> dict[str, Any]:
    dists = optuna.distributions
    dist = description["distribution"]
    param = description["param"]
    if dist == "categorical":
        return {param: dists.CategoricalDistribution(list(description["choices"]))}
    if dist == "int":
        return {param: dists.IntDistribution(int(description["low"]), int(description["high"]))}
    return {param: dists.FloatDistribution(float(description["low"]), float(description["high"]),
                                           log=dist == "loguniform")}


def _fit(trainable, name: str, options: RunOptions, search_alg, scheduler, num_samples: int,
         callback: _Recorder, max_failures: int) -> None:
    """Run one Tuner; afterwards drop its checkpoints (the results tree holds what counts)."""
    tuner = tune.Tuner(
        trainable,
        # reuse_actors: the next trial runs in the same process, without a fresh
        # interpreter importing torch again (seconds per trial on a small CPU).
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=options.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=options.storage_path(), verbose=0, callbacks=[callback],
            stop=_StopAfterWriteFailure(callback),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    try:
        tuner.fit()
    except Exception as exc:
        # Tune's own bookkeeping (experiment state, trial folders) on a full disk.
        if not is_disk_full(exc) and not callback.failure:
            raise
        callback.disk_full = callback.disk_full or is_disk_full(exc)
        callback.failure = callback.failure or "disk full"
    if callback.failure:
        # The stopped trials restart from scratch on --resume: their checkpoints only take
        # space (and on a full disk the message can then count what is really free).
        remove_fit_folders(options.storage_path(), name, callback.train_runs)
        if callback.disk_full:
            # How many trials at once need the space: --max-concurrent, else as many as ran at once.
            at_once = options.max_concurrent or callback.most_running or None
            raise UserError(disk_full_advice(options.storage_path(), callback.checkpoint_mb, at_once))
        raise UserError(callback.failure)
    # Only a completed Tuner is cleaned: an interrupted one keeps its checkpoints on disk.
    remove_fit_folders(options.storage_path(), name, callback.train_runs)


def run_job(job: Job, options: RunOptions, writer: ResultWriter, *,
            epoch_hook: Callable[[str, int, int, bool], None] | None = None,
            progress: SweepProgress | None = None) -> None:
    """Run every pending trial of ``job``; ``writer`` records each one as it finishes.

    A grid's trainings are claimed first (:class:`kdsearch.runlock.TrainingClaims`): one that
    another live sweep claimed is not trained here; this sweep waits for its row and writes
    its own rows from it (or trains it, when that sweep ends without a row for it).

    Args:
        job: the planned trials (:func:`kdsearch.plan.plan`).
        options: how to run it.
        writer: has ``finished(spec, result, records, node=, reused_from=)``,
            ``reused(spec, source_row)`` and ``pruned(spec, records, node)``.
        epoch_hook: run in every trial process after each epoch's report, as
            ``hook(trial_key, epoch, rank, in_train)``; picklable. For tests that inject
            faults (a worker dying after a checkpoint); the CLI never sets it.
        progress: counts the trainings as they start and end (the sweep's progress line).
    """
    from kdsearch.tracking import Tracker, sweep_definition, wandb_root

    for row, trainer in job.repoint:  # rows whose training's row was deleted: the row that trained it now
        repoint_row(options.results_dir, row, trainer)
    # One W&B run per row: the rows answered from recorded trainings get theirs here.
    definition = sweep_definition(job, VAL_METRIC)
    tracker = Tracker(options.wandb, options.wandb_project, f"{job.space.paper}/{job.axis.name}",
                      wandb_root(options.results_dir), sweep=definition["wandb_sweep"], definition=definition)
    try:
        _answer_from_recorded(job, options, writer, tracker)
        if job.pending_trainings == 0:
            return
        # A driver killed earlier left its experiment's checkpoints; its unfinished trials run
        # again from scratch (the results tree says what is done), so they only take space.
        remove_stale_experiments(options.storage_path(), job.name)
        remove_orphaned_staging()
        remove_worker_temp_dir(options.results_dir, job.name)  # what a killed driver's workers left
        runner = _Runner(job, options, writer, tracker, epoch_hook, progress)
        try:
            if job.is_grid:
                _run_grid(job, runner)
            else:
                _run_search(job, runner)
        finally:
            runner.close()
    finally:
        tracker.close()


def _answer_from_recorded(job: Job, options: RunOptions, writer: ResultWriter, tracker: Any) -> None:
    """Write the rows that recorded trainings answer (as they are, or rescored on kept
    weights), each with its W&B run."""
    for spec, source in job.reused:  # rows a recorded training answers: written, not trained
        row = writer.reused(spec, source)
        tracker.row(spec, _summary(row), reused_from=row["reused_from"], failed=row["status"] != Status.OK)
    for spec, source in job.rescored:  # a recorded training's kept weights, scored as this row asks
        row = _score_kept(spec, source, options, writer)
        tracker.row(spec, _summary(row), reused_from=row["reused_from"], failed=row["status"] != Status.OK)


class _Runner:
    """Starts Ray when a first training is to run; stops it at the end."""

    def __init__(self, job: Job, options: RunOptions, writer: ResultWriter, tracker: Any, epoch_hook,
                 progress) -> None:
        self.job, self.options, self.writer, self.epoch_hook, self.progress = job, options, writer, epoch_hook, progress
        self.claims = TrainingClaims(options.results_dir)
        self.tracker = tracker
        self.started: bool | None = None
        self.resources: dict[str, float] = {}
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.fits = 0

    def ready(self) -> None:
        if self.started is not None:
            return
        job, options = self.job, self.options
        # The workers' temp folder is this sweep's, removed when it ends (see worker_temp_dir).
        temp = fresh_worker_temp_dir(options.results_dir, job.name)
        self.started = start_ray(options.address, temp_dir=options.temp_dir, num_cpus=options.num_cpus,
                                 env=worker_env(temp))
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        check_gpu_request(options, cluster_gpus, offered_gpu_node_types() if options.address else {}, _wants_cuda(job))
        self.resources = trial_resources(options, cluster_gpus)

    def fit(self, job: Job, study: int | None, name: str, search_alg, scheduler, num_samples: int) -> _Recorder:
        self.ready()
        # Tune restarts a one-worker trial; a DDP trial is restarted by Train inside it.
        tune_failures = self.options.max_failures if self.options.workers_per_trial == 1 else 0
        self.fits += 1
        suffix = f"-{self.fits}" if self.fits > 1 else ""
        trainable = _trainable(job, study, self.options, self.resources, self.epoch_hook)
        recorder = _Recorder(job, study, self.writer, self.tracker, self.options, self.progress, claims=self.claims)
        _fit(trainable, f"{name}-{self.stamp}{suffix}", self.options, search_alg, scheduler, num_samples, recorder,
             tune_failures)
        return recorder

    def close(self) -> None:
        self.claims.release_all()
        if self.started:
            ray.shutdown()
            remove_orphaned_staging()  # the workers are gone: what a killed one staged goes too
        if self.started is not None:
            remove_worker_temp_dir(self.options.results_dir, self.job.name)


def _wants_cuda(job: Job) -> bool:
    """Whether the job's trials set ``device`` to CUDA (a search's: its probe trial's)."""
    if job.is_grid:
        specs = job.trainings
    else:
        specs = [job.studies[0].trial(job.space, job.axis, probe_value(job.axis))] if job.studies else []
    return any(str(spec.trial.train.device).startswith("cuda") for spec in specs)


#: Seconds between two looks at the claims of trainings another sweep runs.
CLAIM_POLL_S = 2.0


def _run_grid(job: Job, runner: _Runner) -> None:
    """Claim each training, train those this sweep holds, and wait for those another sweep
    holds: once its claim is gone, their rows are written from the tree (scored on the
    weights that sweep kept for this one, where it scored them otherwise), or trained here
    when that sweep left no row for them."""
    from kdsearch import results as results_lib
    from kdsearch.reuse import share_trainings

    options, writer, progress = runner.options, runner.writer, runner.progress
    rows = [row for lead in job.trainings for row in job.rows_of(lead)]
    told: set[str] = set()
    while rows:
        owners = {spec.training_key: runner.claims.take(spec.training_key) for spec in rows}
        # Read the tree after claiming: a training recorded meanwhile is not trained again.
        shared = share_trainings(rows, results_lib.recorded_trainings(options.results_dir, job.space.method),
                                 options.results_dir, job.precision)
        now = dataclasses.replace(job, trainings=shared.trainings, followers=shared.followers, reused=shared.reused,
                                  rescored=shared.rescored, repoint=())
        _answer_from_recorded(now, options, writer, runner.tracker)
        answered = {spec.training_key for spec, _ in [*now.reused, *now.rescored]}
        for key in answered - {t.training_key for t in now.trainings}:
            runner.claims.release(key)
            if key in told:  # a training this sweep waited for
                wanted_path(options.results_dir, key).unlink(missing_ok=True)
                if progress is not None:
                    progress.trial_started(f"claimed-{key}")
                    progress.trial_finished(f"claimed-{key}")
        mine = [t for t in now.trainings if owners[t.training_key] is None]
        waiting = [t for t in now.trainings if owners[t.training_key] is not None]
        if mine:
            runner.ready()  # Ray's and Optuna's logs quietened before the sampler is built
            recorder = runner.fit(dataclasses.replace(now, trainings=mine), None, job.name, *_grid_search(len(mine)),
                                  len(mine))
            if len(recorder.recorded) < len(mine):
                return  # interrupted (Ctrl-C): what did not run is run by --resume
        rows = [row for lead in waiting for row in now.rows_of(lead)]
        fresh = [t for t in waiting if t.training_key not in told]
        for lead in fresh:
            runner.claims.want_model(lead.training_key)
        if fresh:
            told.update(t.training_key for t in fresh)
            owner = owners[fresh[0].training_key] or {}
            print(f"kdsearch: {len(fresh)} training(s) of this sweep are being trained by another sweep (pid "
                  f"{owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}); waiting for their rows "
                  f"(if that sweep is gone, delete {runner.claims.path(fresh[0].training_key)})", file=sys.stderr,
                  flush=True)
        while waiting and all(runner.claims.claimed_elsewhere(t.training_key) for t in waiting):
            time.sleep(CLAIM_POLL_S)


def _grid_search(count: int) -> tuple[Any, None]:
    indices = list(range(count))
    # The grid sampler ignores the metric; "epoch" is in every final report, also
    # for trials that hold out no validation images (val_fraction 0).
    search = OptunaSearch(space={"trial": optuna.distributions.CategoricalDistribution(indices)},
                          sampler=optuna.samplers.GridSampler({"trial": indices}, seed=0),
                          metric="epoch", mode="max")
    return search, None


def _run_search(job: Job, runner: _Runner) -> None:
    from ray.tune.schedulers import ASHAScheduler

    description = job.search_description()
    for study in job.studies:
        if study.n_trials == 0:
            continue
        runner.ready()  # Ray's and Optuna's logs quietened before the sampler is built
        param = description["param"]
        history = list(study.history)
        search = OptunaSearch(
            space=_optuna_space(description), metric=VAL_METRIC, mode="max",
            sampler=optuna.samplers.TPESampler(seed=study.seed),
            points_to_evaluate=[{param: v} for v, _ in history] or None,
            evaluated_rewards=[m for _, m in history] or None)
        epochs = int(job.studies[0].trial(job.space, job.axis, probe_value(job.axis)).epochs)
        scheduler = ASHAScheduler(time_attr="epoch", metric=VAL_METRIC, mode="max", max_t=epochs + 1,
                                  grace_period=1, reduction_factor=3)
        runner.fit(job, study.study, f"{job.name}-{study.category}-s{study.seed}", search, scheduler, study.n_trials)


def _score_kept(spec: TrialSpec, source: Mapping[str, Any], options: RunOptions,
                writer: ResultWriter) -> dict[str, Any]:
    from kdsearch.checkpoint import load_checkpoint
    from kdsearch.loop import score_kept_model

    started = time.perf_counter()
    metrics = score_kept_model(spec.trial, load_checkpoint(kept_model_path(options.results_dir, spec.training_key)))
    return writer.reused(spec, source, scored={**metrics, "eval_seconds": time.perf_counter() - started})


def _trainable(job: Job, study: int | None, options: RunOptions, resources: dict[str, float], epoch_hook=None):
    fn = tune.with_parameters(tune_trial, job=job, study=study, options=options, resources=resources,
                              epoch_hook=epoch_hook)
    request = {"cpu": resources["cpu"]}
    if resources["gpu"] > 0:
        request["gpu"] = resources["gpu"]
    return tune.with_resources(fn, request)

"""Run an ablation job on Ray: Tune schedules trials, Optuna samples them, Train runs DDP.

The only module that imports Ray and Optuna (pinned to ray 2.60 in pyproject.toml,
because their APIs keep moving; every call lives here). Structure:

* :func:`run_job` starts or joins Ray and runs one ``Tuner`` per job (grid) or per study
  (search). A grid axis is an Optuna ``GridSampler`` over the indices of the pending
  trials (so a resumed run samples only what is missing); a search axis is Optuna TPE,
  warm-started from the results tree, with ASHA early stopping on the validation metric
  reported each epoch (never on ``test``, evaluated once at the end of a trial).
* :func:`tune_trial` is the Tune trainable. With one worker per trial it runs
  :func:`train_func` in the trial itself (no Train start-up cost, identical records);
  with more it builds a ``TorchTrainer`` (DDP, gloo on CPU) whose reports a
  ``TuneReportCallback`` forwards to Tune, as Ray's Train+Tune guide does for Train V2.
* :func:`train_func` is a Ray Train style loop body: read the config, resume from the
  last checkpoint, checkpoint model + optimiser + epoch + config from rank 0 every epoch,
  report on every rank. The training itself is :func:`kdsearch.loop.fit_and_evaluate`.
* :class:`_Recorder` is a Tune callback in the driver: it writes each finished trial to
  the results tree (through the job's writer) and logs to W&B.

Fault tolerance: a trial whose worker dies restarts from its last checkpoint up to
``max_failures`` times (Tune's ``FailureConfig`` for one-worker trials, Train's for DDP
trials), then is written as ``failed``; the sweep goes on.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Ray reads these when it is imported: no per-trial CSV/JSON/TensorBoard loggers (the
# results tree replaces them) and no box-drawing progress output.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from kdsearch.diskspace import (  # noqa: E402
    CheckpointDiskFull,
    checkpoint_mb_in,
    disk_full_advice,
    is_disk_full,
    says_disk_full,
)
from kdsearch.errors import UserError, error_sentence  # noqa: E402
from kdsearch.plan import Job, TrialSpec, probe_value  # noqa: E402
from kdsearch.progress import SweepProgress  # noqa: E402
from kdsearch.recording import ResultWriter  # noqa: E402
from kdsearch.results import kept_model_path  # noqa: E402
from kdsearch.trial import TEST_METRICS, VAL_METRIC, Status  # noqa: E402

CHECKPOINT_FILE = "state.pt"
# Loopback address of a local single-node Ray: Ray rewrites 127.0.0.1 to the machine's
# network address, but keeps other 127/8 addresses (Linux routes all of them).
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"
# Resources of the small Tune function that drives a DDP trial (0 is refused by Tune).
DRIVER_CPU = 0.01


@dataclass
class RunOptions:
    """How to run a job (not what: that is the job).

    Attributes:
        results_dir: the results tree.
        storage: Ray's storage for checkpoints (folder or URI); default ``<results>/_ray``.
        address: Ray cluster to join (``auto`` or ``HOST:PORT``); ``None`` starts a local Ray.
        workers_per_trial: DDP workers per trial.
        gpus_per_trial, cpus_per_trial: resources per trial, split evenly over its workers.
        max_concurrent: most trials at once (``None``: as resources allow).
        max_failures: restarts from the last checkpoint before a trial is recorded failed.
        wandb, wandb_project: W&B mode and project.
        wandb_images: anomaly-map images per trial sent to W&B.
        temp_dir: Ray's temp/session folder for a local Ray (short: socket paths are limited).
        num_cpus: logical CPUs of a local Ray (default: the machine's).
        keep_models: keep each finished training's weights under ``<results>/_models/`` (written
            by the trial's rank 0, so the results folder must be reachable from the workers).
        checkpoint_every_s: a trial checkpoints after the first epoch that ends at least this
            many seconds after its start or its last checkpoint (0: after every epoch). A
            restart repeats at most that much training; short epochs no longer each write a
            checkpoint (a quick CPU epoch takes seconds, its checkpoint 40 MB).
    """

    results_dir: str = "results"
    storage: str | None = None
    address: str | None = None
    workers_per_trial: int = 1
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    wandb: str = "auto"
    wandb_project: str = "kdsearch"
    wandb_images: int = 4
    temp_dir: str | None = None
    num_cpus: int | None = None
    keep_models: bool = False
    checkpoint_every_s: float = 120.0

    def storage_path(self) -> str:
        if self.storage:
            return self.storage if "://" in self.storage else str(Path(self.storage).expanduser().resolve())
        return str((Path(self.results_dir) / "_ray").resolve())


# ----------------------------------------------------------------------------- Ray session

def _quiet_logs() -> None:
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A trial whose worker dies is retried and, at the end, recorded with its error: the
    # controller's traceback of every attempt would only bury the one-line summaries.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    # Tune's experiment state is never restored (the results tree says what is done); a
    # failed save of it (a full disk) is told once by kdsearch, not as Ray's traceback.
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at HOST:PORT: Ray itself retries its GCS for minutes."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__}); start one "
                        f"there with `ray start --head --port={port}`, or leave out --address to run on a local "
                        f"Ray") from None


def start_ray(address: str | None = None, *, temp_dir: str | None = None, num_cpus: int | None = None) -> bool:
    """Join ``address`` or start a local Ray bound to a loopback address.

    Returns:
        Whether this call started Ray (the caller then shuts it down); ``False`` when Ray
        was already initialised in this process.
    """
    _quiet_logs()
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if address:
        common.pop("include_dashboard")
        _check_reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address!r}: {exc}; check that `ray start --head` "
                            "runs there and that RAY_AUTH_MODE matches the cluster's") from exc
    else:
        # address="local" ignores a stale ray_current_cluster file from another session.
        ray.init(address="local", _node_ip_address=LOCAL_NODE_IP, num_cpus=num_cpus or os.cpu_count() or 1,
                 _temp_dir=temp_dir, **common)
    _quiet_logs()
    return True


# ----------------------------------------------------------------------------- trial body

class _Session:
    """The few Ray calls a trial makes, for a Tune trial (one worker) or a Train worker."""

    def __init__(self, in_train: bool) -> None:
        self.in_train = in_train
        if in_train:
            context = ray.train.get_context()
            self.rank, self.world = context.get_world_rank(), context.get_world_size()
        else:
            self.rank, self.world = 0, 1

    def get_checkpoint(self):
        return ray.train.get_checkpoint() if self.in_train else tune.get_checkpoint()

    def count_attempt(self) -> int:
        """How many times this trial's DDP worker group started before (its restarts so far).

        Train restarts a lost group inside the Tune trial, where neither Tune nor the
        checkpoint (a restart may come before one is registered) can count it: rank 0 keeps
        the count in a file in the Train run's folder. ``0`` outside Train (Tune counts).
        """
        if not self.in_train:
            return 0
        storage = ray.train.get_context().get_storage()
        fs, path = storage.storage_filesystem, f"{storage.experiment_fs_path}/{_ATTEMPTS_FILE}"
        try:
            with fs.open_input_stream(path) as stream:
                before = int(stream.read().decode() or 0)
        except (FileNotFoundError, OSError, ValueError):
            before = 0
        if self.rank == 0:
            with fs.open_output_stream(path) as stream:
                stream.write(str(before + 1).encode())
        return before

    def report(self, metrics: dict[str, Any], checkpoint=None) -> None:
        if self.in_train:
            ray.train.report(metrics, checkpoint=checkpoint)
        else:
            tune.report(metrics, checkpoint=checkpoint)


_ATTEMPTS_FILE = "kdsearch-attempts"


def _numbers(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))}


class CheckpointTimer:
    """Says when a trial's next checkpoint is due: ``every_s`` seconds after the last one."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self.last = clock()

    def due(self) -> bool:
        """Whether to checkpoint now (then the interval starts again)."""
        now = self.clock()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True


def train_func(config: dict[str, Any]) -> None:
    """Train one trial (Ray Train loop style); every rank runs it, rank 0 checkpoints.

    Args:
        config: ``{"spec": TrialSpec, "options": RunOptions, "in_train": bool}``, optionally
            ``"variants"`` (``{trial_key: method config}`` of the rows that share this
            training and differ in scoring only: each is evaluated on the trained model) and
            ``"epoch_hook"``: called on every rank as ``hook(trial_key, epoch, rank, in_train)``
            after each epoch's report (and checkpoint). Tests inject faults through it.
    """
    spec, options = config["spec"], config["options"]
    session = _Session(bool(config.get("in_train")))

    import torch

    from kdsearch.checkpoint import save_checkpoint
    from kdsearch.loop import fit_and_evaluate

    cpus = config.get("cpus_per_worker") or 1
    torch.set_num_threads(max(1, int(cpus)))
    # Per-image synthesis (NSA) uses as many threads as the worker has CPUs, not the node's.
    os.environ.setdefault("KDSEARCH_SYNTHESIS_WORKERS", str(max(1, int(cpus))))
    initial_state, checkpoint_problem = _restore(session.get_checkpoint(), move_aside=session.rank == 0)
    resumed_from = int(initial_state["epoch"]) + 1 if initial_state is not None else 0
    # Every report carries the restarts so far: the driver says so once when the count grows.
    restarts = max(session.count_attempt(), int(initial_state.get("restarts", 0)) + 1 if initial_state else 0)
    node = ray.util.get_node_ip_address()
    epoch_hook = config.get("epoch_hook")
    last_state: dict[str, Any] = {}
    checkpoint_timer = CheckpointTimer(options.checkpoint_every_s)

    def on_epoch(record: dict[str, Any], state_fn) -> None:
        last_state["fn"] = state_fn
        record.setdefault("resumed_from_epoch", resumed_from)  # kept in the checkpoint: this attempt's start
        metrics = {**_numbers(record), VAL_METRIC: record.get(VAL_METRIC, math.nan), "final": False,
                   "node": node, "restarts": restarts}
        if checkpoint_problem:
            metrics["checkpoint_problem"] = checkpoint_problem
        if session.rank == 0 and checkpoint_timer.due():
            with tempfile.TemporaryDirectory(prefix="kdsearch-ckpt-") as folder:
                save_checkpoint(state_fn(), Path(folder) / CHECKPOINT_FILE)
                try:
                    session.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
                except Exception as exc:
                    if is_disk_full(exc):  # copying it to the storage failed
                        size = (Path(folder) / CHECKPOINT_FILE).stat().st_size
                        raise CheckpointDiskFull(options.storage_path(), size) from exc
                    raise
        else:
            session.report(metrics)
        if epoch_hook is not None:
            epoch_hook(spec.trial_key, int(record["epoch"]), session.rank, session.in_train)

    outcome = fit_and_evaluate(spec.trial, initial_state=initial_state, on_epoch=on_epoch, progress=False,
                               scoring_variants=config.get("variants"))
    # Each record says from which epoch the attempt that trained it started: > 0 after a restart.
    records = [{**_numbers(r), "resumed_from_epoch": r.get("resumed_from_epoch", resumed_from)}
               for r in outcome.epoch_records]
    # The final report counts as one step past the last epoch, so ASHA (time_attr "epoch",
    # max_t = epochs + 1) never stops a trial at its last epoch before this report arrives.
    final = {**outcome.summary(), "epochs_completed": outcome.epochs_completed, "final": True, "node": node,
             "epoch": outcome.epochs_completed + 1, "resumed_from_epoch": resumed_from, "epoch_records": records,
             "variant_metrics": outcome.variant_metrics, "restarts": max(outcome.restarts, restarts),
             "checkpoint_problem": checkpoint_problem,
             VAL_METRIC: records[-1].get(VAL_METRIC, math.nan) if records else math.nan}
    final.pop("epochs", None)
    if session.rank == 0 and outcome.status == Status.OK and options.wandb_images > 0 and "fn" in last_state \
            and options.wandb != "disabled":
        try:
            final["images"] = anomaly_images(spec, last_state["fn"](), options.wandb_images)
        except Exception as exc:  # noqa: BLE001 - pictures are a nicety; the metrics stand
            final["images_error"] = f"{type(exc).__name__}: {exc}"
    if session.rank == 0 and outcome.status == Status.OK and options.keep_models and "fn" in last_state:
        state = last_state["fn"]()
        try:
            save_checkpoint({"model": state["model"], "frozen_fingerprint": state["frozen_fingerprint"],
                             "epoch": state["epoch"]},
                            kept_model_path(options.results_dir, spec.training_key))
        except (OSError, CheckpointDiskFull) as exc:  # the metrics stand; only a later variant would train
            final["kept_model_error"] = f"{type(exc).__name__}: {exc}"
    session.report(final)


def _restore(checkpoint, move_aside: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """The state in a trial's Ray checkpoint, else ``None``, and what went wrong reading it.

    A checkpoint that cannot be read is moved aside (``state.pt.unreadable``; by rank 0
    only), so no later restart reads it again, and the trial trains again from scratch;
    the returned sentence says so for the driver to print and record.
    """
    from kdsearch.checkpoint import CheckpointUnreadable, load_checkpoint

    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / CHECKPOINT_FILE
        try:
            if not path.is_file():  # another rank moved it aside
                raise CheckpointUnreadable(str(path), "is missing")
            return load_checkpoint(path), None
        except CheckpointUnreadable as exc:
            reason = exc.reason
    source = f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}"
    if not move_aside:
        return None, f"its checkpoint {source} {reason}; the trial trains again from scratch"
    try:
        checkpoint.filesystem.move(source, source + ".unreadable")
        kept = f"renamed {CHECKPOINT_FILE}.unreadable"
    except OSError as exc:
        kept = f"could not be moved aside ({exc.strerror or exc})"
    return None, f"its checkpoint {source} {reason}; it was {kept}, and the trial trains again from scratch"


def anomaly_images(spec: TrialSpec, state: dict[str, Any], count: int) -> list[tuple[str, bytes]]:
    """PNG panels (test image | anomaly map | ground truth) of the first anomalous test images."""
    import cv2
    import numpy as np
    import torch

    from kdsearch.evaluate import predict
    from kdsearch.loop import load_trial_data, rebuild_trained_method
    from kdsearch.numerics import resolve_numerics

    cfg = spec.trial.train
    method = rebuild_trained_method(spec.trial, state)
    test = load_trial_data(cfg).test
    picks = torch.nonzero(test.labels.flatten() > 0).flatten()[:count]
    if len(picks) == 0:
        picks = torch.arange(min(count, len(test.images)))
    maps, _ = predict(method, test.images[picks], cfg.eval_batch_size, resolve_numerics(torch.device("cpu")))
    panels = []
    for index, amap in zip(picks.tolist(), maps):
        image = test.images[index].permute(1, 2, 0).numpy()
        if image.dtype != np.uint8:
            image = np.clip(image * 255, 0, 255).astype(np.uint8)
        heat = amap.numpy()
        heat = (255 * (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)).astype(np.uint8)
        heat = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        mask = test.masks[index].reshape(heat.shape[:2]).float().numpy()
        mask = np.repeat((mask > 0.5).astype(np.uint8)[..., None] * 255, 3, axis=2)
        panel = np.concatenate([image, heat, mask], axis=1)
        ok, png = cv2.imencode(".png", cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        if ok:
            panels.append((f"{spec.category} test #{index}", png.tobytes()))
    return panels


# ----------------------------------------------------------------------------- Tune trial

def tune_trial(config: dict[str, Any], job: Job, study: int | None, options: RunOptions, resources: dict,
               epoch_hook: Callable[[str, int, int, bool], None] | None = None) -> None:
    """The Tune trainable of a job: resolve the trial, then train it in-process or under DDP."""
    spec = job.spec_for(config, study)
    variants = {row.trial_key: row.trial.method for row in job.rows_of(spec)[1:]}
    if options.workers_per_trial == 1:
        train_func({"spec": spec, "options": options, "in_train": False, "cpus_per_worker": resources["cpu"],
                    "epoch_hook": epoch_hook, "variants": variants})
        return
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    per_worker = {"CPU": resources["worker_cpu"]}
    if resources["worker_gpu"] > 0:
        per_worker["GPU"] = resources["worker_gpu"]
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"spec": spec, "options": options, "in_train": True, "variants": variants,
                           "cpus_per_worker": resources["worker_cpu"], "epoch_hook": epoch_hook},
        scaling_config=ScalingConfig(num_workers=options.workers_per_trial, use_gpu=resources["worker_gpu"] > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=train_run_name(job, spec), storage_path=options.storage_path(),
            failure_config=FailureConfig(max_failures=options.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def train_run_name(job: Job, spec: TrialSpec) -> str:
    """Folder of a DDP trial's Train run under the storage path."""
    return f"{job.name}-train-{spec.trial_key}"


def trial_resources(options: RunOptions, cluster_gpus: float) -> dict[str, float]:
    """Resources of one trial: the Tune trial's own and each DDP worker's.

    ``--cpus-per-trial``/``--gpus-per-trial`` are per trial and split over its workers.
    A DDP trial's Tune function takes :data:`DRIVER_CPU` out of the trial's CPUs, so a
    trial that asks for all of a machine's CPUs still fits on it.
    """
    workers = options.workers_per_trial
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else (float(workers) if cluster_gpus > 0 else 0.0)
    cpus = options.cpus_per_trial if options.cpus_per_trial is not None else float(workers)
    if workers == 1:
        return {"cpu": max(cpus, DRIVER_CPU), "gpu": gpus, "worker_cpu": max(cpus, DRIVER_CPU), "worker_gpu": gpus}
    return {"cpu": DRIVER_CPU, "gpu": 0.0, "worker_cpu": max((cpus - DRIVER_CPU) / workers, DRIVER_CPU),
            "worker_gpu": gpus / workers}


# ----------------------------------------------------------------------------- driver side

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

    def __init__(self, job: Job, study: int | None, writer: ResultWriter, tracker: Any, workers: int = 1,
                 progress: SweepProgress | None = None) -> None:
        self.job, self.study, self.writer, self.tracker = job, study, writer, tracker
        self.job_workers = workers
        self.progress = progress
        self.epochs: dict[str, dict[int, dict[str, Any]]] = {}
        self.nodes: dict[str, str] = {}
        self.recorded: set[str] = set()
        self.train_runs: list[str] = []  # Train V2 run folders of DDP trials, removed after the fit
        self.failure: str | None = None  # set when a result could not be written: the sweep stops
        self.restarts: dict[str, int] = {}
        self.checkpoint_problems: dict[str, str] = {}  # said once per trial
        self.max_failures = 0  # set by the fit that uses this recorder
        self.storage: str = ""  # set by the fit: where checkpoints go
        self.concurrent: int | None = None
        self.disk_full = False
        self.checkpoint_mb: float | None = None

    def _spec(self, trial):
        return self.job.spec_for(trial.config, self.study)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.progress is not None:
            self.progress.trial_started(trial.trial_id)
        spec = self._spec(trial)
        config = {**spec.config, "paper": spec.paper, "axis": spec.axis, "axis_value": spec.value,
                  "dataset": spec.dataset, "category": spec.category, "category_kind": spec.category_kind,
                  "seed": spec.seed, "profile": spec.profile, "trial_key": spec.trial_key}
        self.tracker.start(spec.trial_key, f"{spec.axis}={spec.value}·{spec.category}·s{spec.seed}", config,
                           tags=(spec.paper, spec.axis, spec.profile))

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
        record = {k: v for k, v in result.items() if k in _EPOCH_KEYS or k.startswith(("val_", "loss"))}
        self.epochs.setdefault(trial.trial_id, {})[epoch] = record
        self.nodes[trial.trial_id] = str(result.get("node", ""))
        spec = self._spec(trial)
        self.tracker.log(spec.trial_key, record, step=epoch)

    def _records(self, trial) -> list[dict[str, Any]]:
        return [r for _, r in sorted(self.epochs.get(trial.trial_id, {}).items())]

    def _record(self, trial, ok: bool = True):
        self.recorded.add(trial.trial_id)
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
            _remove_experiment(self.storage, train_run_name(self.job, self._spec(trial)))

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

    def _complete(self, trial) -> None:
        spec = self._record(trial)
        final = dict(trial.last_result or {})
        # A restart from scratch (no readable checkpoint) is counted here, not in the trial.
        final["restarts"] = max(int(final.get("restarts") or 0), self.restarts.get(trial.trial_id, 0))
        if not final.get("final") and self.failure:
            return  # stopped because the sweep stops: not a result, it runs again on --resume
        if not final.get("final"):  # stopped early by ASHA: no test evaluation
            self.writer.pruned(spec, self._records(trial), self.nodes.get(trial.trial_id))
            self._drop_checkpoints(trial)
            self.tracker.finish(spec.trial_key, {"status": str(Status.PRUNED)})
            return
        records = final.get("epoch_records") or self._records(trial)
        row = self.writer.finished(spec, final, records, node=final.get("node"))
        variants = final.get("variant_metrics") or {}
        for follower in self.job.rows_of(spec)[1:]:
            # A row that only scores the same model differently: its own test metrics.
            self.writer.finished(follower, {**final, **variants.get(follower.trial_key, {})}, records,
                                 node=final.get("node"), reused_from=spec.trial_key)
        self._drop_checkpoints(trial)
        self.tracker.finish(spec.trial_key, _summary(row), final.get("images") or (), failed=row["status"] != Status.OK)

    def _error(self, trial) -> None:
        spec = self._record(trial, ok=False)
        final = {"epochs_completed": len(self._records(trial)), "restarts": self.restarts.get(trial.trial_id, 0)}
        row = self.writer.finished(spec, final, self._records(trial),
                                   status=Status.FAILED, error=error_sentence(_trial_error(trial)),
                                   node=self.nodes.get(trial.trial_id))
        for follower in self.job.rows_of(spec)[1:]:
            self.writer.finished(follower, final, [], status=Status.FAILED,
                                 error=row["error"], reused_from=spec.trial_key)
        self._drop_checkpoints(trial)
        self.tracker.finish(spec.trial_key, _summary(row), failed=True)


_EPOCH_KEYS = {"epoch", "seconds", "images"}


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("status", *TEST_METRICS, "train_seconds", "eval_seconds", "train_images_per_second", "peak_memory_mb",
            "epochs")
    return {k: row[k] for k in keys if row.get(k) is not None and not (isinstance(row[k], float) and math.isnan(row[k]))}


def _trial_error(trial) -> str:
    """The error a failed trial left (its traceback's text), else a generic note."""
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
    callback.max_failures = options.max_failures  # a DDP trial's restarts are Train's, with the same budget
    callback.storage, callback.concurrent = options.storage_path(), options.max_concurrent
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
        _remove_fit_folders(options.storage_path(), name, callback.train_runs)
        if callback.disk_full:
            raise UserError(disk_full_advice(options.storage_path(), callback.checkpoint_mb, options.max_concurrent))
        raise UserError(callback.failure)
    # Only a completed Tuner is cleaned: an interrupted one keeps its checkpoints on disk.
    _remove_fit_folders(options.storage_path(), name, callback.train_runs)


def _remove_fit_folders(storage: str, name: str, train_runs: list[str]) -> None:
    """Delete a Tuner's experiment folder and its DDP trials' Train run folders."""
    for folder in (name, *train_runs):
        _remove_experiment(storage, folder)


def _remove_stale_experiments(storage: str, job_name: str) -> None:
    """Delete this job's experiment folders from earlier runs (local storage; the sweep lock keeps them unused)."""
    if "://" in storage or not Path(storage).is_dir():
        return
    for folder in Path(storage).glob(f"{job_name}-*"):
        if folder.is_dir():
            _remove_experiment(storage, folder.name)


def _remove_experiment(storage: str, name: str) -> None:
    import pyarrow.fs as pafs

    try:
        if "://" in storage:
            fs, root = pafs.FileSystem.from_uri(storage)
            fs.delete_dir(f"{root.rstrip('/')}/{name}")
        else:
            import shutil

            shutil.rmtree(Path(storage) / name, ignore_errors=True)
    except (OSError, ValueError):
        pass  # leftover checkpoints waste space but never harm the results


def run_job(job: Job, options: RunOptions, writer: ResultWriter, *,
            epoch_hook: Callable[[str, int, int, bool], None] | None = None,
            progress: SweepProgress | None = None) -> None:
    """Run every pending trial of ``job``; ``writer`` records each one as it finishes.

    Args:
        job: the planned trials (:func:`kdsearch.plan.plan`).
        options: how to run it.
        writer: has ``finished(spec, final, records, status=, error=, node=, reused_from=)``,
            ``reused(spec, source_row)`` and ``pruned(spec, records, node)``.
        epoch_hook: run in every trial process after each epoch's report, as
            ``hook(trial_key, epoch, rank, in_train)``; picklable. For tests that inject
            faults (a worker dying after a checkpoint); the CLI never sets it.
        progress: counts the trainings as they start and end (the sweep's progress line).
    """
    from kdsearch.tracking import Tracker, sweep_config, wandb_root

    for spec, source in job.reused:  # rows a recorded training answers: written, not trained
        writer.reused(spec, source)
    for spec, source in job.rescored:  # a recorded training's kept weights, scored as this row asks
        _score_kept(spec, source, options, writer)
    if job.pending_trainings == 0:
        return
    # A driver killed earlier left its experiment's checkpoints; its unfinished trials run
    # again from scratch (the results tree says what is done), so they only take space.
    _remove_stale_experiments(options.storage_path(), job.name)
    started = start_ray(options.address, temp_dir=options.temp_dir, num_cpus=options.num_cpus)
    tracker = Tracker(options.wandb, options.wandb_project, f"{job.space.paper}/{job.axis.name}",
                      wandb_root(options.results_dir),
                      sweep=sweep_config(job.name, job.search_description(), VAL_METRIC))
    try:
        resources = trial_resources(options, float(ray.cluster_resources().get("GPU", 0)))
        # Tune restarts a one-worker trial; a DDP trial is restarted by Train inside it.
        tune_failures = options.max_failures if options.workers_per_trial == 1 else 0
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if job.is_grid:
            indices = list(range(len(job.trials)))
            # The grid sampler ignores the metric; "epoch" is in every final report, also
            # for trials that hold out no validation images (val_fraction 0).
            search = OptunaSearch(space={"trial": optuna.distributions.CategoricalDistribution(indices)},
                                  sampler=optuna.samplers.GridSampler({"trial": indices}, seed=0),
                                  metric="epoch", mode="max")
            trainable = _trainable(job, None, options, resources, epoch_hook)
            _fit(trainable, f"{job.name}-{stamp}", options, search, None, len(indices),
                 _Recorder(job, None, writer, tracker, options.workers_per_trial, progress), tune_failures)
            return
        from ray.tune.schedulers import ASHAScheduler

        description = job.search_description()
        for study in job.studies:
            if study.n_trials == 0:
                continue
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
            trainable = _trainable(job, study.study, options, resources, epoch_hook)
            _fit(trainable, f"{job.name}-{study.category}-s{study.seed}-{stamp}", options, search, scheduler,
                 study.n_trials, _Recorder(job, study.study, writer, tracker, options.workers_per_trial, progress),
                 tune_failures)
    finally:
        tracker.close()
        if started:
            ray.shutdown()


def _score_kept(spec: TrialSpec, source: Mapping[str, Any], options: RunOptions, writer: ResultWriter) -> None:
    from kdsearch.checkpoint import load_checkpoint
    from kdsearch.loop import score_kept_model

    started = time.perf_counter()
    metrics = score_kept_model(spec.trial, load_checkpoint(kept_model_path(options.results_dir, spec.training_key)))
    writer.reused(spec, source, scored={**metrics, "eval_seconds": time.perf_counter() - started})


def _trainable(job: Job, study: int | None, options: RunOptions, resources: dict[str, float], epoch_hook=None):
    fn = tune.with_parameters(tune_trial, job=job, study=study, options=options, resources=resources,
                              epoch_hook=epoch_hook)
    request = {"cpu": resources["cpu"]}
    if resources["gpu"] > 0:
        request["gpu"] = resources["gpu"]
    return tune.with_resources(fn, request)

"""What runs inside a trial: the Tune trainable and the Ray Train style loop body.

Everything here is pickled by reference and imported by Ray's workers from the installed
package.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune

from kdsearch.diskspace import CheckpointDiskFull, is_disk_full
from kdsearch.distributed.options import CHECKPOINT_FILE, RunOptions
from kdsearch.distributed.storage import remove_orphaned_staging, staging_folder
from kdsearch.errors import UserError, error_sentence
from kdsearch.plan import Job, TrialSpec
from kdsearch.results import kept_model_path
from kdsearch.runlock import wanted_path
from kdsearch.synthesis.nsa import SYNTHESIS_WORKERS_ENV
from kdsearch.tracking import anomaly_images
from kdsearch.trial_result import TrialResult
from kdsearch.vocabulary import VAL_METRIC, Status

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
    if session.rank == 0:  # a restart on this node: what a killed attempt left is removed
        remove_orphaned_staging()

    import torch

    from kdsearch.checkpoint import save_checkpoint
    from kdsearch.loop import fit_and_evaluate

    cpus = config.get("cpus_per_worker") or 1
    torch.set_num_threads(max(1, int(cpus)))
    # Per-image synthesis (NSA) uses as many threads as the worker has CPUs, not the node's.
    os.environ.setdefault(SYNTHESIS_WORKERS_ENV, str(max(1, int(cpus))))
    initial_state, checkpoint_problem = _restore(session.get_checkpoint(), move_aside=session.rank == 0)
    resumed_from = int(initial_state["epoch"]) + 1 if initial_state is not None else 0
    # Every report carries the restarts so far: the driver says so once when the count grows.
    restarts = max(session.count_attempt(), int(initial_state.get("restarts", 0)) + 1 if initial_state else 0)
    node = ray.util.get_node_ip_address()
    epoch_hook = config.get("epoch_hook")
    last_state: dict[str, Any] = {}
    epochs_done = {"count": resumed_from}
    checkpoint_timer = CheckpointTimer(options.checkpoint_every_s)

    def on_epoch(record: dict[str, Any], state_fn) -> None:
        last_state["fn"] = state_fn
        epochs_done["count"] = int(record["epoch"])
        record.setdefault("resumed_from_epoch", resumed_from)  # kept in the checkpoint: this attempt's start
        # "epoch_record": the loop's record alone (every loss part), apart from what Ray adds to a report.
        numbers = _numbers(record)
        metrics = {**numbers, VAL_METRIC: record.get(VAL_METRIC, math.nan), "final": False,
                   "node": node, "restarts": restarts, "epoch_record": numbers}
        if checkpoint_problem:
            metrics["checkpoint_problem"] = checkpoint_problem
        if session.rank == 0 and checkpoint_timer.due():
            with staging_folder() as folder:
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

    try:
        outcome = fit_and_evaluate(spec.trial, initial_state=initial_state, on_epoch=on_epoch, progress=False,
                                   scoring_variants=config.get("variants"))
    except UserError as exc:
        # The user's mistake: every attempt would meet it again. The trial ends now, failed with
        # its sentence; raised, Tune (or Train) would restart it as if its worker were lost.
        session.report(user_error_report(exc, epochs=epochs_done["count"], node=node, restarts=restarts))
        return
    # Each record says from which epoch the attempt that trained it started: > 0 after a restart.
    records = [{**_numbers(r), "resumed_from_epoch": r.get("resumed_from_epoch", resumed_from)}
               for r in outcome.epoch_records]
    # The final report counts as one step past the last epoch, so ASHA (time_attr "epoch",
    # max_t = epochs + 1) never stops a trial at its last epoch before this report arrives.
    final = {**outcome.summary(), "final": True, "node": node, "epoch": outcome.epochs + 1,
             "resumed_from_epoch": resumed_from, "epoch_records": records, "variant_metrics": outcome.variant_metrics,
             "restarts": max(outcome.restarts, restarts), "checkpoint_problem": checkpoint_problem,
             VAL_METRIC: records[-1].get(VAL_METRIC, math.nan) if records else math.nan}
    if session.rank == 0 and outcome.status == Status.OK and options.wandb_images > 0 and "fn" in last_state \
            and options.wandb != "disabled":
        try:
            final["images"] = anomaly_images(spec, last_state["fn"](), options.wandb_images)
        except Exception as exc:  # noqa: BLE001 - pictures are a nicety; the metrics stand
            final["images_error"] = f"{type(exc).__name__}: {exc}"
    # Kept also when another sweep waits for this training to score it its own way.
    if session.rank == 0 and outcome.status == Status.OK and "fn" in last_state and (
            options.keep_models or _wanted(options.results_dir, spec.training_key)):
        state = last_state["fn"]()
        try:
            save_checkpoint({"model": state["model"], "frozen_fingerprint": state["frozen_fingerprint"],
                             "epoch": state["epoch"]},
                            kept_model_path(options.results_dir, spec.training_key))
        except (OSError, CheckpointDiskFull) as exc:  # the metrics stand; only a later variant would train
            final["kept_model_error"] = f"{type(exc).__name__}: {exc}"
    session.report(final)


def _wanted(results_dir: str, training_key: str) -> bool:
    try:
        return wanted_path(results_dir, training_key).exists()
    except OSError:
        return False


def user_error_report(exc: UserError, *, epochs: int, node: str, restarts: int) -> dict[str, Any]:
    """The final report of a trial a user error ended: ``failed``, its sentence as the row's
    ``error``, and the whole message under ``user_error`` (the driver stops the sweep when every
    running trial ends with the same one)."""
    message = " ".join(str(exc).split())
    failed = TrialResult(Status.FAILED, epochs=epochs, restarts=restarts, error=error_sentence(f"UserError: {message}"))
    # "epoch" one past the last, as every final report: the grid sampler's metric and ASHA's time.
    return {**failed.summary(), "final": True, "user_error": message, "node": node, "epoch": epochs + 1,
            VAL_METRIC: math.nan}


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



def tune_trial(config: dict[str, Any], job: Job, study: int | None, options: RunOptions, resources: dict,
               epoch_hook: Callable[[str, int, int, bool], None] | None = None) -> None:
    """The Tune trainable of a job: resolve the trial, then train it in-process or under DDP."""
    spec = job.spec_for(config, study)
    variants = {row.trial_key: row.trial.method_config for row in job.rows_of(spec)[1:]}
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

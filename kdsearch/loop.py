"""The training loop: fit one :class:`~kdsearch.trial.Trial` and evaluate it on its test split.

The loop knows nothing about Ray or the command line: ``python -m kdsearch.train`` calls
:func:`fit_and_evaluate` in one process, and :mod:`kdsearch.distributed` calls it inside
Ray Train workers with an ``on_epoch`` callback that reports and checkpoints. Under an
initialised ``torch.distributed`` process group every rank trains on its shard of each
epoch and each training phase's module is wrapped in DDP.

Each epoch runs the method's training phases in order (:meth:`AnomalyMethod.training_phases`),
each one pass over fresh batches with its own optimiser, all under the same autocast,
divergence check and DDP.
"""
from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from kdsearch import data as data_lib
from kdsearch.batches import TrainBatches, make_validation_set, prefetched
from kdsearch.checkpoint import restore_rng_state, rng_state
from kdsearch.config import to_dict
from kdsearch.errors import UserError
from kdsearch.evaluate import evaluate
from kdsearch.methods import AnomalyMethod, Batch, MethodConfig, TrainingPhase
from kdsearch.numerics import Numerics
from kdsearch.runtime import build_batches, build_method, build_numerics, prefetch_depth
from kdsearch.teacher_cache import TeacherCache, build_teacher_cache
from kdsearch.trial import TrainConfig, Trial
from kdsearch.trial_result import TrialResult
from kdsearch.vocabulary import Status

__all__ = ["fit_and_evaluate", "score_kept_model", "load_trial_data", "config_state", "PhaseRunner",
           "TrialOutcome", "TrialDiverged", "EpochCallback"]


@dataclass
class TrialOutcome(TrialResult):
    """What one trial produced (:class:`~kdsearch.trial_result.TrialResult`), with its
    epoch records and the test metrics of each scoring variant evaluated on the same
    trained model, by name."""

    epoch_records: list[dict[str, Any]] = field(default_factory=list)
    variant_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


class TrialDiverged(RuntimeError):
    """A loss became NaN or infinite."""


EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


def _isolated_evaluation(method: AnomalyMethod, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                         batch_size: int, numerics: Numerics, seed: int,
                         scoring: MethodConfig | None = None) -> dict[str, float]:
    """``evaluate`` under ``scoring`` (the method's own when ``None``) on its own random
    stream, seeded by the trial: a method that draws at test time (MRKD's feature masking)
    neither moves the training's stream nor depends on what was evaluated before, so scoring
    settings never change the trained weights and every scoring variant of one training
    sees the same draws."""
    devices = [numerics.device] if numerics.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return evaluate(method, images, masks, labels, batch_size, numerics, scoring)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PhaseRunner:
    """A training phase as the loop runs it: its module wrapped for DDP and compilation, and
    its training step under the run's numerics with the divergence check."""

    def __init__(self, phase: TrainingPhase, numerics: Numerics, world_size: int = 1,
                 compile_step: bool = False, teacher_cache: TeacherCache | None = None) -> None:
        self.phase = phase
        self.teacher_cache = teacher_cache
        self.numerics = numerics
        self.world_size = world_size
        self.net: torch.nn.Module = phase.module
        if world_size > 1:
            # DDP averages exactly what this phase's optimiser updates; another phase's
            # parameters inside the module (DMDD's head inside the method) are its own.
            trained = {id(p) for group in phase.optimizer.param_groups for p in group["params"]}
            others = [name for name, p in phase.module.named_parameters() if p.requires_grad and id(p) not in trained]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(phase.module, others)
            ddp_kwargs = {"device_ids": [numerics.device.index]} if numerics.device.type == "cuda" else {}
            self.net = torch.nn.parallel.DistributedDataParallel(phase.module, **ddp_kwargs)
        if compile_step:
            self.net = torch.compile(self.net)

    def log_name(self, key: str) -> str:
        return key if self.phase.name == "main" else f"{self.phase.name}_{key}"

    def start_pass(self, method: AnomalyMethod) -> None:
        """Eval mode for the method, train mode for this phase's module: a pass trains that part alone."""
        method.eval()
        self.phase.module.train()

    def train_step(self, batch: Batch, label: str, step: int) -> dict[str, float]:
        """One optimiser step on ``batch``; the step's logged values (``loss`` and the rest).

        Raises:
            TrialDiverged: the loss is NaN or infinite on any rank (``label`` and ``step``
                say where).
        """
        with self.numerics.autocast():
            if self.teacher_cache is not None:
                batch = self.teacher_cache.attach(batch)
            elif "index" in batch:
                batch = {k: v for k, v in batch.items() if k != "index"}
            values = self.phase.step(self.net, batch)
        loss = values["loss"]
        finite = torch.isfinite(loss.detach()).all().float()
        if self.world_size > 1:
            # Every rank must stop together, or the others would wait forever in backward.
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise TrialDiverged(f"{self.log_name('loss')} became {loss.item()} at {label}, step {step}")
        # Read while the forward pass is done anyway (the check above waited for it): a read
        # after backward would make the host wait for backward and the optimiser step too,
        # before it could queue the next batch's work on a GPU. float64 holds every value exactly.
        logged = dict(zip(values, torch.stack([value.detach().double() for value in values.values()]).tolist()))
        optimizer = self.phase.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return logged


def _run_phase(method: AnomalyMethod, runner: PhaseRunner, batches: TrainBatches, prefetch: int, label: str,
               show: bool) -> tuple[dict[str, float], int, int]:
    """One pass of ``runner``'s phase over the batches: (summed logged losses, steps, images on all ranks)."""
    runner.start_pass(method)
    losses: dict[str, float] = {}
    steps = images = 0
    bar = tqdm(prefetched(batches, prefetch, runner.numerics.device), total=len(batches), desc=label, leave=False,
               disable=not show, unit="batch", file=sys.stderr)
    for batch in bar:
        values = runner.train_step(batch, label, steps + 1)
        for key, value in values.items():
            losses[runner.log_name(key)] = losses.get(runner.log_name(key), 0.0) + value
        steps += 1
        images += len(batch["image"]) * runner.world_size
        bar.set_postfix(loss=f"{values['loss']:.4f}")
    return losses, steps, images


def fit_and_evaluate(
    trial: Trial,
    *,
    initial_state: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    scoring_variants: Mapping[str, MethodConfig] | None = None,
) -> TrialOutcome:
    """Train ``trial``'s method on its category for its epochs and evaluate on ``test`` once.

    Args:
        trial: the resolved trial (:func:`kdsearch.trial.resolve`).
        initial_state: a checkpoint dict to resume from.
        on_epoch: called after every epoch with the epoch record and a function that builds
            the full checkpoint state (call it only where the state is saved).
        progress: show a progress bar per phase and epoch.
        scoring_variants: other configs of the same method that differ from the trial's only
            in inference fields (:meth:`MethodConfig.inference_fields`); the trained model is
            evaluated once more on the test split under each, into ``variant_metrics``.

    Returns:
        The outcome; a NaN/inf loss gives ``status="diverged"`` with the epochs done so far.
    """
    train_cfg = trial.train
    train_cfg.validate()
    rank, world_size = _world()
    numerics = build_numerics(train_cfg)
    device = numerics.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)

    data = load_trial_data(train_cfg)

    method = build_method(trial, numerics, initial_state)
    phases = method.training_phases(train_cfg.epochs)

    train_images = data.train.images.to(device)
    # The main phase's teacher features of each clean image, computed once (off where inexact).
    teacher_cache = build_teacher_cache(trial, method, numerics, train_images)
    batches = build_batches(trial, train_images, numerics, trial.synthesis, 0, rank, world_size,
                            with_index=teacher_cache is not None)
    # A phase with anomalies of its own (DMDD's MSN) iterates its own batches.
    phase_batches = {name: build_batches(trial, train_images, numerics, replace(trial.synthesis, **changes), stream,
                                         rank, world_size)
                     for stream, (name, changes) in enumerate(trial.method_config.phase_synthesis().items(), start=1)}
    validation = make_validation_set(data.val_normal.images, device)

    start_epoch = 0
    records: list[dict[str, Any]] = []
    restarts = 0
    teacher_fingerprint = method.frozen_fingerprint()
    if initial_state is not None:
        _refuse_other_precision(initial_state, numerics)
        for phase in phases:
            phase.optimizer.load_state_dict(initial_state["optimizers"][phase.name])
            if phase.scheduler is not None:
                phase.scheduler.load_state_dict(initial_state["schedulers"][phase.name])
        # Each rank draws from streams of its own (its shard, its anomalies): it goes on
        # from its own, which every rank's checkpoint holds (rank 0's for a single process).
        streams = _own_streams(initial_state, rank, world_size)
        batches.load_state_dict(streams["batches"])
        for name, own in phase_batches.items():
            own.load_state_dict(streams["phase_batches"][name])
        start_epoch = int(initial_state["epoch"]) + 1
        records = list(initial_state.get("epoch_records", []))
        restore_rng_state(streams.get("rng", {}), device)
        restarts = int(initial_state.get("restarts", 0)) + 1
    runners = [PhaseRunner(phase, numerics, world_size, train_cfg.compile,
                           teacher_cache if phase.name == "main" else None) for phase in phases]

    def streams() -> dict[str, Any]:
        return {"rng": rng_state(device), "batches": batches.state_dict(),
                "phase_batches": {name: own.state_dict() for name, own in phase_batches.items()}}

    rank_streams: list[dict[str, Any]] = []

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "model": method.trained_state_dict(), "frozen_fingerprint": teacher_fingerprint,
            "optimizers": {phase.name: phase.optimizer.state_dict() for phase in phases},
            "schedulers": {phase.name: phase.scheduler.state_dict() for phase in phases if phase.scheduler is not None},
            **streams(), "restarts": restarts, "epoch": epoch, "epoch_records": records,
            "precision": numerics.precision, "rank_streams": rank_streams,
            **config_state(trial),
        }

    outcome = TrialOutcome(status=Status.OK, device=str(device), precision=numerics.precision,
                           memory_format=numerics.memory_format, device_model=numerics.device_model(),
                           torch_version=torch.__version__, restarts=restarts, epochs=start_epoch,
                           train_seconds=0.0, eval_seconds=0.0, train_images_per_second=0.0, peak_memory_mb=0.0)
    train_seconds = sum(r["seconds"] for r in records)
    images_seen = sum(r["images"] for r in records)
    prefetch = prefetch_depth(train_cfg, device)
    try:
        for epoch in range(start_epoch, train_cfg.epochs):
            started = time.perf_counter()
            logged: dict[str, float] = {}
            epoch_images = 0
            for runner in runners:
                label = f"epoch {epoch + 1}/{train_cfg.epochs}" + ("" if runner.phase.name == "main"
                                                                   else f" {runner.phase.name}")
                losses, steps, images = _run_phase(method, runner, phase_batches.get(runner.phase.name, batches),
                                                   prefetch, label, progress and rank == 0)
                logged.update({k: v / max(steps, 1) for k, v in losses.items()})
                if runner.phase.name == "main":
                    epoch_images = images
                if runner.phase.scheduler is not None:
                    runner.phase.scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            images_seen += epoch_images
            validate = validation is not None and ((epoch + 1) % train_cfg.val_every == 0
                                                   or epoch + 1 == train_cfg.epochs)
            val = {} if not validate else _isolated_evaluation(
                method, validation.images, validation.masks, validation.labels, train_cfg.eval_batch_size, numerics,
                train_cfg.seed)
            record = {"epoch": epoch + 1, "seconds": seconds, "images": epoch_images, **logged,
                      **{f"val_{k}": v for k, v in val.items()}}
            records.append(record)
            outcome.epochs = epoch + 1
            if world_size > 1:
                # Every rank's streams, gathered on every rank each epoch: whichever rank
                # writes the checkpoint, a restart gives each rank back its own.
                rank_streams = [None] * world_size
                dist.all_gather_object(rank_streams, streams())
            if on_epoch is not None:
                on_epoch(record, lambda e=epoch: checkpoint_state(e))
    except TrialDiverged as exc:
        outcome.status, outcome.error = Status.DIVERGED, str(exc)

    outcome.epoch_records = records
    outcome.train_seconds = train_seconds
    outcome.train_images_per_second = images_seen / train_seconds if train_seconds > 0 else 0.0
    if outcome.status == Status.OK:
        started = time.perf_counter()
        test = data.test
        outcome.metrics = _isolated_evaluation(method, test.images, test.masks, test.labels,
                                               train_cfg.eval_batch_size, numerics, train_cfg.seed)
        for name, variant in (scoring_variants or {}).items():
            outcome.variant_metrics[name] = _isolated_evaluation(method, test.images, test.masks, test.labels,
                                                                 train_cfg.eval_batch_size, numerics, train_cfg.seed,
                                                                 scoring=variant)
        outcome.eval_seconds = time.perf_counter() - started
    outcome.peak_memory_mb = _peak_memory_mb(device)
    return outcome


def _own_streams(state: Mapping[str, Any], rank: int, world_size: int) -> Mapping[str, Any]:
    """This rank's random streams and batch order from a checkpoint."""
    per_rank = state.get("rank_streams") or []
    if world_size > 1 and len(per_rank) == world_size:
        return per_rank[rank]
    return state


def _refuse_other_precision(state: Mapping[str, Any], numerics: Numerics) -> None:
    """A checkpoint goes on only in the precision it was trained in: ``auto`` resolves by
    the hardware, so the same settings can mean bf16 on one machine and fp32 on another."""
    stored = state.get("precision")
    if stored is not None and stored != numerics.precision:
        raise UserError(f"the checkpoint was trained in {stored} and this run computes in {numerics.precision} "
                        f"(precision=auto follows the hardware); pass --set precision={stored} to go on with it, "
                        f"or start a new run in another folder")


def config_state(trial: Trial) -> dict[str, Any]:
    """The trial's configs as its checkpoints store them (a resume compares them)."""
    return {"train_config": asdict(trial.train), "method_config": to_dict(trial.method_config),
            "synthesis_config": to_dict(trial.synthesis) if trial.synthesis is not None else None}


def load_trial_data(train_cfg: TrainConfig) -> data_lib.CategoryData:
    """The splits of the trial's category, as its training reads them."""
    return data_lib.load_category(
        train_cfg.dataset, train_cfg.category, train_cfg.image_size, train_cfg.data_root,
        val_fraction=train_cfg.val_fraction, split_seed=train_cfg.split_seed,
        cache_dir=train_cfg.cache_dir, max_train_images=train_cfg.max_train_images,
        preprocessing=train_cfg.preprocessing,
    )


def score_kept_model(trial: Trial, state: Mapping[str, Any]) -> dict[str, float]:
    """Test metrics of ``trial``'s scoring on weights another row's training kept
    (``--keep-models``): the same evaluation, on the same random stream, as a training's own.
    The module is built from ``trial``'s config, which trains as the kept weights' training
    did, so its own scoring settings are ``trial``'s: nothing is swapped or passed."""
    train_cfg = trial.train
    numerics = build_numerics(train_cfg)
    method = build_method(trial, numerics, state)
    test = load_trial_data(train_cfg).test
    return _isolated_evaluation(method, test.images, test.masks, test.labels, train_cfg.eval_batch_size, numerics,
                                train_cfg.seed)

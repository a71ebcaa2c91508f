"""Fit and evaluate one trial in one process: ``python -m kdsearch.train``.

The loop knows nothing about Ray: :mod:`kdsearch.distributed` runs the same
:func:`fit_and_evaluate` inside Ray Train workers, passing an ``on_epoch`` callback that
reports and checkpoints. Under an initialised ``torch.distributed`` process group the
loop wraps the method in DDP and every rank trains on its shard of each epoch.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from kdsearch import data as data_lib
from kdsearch.batches import TrainBatches, make_validation_set, prefetched
from kdsearch.config import apply_overrides, field_names, parse_assignments, to_dict
from kdsearch.diskspace import CheckpointDiskFull, is_disk_full, state_bytes
from kdsearch.errors import UserError, run_cli
from kdsearch.evaluate import evaluate
from kdsearch.methods import build_config, check_explicit_settings, create_method, get_method_class, list_methods
from kdsearch.numerics import MEMORY_FORMATS, PRECISIONS, resolve_numerics
from kdsearch.synthesis import AnomalySynthesizer
from kdsearch.trial import VAL_METRIC, Status
from kdsearch.spaces import PROFILES, space_for_method, split_settings



#: Marks a training field that changes what a trial computes, and so its key.
_KEY = {"key": True}


@dataclass
class TrainConfig:
    """Everything about a trial that is not the method: data, budget, device.

    A profile sets these (and method fields); ``--set``/search axes override them.
    Fields marked ``key`` change what a trial computes and enter its key; the others (data
    location, device, speed switches) do not: the same trial on another machine or in
    another folder is the same trial. Method, dataset, category and seed enter the key
    on their own.
    """

    method: str = "rd4ad"
    dataset: str = "synthetic"
    data_root: str | None = None
    category: str | None = None
    image_size: int = field(default=128, metadata=_KEY)
    epochs: int = field(default=8, metadata=_KEY)
    batch_size: int = field(default=16, metadata=_KEY)
    eval_batch_size: int = field(default=32, metadata=_KEY)
    seed: int = 0
    device: str = "auto"
    max_train_images: int | None = field(default=None, metadata=_KEY)
    val_fraction: float = field(default=0.1, metadata=_KEY)
    split_seed: int = field(default=0, metadata=_KEY)
    compile: bool = False
    prefetch: int | None = None
    precision: str = "auto"
    memory_format: str = "auto"
    cache_dir: str | None = None

    @classmethod
    def key_fields(cls) -> tuple[str, ...]:
        """The fields marked ``key``."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("key"))

    def validate(self) -> None:
        if self.dataset not in data_lib.DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(data_lib.DATASETS)}")
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise UserError(f"batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
        if self.prefetch is not None and self.prefetch < 0:
            raise UserError(f"prefetch must be >= 0 (batches made ahead; 0 = none; unset = 2 on CUDA, 0 on a "
                            f"CPU), got {self.prefetch}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.memory_format not in MEMORY_FORMATS:
            raise UserError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1) (0: train on every image, no validation), "
                            f"got {self.val_fraction}")


@dataclass
class TrialOutcome:
    """What one trial produced: test metrics, timings and status."""

    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_completed: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_images_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    device: str = ""
    error: str | None = None
    restarts: int = 0
    epoch_records: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Flat JSON-friendly dict (what ``--json`` prints)."""
        out = {"status": self.status, **self.metrics, "epochs": self.epochs_completed,
               "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
               "train_images_per_second": self.train_images_per_second,
               "peak_memory_mb": self.peak_memory_mb, "device": self.device, "error": self.error,
               "restarts": self.restarts}
        return out


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite."""


EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` → the local CUDA device when there is one (the rank's, under DDP), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        # An indexed device: torch.cuda.set_device and peak-memory stats refuse a bare "cuda".
        if dist.is_available() and dist.is_initialized():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return torch.device(name)


def _uses_textures(method: str) -> bool:
    return "texture_root" in field_names(get_method_class(method).config_class)


def textures_setting(method: str, path: str | None) -> dict[str, Any]:
    """``--textures PATH`` as a method setting, checked: ``{"texture_root": absolute path}``."""
    if path is None:
        return {}
    if not _uses_textures(method):
        users = ", ".join(m for m in list_methods() if _uses_textures(m))
        raise UserError(f"--textures: {method} makes no DRAEM anomalies, so it reads no textures; "
                        f"it applies to {users}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"--textures {path}: no such folder; give the DTD images folder (dtd/images)")
    return {"texture_root": str(folder.resolve())}


def textures_warning(method: str, profile: str | None, method_overrides: Mapping[str, Any]) -> str | None:
    """The warning for a paper-budget run of a DRAEM method on the built-in textures, else None."""
    if profile != "paper" or not _uses_textures(method) or method_overrides.get("texture_root"):
        return None
    return (f"{method} synthesises DRAEM anomalies from the built-in procedural textures, while the paper "
            f"uses DTD: these numbers are not comparable with the paper's; pass --textures PATH (DTD's "
            f"images folder) to reproduce it")


def resolve_trial(method: str, profile: str | None, overrides: Mapping[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """Merge method defaults, the profile and ``overrides`` into (train config, method overrides).

    Later sources win: the search space's ``defaults``, then the profile, then ``overrides``.
    """
    config_class = get_method_class(method).config_class
    train_fields = [f for f in field_names(TrainConfig) if f != "method"]
    space = space_for_method(method)
    settings: dict[str, Any] = {}
    if space is not None:
        settings.update(space.defaults)
        if profile is not None:
            settings.update(space.profile(profile, overrides.get("dataset")))
    elif profile is not None:
        raise UserError(f"method {method!r} has no search-space file with profiles; omit --profile")
    settings.update(overrides)
    train_settings, method_settings, _ = split_settings(settings, train_fields, field_names(config_class))
    train_cfg = apply_overrides(TrainConfig(method=method), train_settings, what="training")
    train_cfg.validate()
    # Names, types and values are checked now, before any data is loaded.
    build_config(method, method_settings).validate(train_cfg.image_size)
    return train_cfg, method_settings


def prefetch_depth(train_cfg: TrainConfig, device: torch.device) -> int:
    """Batches made ahead by a background thread: as set, else 2 on CUDA (the CPU idles while
    the GPU computes) and none on a CPU (the thread would take cores from the step itself:
    on 2 cores it cost 20-35 % of RD4AD's bf16 step)."""
    if train_cfg.prefetch is not None:
        return train_cfg.prefetch
    return 2 if device.type == "cuda" else 0


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global random state a run draws from, as tensors and plain types (checkpoint-safe)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_state` saved, so a resumed run draws what an unbroken one would."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                             saved["has_gauss"], saved["cached"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically (temp file + rename); a full disk raises :class:`CheckpointDiskFull`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-", suffix=".tmp")
    os.close(fd)
    try:
        # Through a Python file, so a full disk raises OSError(ENOSPC), not torch's bare RuntimeError.
        with open(tmp, "wb") as file:
            torch.save(state, file)
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise CheckpointDiskFull(str(path.parent), state_bytes(state)) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Checkpoints hold tensors and plain types only, so they load with
    ``weights_only=True``: a file that would run code when unpickled is refused, never run.
    """
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; run without --resume to start fresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} is not a kdsearch checkpoint: it is not a file of tensors and plain types, so "
                        f"it was not loaded (loading it could run code); delete it and run without --resume") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); delete it and "
                        f"run without --resume") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(f"{path} is not a kdsearch checkpoint (no model state and epoch); delete it and run "
                        f"without --resume")
    return state


def fit_and_evaluate(
    train_cfg: TrainConfig,
    method_overrides: Mapping[str, Any] | None = None,
    *,
    initial_state: dict[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> TrialOutcome:
    """Train one method on one category for ``train_cfg.epochs`` and evaluate on ``test`` once.

    Args:
        train_cfg: data, budget and device.
        method_overrides: method config fields (the rest keep the paper's defaults).
        initial_state: a checkpoint dict to resume from.
        on_epoch: called after every epoch with the epoch record and a function that builds
            the full checkpoint state (call it only where the state is saved).
        progress: show a progress bar per epoch.

    Returns:
        The outcome; a NaN/inf loss gives ``status="diverged"`` with the epochs done so far.
    """
    train_cfg.validate()
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world_size > 1 else 0
    device = resolve_device(train_cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    numerics = resolve_numerics(device, train_cfg.precision, train_cfg.memory_format)

    category = train_cfg.category or data_lib.list_categories(train_cfg.dataset, train_cfg.data_root)[0]
    data = data_lib.load_category(
        train_cfg.dataset, category, train_cfg.image_size, train_cfg.data_root,
        val_fraction=train_cfg.val_fraction, split_seed=train_cfg.split_seed,
        cache_dir=train_cfg.cache_dir, max_train_images=train_cfg.max_train_images,
    )

    torch.manual_seed(train_cfg.seed)
    method = create_method(train_cfg.method, train_cfg.image_size, method_overrides).to(device)
    if numerics.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer, scheduler = method.configure_optimizer(train_cfg.epochs)

    train_images = data.train.images.to(device)
    spec = method.synthesis()
    if spec is not None:
        spec = spec.for_category(data_lib.category_kind(train_cfg.dataset, category))
    anomalies = AnomalySynthesizer(spec) if spec is not None else None
    batches = TrainBatches(train_images, train_cfg.batch_size, train_cfg.seed, anomalies, rank, world_size,
                           numerics.channels_last)
    validation = make_validation_set(data.val_normal.images, device)

    start_epoch = 0
    records: list[dict[str, Any]] = []
    restarts = 0
    teacher_fingerprint = method.frozen_fingerprint()
    if initial_state is not None:
        method.load_trained_state_dict(initial_state["model"], initial_state.get("frozen_fingerprint"))
        optimizer.load_state_dict(initial_state["optimizer"])
        if scheduler is not None and initial_state.get("scheduler") is not None:
            scheduler.load_state_dict(initial_state["scheduler"])
        batches.load_state_dict(initial_state["batches"])
        method.load_extra_state(initial_state.get("extra", {}))
        start_epoch = int(initial_state["epoch"]) + 1
        records = list(initial_state.get("epoch_records", []))
        restore_rng_state(initial_state.get("rng", {}), device)
        restarts = int(initial_state.get("restarts", 0)) + 1

    step_module: torch.nn.Module = method
    if world_size > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        step_module = torch.nn.parallel.DistributedDataParallel(
            method, find_unused_parameters=method.has_unused_parameters, **ddp_kwargs)
    if train_cfg.compile:
        step_module = torch.compile(step_module)

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "model": method.trained_state_dict(), "frozen_fingerprint": teacher_fingerprint,
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(device), "restarts": restarts,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "batches": batches.state_dict(), "extra": method.extra_state_for_checkpoint(),
            "epoch": epoch, "epoch_records": records,
            "train_config": dataclasses.asdict(train_cfg),
            "method_config": to_dict(method.config),
        }

    outcome = TrialOutcome(status="ok", device=str(device), restarts=restarts)
    train_seconds = sum(r["seconds"] for r in records)
    images_seen = sum(r["images"] for r in records)
    try:
        for epoch in range(start_epoch, train_cfg.epochs):
            method.train()
            started = time.perf_counter()
            losses: dict[str, float] = {}
            steps = epoch_images = 0
            bar = tqdm(prefetched(batches, prefetch_depth(train_cfg, device)), total=len(batches),
                       desc=f"epoch {epoch + 1}/{train_cfg.epochs}", leave=False,
                       disable=not progress or rank != 0, unit="batch", file=sys.stderr)
            for batch in bar:
                with numerics.autocast():
                    step = step_module(batch)
                loss = step["loss"]
                finite = torch.isfinite(loss.detach()).all().float()
                if world_size > 1:
                    # Every rank must stop together, or the others would wait forever in backward.
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if finite.item() < 1:
                    raise TrialDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {steps + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for key, value in step.items():
                    losses[key] = losses.get(key, 0.0) + float(value.detach())
                steps += 1
                epoch_images += len(batch["image"]) * world_size
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            extra = method.on_epoch_end(epoch, lambda: iter(batches))
            if scheduler is not None:
                scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            images_seen += epoch_images
            val = {} if validation is None else evaluate(
                method, validation.images, validation.masks, validation.labels, train_cfg.eval_batch_size, numerics)
            record = {"epoch": epoch + 1, "seconds": seconds, "images": epoch_images,
                      **{k: v / max(steps, 1) for k, v in losses.items()},
                      **{f"val_{k}": v for k, v in val.items()}, **extra}
            records.append(record)
            outcome.epochs_completed = epoch + 1
            if on_epoch is not None:
                on_epoch(record, lambda e=epoch: checkpoint_state(e))
    except TrialDiverged as exc:
        outcome.status, outcome.error = "diverged", str(exc)

    outcome.epoch_records = records
    outcome.train_seconds = train_seconds
    outcome.train_images_per_second = images_seen / train_seconds if train_seconds > 0 else 0.0
    if outcome.status == "ok":
        started = time.perf_counter()
        test = data.test
        outcome.metrics = evaluate(method, test.images, test.masks, test.labels, train_cfg.eval_batch_size, numerics)
        outcome.eval_seconds = time.perf_counter() - started
    outcome.peak_memory_mb = _peak_memory_mb(device)
    return outcome


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kdsearch.train",
        description="Train one anomaly-detection method on one category, evaluate it on the test split "
                    "once and print image AUROC, pixel AUROC, AU-PRO (both protocols) and pixel AP.",
        epilog="Example: python -m kdsearch.train --method rd4ad --profile quick --json",
    )
    parser.add_argument("--method", default="rd4ad", help=f"one of: {', '.join(list_methods())} (default rd4ad)")
    parser.add_argument("--dataset", choices=data_lib.DATASETS, help="dataset (default: the profile's; synthetic is built in)")
    parser.add_argument("--data-root", help="root folder of a real dataset in its published layout")
    parser.add_argument("--category", help="category to train on (default: the dataset's first)")
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="training budget (default quick)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a method or training field, e.g. --set lr=0.001 (repeatable)")
    parser.add_argument("--epochs", type=int, help="training epochs (overrides the profile)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default auto)")
    parser.add_argument("--pretrained", help="teacher weights: auto (ImageNet via timm), none (random init) or a file path")
    parser.add_argument("--textures", metavar="PATH",
                        help="DTD-style texture folder (e.g. dtd/images) for DRAEM anomalies (adps, dmdd); default: "
                             "the built-in procedural bank")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step")
    parser.add_argument("--out", type=Path, help="folder for checkpoint.pt (every epoch) and metrics.json")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on the last stdout line")
    return parser


def _cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_assignments(args.assignments)
    for key in ("dataset", "data_root", "category", "epochs", "seed", "device", "pretrained"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.compile:
        overrides["compile"] = True
    overrides.update(textures_setting(args.method, args.textures))
    return overrides


def _print_report(train_cfg: TrainConfig, outcome: TrialOutcome) -> None:
    names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "au_pro": "AU-PRO (MVTec AD)",
             "au_pro_rd4ad": "AU-PRO (RD4AD code)", "pixel_ap": "pixel AP"}
    print(f"{train_cfg.method} on {train_cfg.dataset}/{train_cfg.category} · {outcome.epochs_completed} epochs · "
          f"{outcome.device} · status {outcome.status}")
    for key, label in names.items():
        value = outcome.metrics.get(key)
        print(f"  {label:<22} {'—' if value is None or math.isnan(value) else f'{100 * value:6.2f} %'}")
    print(f"  {'train':<22} {outcome.train_seconds:6.1f} s ({outcome.train_images_per_second:.1f} images/s)")
    print(f"  {'evaluate':<22} {outcome.eval_seconds:6.1f} s · peak memory {outcome.peak_memory_mb:.0f} MB")
    if outcome.error:
        print(f"  error: {outcome.error}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and args.out is None:
        raise UserError("--resume needs --out DIR (the folder holding checkpoint.pt)")
    overrides = _cli_overrides(args)
    train_cfg, method_overrides = resolve_trial(args.method, args.profile, overrides)
    check_explicit_settings(args.method, [("--set", method_overrides, set(overrides))])
    warning = textures_warning(args.method, args.profile, method_overrides)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if train_cfg.category is None:
        train_cfg.category = data_lib.list_categories(train_cfg.dataset, train_cfg.data_root)[0]
    checkpoint_path = args.out / "checkpoint.pt" if args.out else None
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create output folder {args.out}: {exc.strerror}; choose a writable --out") from exc
    initial_state = load_checkpoint(checkpoint_path) if args.resume else None

    def on_epoch(record: dict[str, Any], state: Callable[[], dict[str, Any]]) -> None:
        if checkpoint_path is not None:
            save_checkpoint(state(), checkpoint_path)
        val = f"  {VAL_METRIC} {record[VAL_METRIC]:.4f}" if VAL_METRIC in record else ""
        print(f"epoch {record['epoch']:>3}: loss {record['loss']:.4f}{val}  {record['seconds']:.1f} s", file=sys.stderr)

    outcome = fit_and_evaluate(train_cfg, method_overrides, initial_state=initial_state, on_epoch=on_epoch,
                               progress=sys.stderr.isatty())
    summary = {"method": train_cfg.method, "dataset": train_cfg.dataset, "category": train_cfg.category,
               "profile": args.profile, **outcome.summary()}
    if args.out is not None:
        (args.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary))
    else:
        _print_report(train_cfg, outcome)
    return 0 if outcome.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""What a trial computes with: its device and numerics, its method and its training batches.

The training loop, the benchmark, the rescoring of kept weights and W&B's anomaly-map
images all build these here, so a method is always the one its training built: created
right after seeding torch with the trial's seed (its random initialisation, and a frozen
teacher without pretrained weights, come from that seed), on its device and in its memory
format, then loaded with trained weights. No Ray and no files: the caller brings images
and checkpoint states.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from kdsearch.batches import TrainBatches
from kdsearch.errors import UserError
from kdsearch.methods import AnomalyMethod, create_method
from kdsearch.numerics import Numerics, resolve_numerics
from kdsearch.synthesis import AnomalySynthesizer, SynthesisConfig
from kdsearch.trial import TrainConfig, Trial

__all__ = ["resolve_device", "prefetch_depth", "build_numerics", "build_method", "build_batches"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → the local CUDA device when there is one (the rank's, under DDP), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        import socket

        raise UserError(f"device={name} was asked for but {socket.gethostname()}, where this trial runs, has no CUDA "
                        f"device; use device cpu or auto, or run it where a GPU is (a sweep: --gpus-per-trial 1)")
    if name == "cuda":
        # An indexed device: torch.cuda.set_device and peak-memory stats refuse a bare "cuda".
        if dist.is_available() and dist.is_initialized():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return torch.device(name)


def prefetch_depth(train_cfg: TrainConfig, device: torch.device) -> int:
    """Batches made ahead by a background thread: as set, else 2 on CUDA (the CPU idles while
    the GPU computes) and none on a CPU (the thread would take cores from the step itself:
    on 2 cores it cost 20-35 % of RD4AD's bf16 step)."""
    if train_cfg.prefetch is not None:
        return train_cfg.prefetch
    return 2 if device.type == "cuda" else 0


def build_numerics(train_cfg: TrainConfig, device: torch.device | None = None) -> Numerics:
    """The trial's device (``device`` when given, else its ``device`` setting) with its
    ``precision`` and ``memory_format`` resolved there."""
    if device is None:
        device = resolve_device(train_cfg.device)
    return resolve_numerics(device, train_cfg.precision, train_cfg.memory_format)


def build_method(trial: Trial, numerics: Numerics, state: Mapping[str, Any] | None = None) -> AnomalyMethod:
    """``trial``'s method on ``numerics``' device and in its memory format, with the trained
    weights of a checkpoint ``state`` when given.

    Seeding comes first, so the same trial always draws the same initial weights; the
    weights load once the method is on its device, where the frozen teacher's fingerprint
    is checked against the one its training computed on that device.
    """
    torch.manual_seed(trial.train.seed)
    method = create_method(trial.train.method, trial.train.image_size, trial.method_config).to(numerics.device)
    if numerics.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if state is not None:
        method.load_trained_state_dict(state["model"], state.get("frozen_fingerprint"))
    return method


def build_batches(trial: Trial, images: torch.Tensor, numerics: Numerics, synthesis: SynthesisConfig | None,
                  stream: int = 0, rank: int = 0, world_size: int = 1, with_index: bool = False) -> TrainBatches:
    """Seeded training batches of ``images`` (uint8, on the device) for ``trial``, with
    ``synthesis``' anomalies as they apply to the trial's category when given.

    ``stream`` > 0 is a phase's own (DMDD's MSN): its order and draws are independent of
    the main phase's; ``rank`` of ``world_size`` keeps that rank's shard of every epoch;
    ``with_index`` gives each batch its images' positions (the teacher cache's lookup).
    """
    train_cfg = trial.train
    anomalies = None
    if synthesis is not None:
        anomalies = AnomalySynthesizer(synthesis.for_category(trial.category_kind))
    return TrainBatches(images, train_cfg.batch_size, train_cfg.seed, anomalies, rank, world_size,
                        numerics.channels_last, stream=stream, with_index=with_index)

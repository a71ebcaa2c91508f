"""What a sweep costs before it runs: trainings, training images and device-hours.

A trial's training cost is its epochs × its training images; dividing by the method's
training throughput on the device gives its time. Throughput comes from
``python -m kdsearch.bench --save`` on this machine (saved per device name), else from a
table of figures measured on named devices. Evaluation, start-up and data decoding are
not counted, so the estimate is a lower bound on wall time.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdsearch.plan import Job, TrialSpec

_H200 = "NVIDIA H200 (bf16, channels-last; measured 2026-11-26)"
_XEON_FP32 = "2-core Intel Xeon CPU (fp32; measured 2026-11-26)"
_XEON_BF16 = "2-core Intel Xeon CPU with AMX (bf16, channels-last; measured 2026-11-26)"
_EPYC_AVX2 = "2-core AMD EPYC CPU with AVX2, no AVX-512 (fp32, channels-last; measured 2026-12-04)"

#: Pipeline images/s of ``python -m kdsearch.bench`` (median of 3 repeats) on named devices.
REFERENCE_THROUGHPUT: dict[str, dict[str, dict[str, float]]] = {
    _H200: {
        # MRKD with batches made ahead (prefetch), measured on a second H200 run; 83 without.
        "paper": {"adps": 564.0, "dmdd": 293.0, "dskd": 786.0, "mrkd": 124.0, "rd4ad": 669.0},
        "quick": {"adps": 390.0, "dmdd": 629.0, "dskd": 927.0, "mrkd": 218.0, "rd4ad": 1694.0},
    },
    _XEON_FP32: {"quick": {"adps": 22.1, "dmdd": 14.2, "dskd": 21.3, "mrkd": 21.8, "rd4ad": 36.6}},
    _XEON_BF16: {"quick": {"adps": 36.6, "dmdd": 21.6, "dskd": 39.9, "mrkd": 33.0, "rd4ad": 43.7}},
    _EPYC_AVX2: {"quick": {"adps": 11.1, "dmdd": 8.9, "dskd": 13.5, "mrkd": 15.4, "rd4ad": 22.8}},
}
#: The reference device for each kind of training device: a CUDA GPU, a CPU training in
#: fp32, a CPU training in bf16 (one with AMX or AVX512-BF16 units, where ``auto`` picks it),
#: an x86 CPU with AVX2 but no AVX-512 (the measured EPYC trains ADPS at half the fp32
#: Xeon's rate, so one reference for both would halve such a CPU's estimate).
_REFERENCE_FOR = {"cuda": _H200, "cpu": _XEON_FP32, "cpu-bf16": _XEON_BF16, "cpu-avx2": _EPYC_AVX2}


@dataclass(frozen=True)
class Throughput:
    """Training images per second of one method and profile, and where the figure comes from."""

    images_per_second: float
    source: str


def saved_throughput_path() -> Path:
    """Where ``bench --save`` keeps this machine's figures (inside the kdsearch cache)."""
    from kdsearch.data import default_cache_dir

    return default_cache_dir() / "throughput.json"


def save_throughput(rows: Iterable[Mapping[str, Any]], path: Path | None = None) -> Path:
    """Merge bench rows (``device``, ``profile``, ``method``, ``pipeline_images_per_s``) into the saved table."""
    path = path or saved_throughput_path()
    table = _read(path)
    stamp = time.strftime("%Y-%m-%d")
    for row in rows:
        entry = table.setdefault(str(row["device"]), {}).setdefault(str(row["profile"]), {})
        entry[str(row["method"])] = {"images_per_second": float(row["pipeline_images_per_s"]), "date": stamp}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".throughput-", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(table, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def throughput(method: str, profile: str, device_kind: str, device_name: str,
               path: Path | None = None) -> Throughput | None:
    """This machine's saved figure for the device, else the reference device's, else None.

    ``device_kind`` is ``cuda``, ``cpu``, ``cpu-bf16`` (a CPU training under bf16 autocast) or
    ``cpu-avx2`` (an x86 CPU with AVX2 and no AVX-512, training in fp32): :func:`cpu_kind`.
    """
    saved = _read(path or saved_throughput_path()).get(device_name, {}).get(profile, {}).get(method)
    if isinstance(saved, Mapping) and saved.get("images_per_second"):
        return Throughput(float(saved["images_per_second"]),
                          f"bench --save on {device_name}, {saved.get('date', 'undated')}")
    reference = _REFERENCE_FOR.get(device_kind)
    figure = REFERENCE_THROUGHPUT.get(reference, {}).get(profile, {}).get(method) if reference else None
    if figure:
        return Throughput(figure, f"reference: {reference}")
    return None


@dataclass(frozen=True)
class Estimate:
    """The cost of a set of trials on one device."""

    trainings: int
    images: int | None  # None when some trial's training set size is unknown
    hours: float | None
    source: str
    basis: str = ""  # where the throughput comes from, without the figure

    def short(self) -> str:
        """``20 trainings, 11,520 images, 0.14 h``."""
        images = "? images" if self.images is None else f"{self.images:,} images"
        hours = "? h" if self.hours is None else f"{self.hours:.2f} h" if self.hours < 10 else f"{self.hours:,.0f} h"
        return f"{self.trainings} trainings, {images}, {hours}"

    def text(self) -> str:
        images = "?" if self.images is None else f"{self.images:,}"
        hours = "?" if self.hours is None else (f"{self.hours:.2f}" if self.hours < 10 else f"{self.hours:,.0f}")
        return (f"{self.trainings} training(s), {images} training images processed, about {hours} device-hours "
                f"of training ({self.source}; evaluation and start-up not included)")


def estimate(method: str, profile: str, trials: Iterable[tuple[int, int | None]], device_kind: str,
             device_name: str) -> Estimate:
    """Cost of trials given as (epochs, training images per epoch or None)."""
    trials = list(trials)
    sizes = [epochs * images if images is not None else None for epochs, images in trials]
    total = None if any(s is None for s in sizes) else int(sum(sizes))
    speed = throughput(method, profile, device_kind, device_name)
    if speed is None:
        return Estimate(len(trials), total, None, f"no throughput known for {method}/{profile} on {device_name}; "
                                                   f"run python -m kdsearch.bench --profile {profile} --save")
    hours = None if total is None else total / speed.images_per_second / 3600.0
    return Estimate(len(trials), total, hours, f"{speed.images_per_second:,.1f} images/s, {speed.source}", speed.source)


def _trial_cost(spec: TrialSpec) -> tuple[int, int | None]:
    from kdsearch import data as data_lib

    cfg = spec.trial.train
    images = data_lib.train_image_count(spec.dataset, spec.category, cfg.data_root, val_fraction=cfg.val_fraction,
                                        max_train_images=cfg.max_train_images)
    return cfg.epochs, images


def cpu_kind(bf16: bool, flags: frozenset[str]) -> str:
    """Which reference a CPU's training is costed from: its numerics, then its vector units.

    bf16 on AMX trains ADPS about 1.7x faster than fp32 on the same Xeon; fp32 with AVX2 and
    no AVX-512 about 2x slower.
    """
    if bf16:
        return "cpu-bf16"
    return "cpu-avx2" if "avx2" in flags and "avx512f" not in flags else "cpu"


def job_cost(job: Job, device_kind: str | None = None, device_name: str | None = None) -> Estimate:
    """The job's pending trainings, training images and device-hours (:class:`kdsearch.cost.Estimate`).

    A search counts every trial it may run (ASHA stops some early, so this is an upper bound).
    """
    import torch

    from kdsearch.search_axis import probe_value
    from kdsearch.numerics import cpu_flags, resolve_numerics
    from kdsearch.numerics import device_name as name_of

    if device_kind is None:
        device_kind = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name is None:
        device_name = name_of(torch.device(device_kind, 0) if device_kind == "cuda" else torch.device("cpu"))
    if job.is_grid:
        specs = job.trials
    else:
        probe = probe_value(job.axis)
        specs = [s.trial(job.space, job.axis, probe) for s in job.studies for _ in range(s.n_trials)]
    if device_kind == "cpu" and specs:
        train = specs[0].trial.train
        bf16 = resolve_numerics(torch.device("cpu"), train.precision, train.memory_format).autocast_dtype is not None
        device_kind = cpu_kind(bf16, cpu_flags())
    return estimate(job.space.method, job.profile, [_trial_cost(t) for t in specs], device_kind, device_name)


#: Share of a training step's FLOPs (the main phase's forward and backward) that is the frozen
#: teacher's forward pass on the clean image, which the teacher cache serves after the first
#: epoch (:mod:`kdsearch.teacher_cache`). Counted with ``torch.utils.flop_counter`` at batch 2,
#: not timed: a step's time also holds synthesis, memory traffic and the optimiser.
TEACHER_CLEAN_SHARE: dict[str, dict[str, float]] = {
    "paper": {"rd4ad": 0.185, "dskd": 0.125, "mrkd": 0.100, "dmdd": 0.083},
    "quick": {"rd4ad": 0.200, "dskd": 0.125, "mrkd": 0.134, "dmdd": 0.105},
}


def teacher_cache_factor(specs: Iterable[TrialSpec], profile: str) -> float:
    """The share of the trainings' device time left with the teacher cache: each trial that
    caches (:func:`kdsearch.teacher_cache.teacher_cache_wanted`) saves its method's
    :data:`TEACHER_CLEAN_SHARE` on every epoch but the first, weighted by its epochs."""
    from kdsearch.teacher_cache import teacher_cache_wanted

    weights = saved = 0.0
    for spec in specs:
        trial = spec.trial
        epochs = trial.train.epochs
        weights += epochs
        if teacher_cache_wanted(trial):
            saved += TEACHER_CLEAN_SHARE.get(profile, {}).get(trial.method_name, 0.0) * (epochs - 1)
    return 1.0 - saved / weights if weights else 1.0

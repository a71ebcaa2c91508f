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
_XEON_FP32 = "2-core Intel Xeon CPU with AVX-512 (fp32; measured 2026-11-26)"
_XEON_BF16 = "2-core Intel Xeon CPU with AMX (bf16, channels-last; measured 2026-11-26)"
_EPYC_AVX2 = "2-core AMD EPYC CPU with AVX2, no AVX-512 (fp32, channels-last; measured 2026-12-04)"
_EPYC_AVX512_BF16 = ("2-core AMD EPYC CPU with AVX512-BF16, no AMX (bf16, channels-last; modelled: the AMX "
                     "Xeon's figures x 1.0)")

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
#: Where no bench has run, a class's figures are a measured class's times a stated factor.
#: AVX512-BF16 without AMX: the main job's trials (ADPS ``quick``, train + test, two at a
#: time) took 17.7-21.1 s on such an EPYC and 17.7-20.6 s on the AMX Xeon, so factor 1.0.
MODELLED_THROUGHPUT: dict[str, tuple[str, float]] = {_EPYC_AVX512_BF16: (_XEON_BF16, 1.0)}
#: The reference device for each class of training device (:func:`cpu_kind` picks a CPU's):
#: a CUDA GPU; a CPU training in bf16 on AMX tiles; in bf16 on AVX512-BF16 without AMX; in
#: fp32 with AVX-512; in fp32 with AVX2 and no AVX-512 (the measured EPYC trains ADPS at
#: half the AVX-512 Xeon's fp32 rate); any other CPU (flags unreadable, another architecture,
#: or bf16 without bf16 units) is costed from the AVX-512 Xeon's fp32 figures.
_REFERENCE_FOR = {"cuda": _H200, "cpu-amx": _XEON_BF16, "cpu-avx512-bf16": _EPYC_AVX512_BF16,
                  "cpu-avx512": _XEON_FP32, "cpu-avx2": _EPYC_AVX2, "cpu": _XEON_FP32}
#: A trial's evaluation and set-up (test split, validation, building the networks), priced as
#: this many training images: ADPS ``quick`` tested in 1.8-2.1 s after 15.6-18.6 s of training
#: on 256 images on the AMX Xeon (bf16), in 3.9-4.3 s after 36-42 s on the AVX2 EPYC (fp32).
TRIAL_OVERHEAD_IMAGES = 30
#: A sweep's start (a local Ray, the first workers' imports), seconds: the main job's first
#: two trials ended about 20 s later than their own times on the 2-core AMX Xeon.
SWEEP_START_SECONDS = 15.0


#: The H200's bare compute: the same networks and step on batches made in advance (no
#: batching, no synthesis), images/s of ``python -m kdsearch.bench``, measured with the
#: pipeline figures above.
REFERENCE_BARE: dict[str, dict[str, dict[str, float]]] = {
    _H200: {"paper": {"adps": 697.0, "dmdd": 369.0, "dskd": 813.0, "mrkd": 596.0, "rd4ad": 687.0}},
}
#: Pipeline figures measured with a synthesis the profile no longer uses, so modelled instead:
#: MRKD ``paper`` was measured with NSA's Poisson blends (OpenCV on the host); its ``paper``
#: runs now swap patches within the image as the authors' code does.
SUPERSEDED: frozenset[tuple[str, str, str]] = frozenset({(_H200, "paper", "mrkd")})
#: What one host core synthesises per second of its CPU time, for each method whose synthesis
#: runs per image on the host during a CUDA training (``python -m kdsearch.bench``,
#: ``synthesis_per_core``: the ``paper`` profile's synthesis at 256², one thread; DRAEM and
#: FAS run on the GPU, DSKD and RD4AD synthesise nothing).
HOST_SYNTHESIS_PER_CORE: dict[str, dict[str, tuple[float, str]]] = {
    "paper": {"mrkd": (270.0, "NSA's swap, MRKD's code, with bottle's settings at 256² on one thread of a "
                              "2-core Intel Xeon with AMX: medians 217-366 in four runs under load, their median "
                              "taken; 2026-12-06")},
}
#: Host cores a GPU trial's synthesis runs on: its batches are made by one producer thread,
#: in which the swap loops over the images (and a Ray trial is given 1 CPU by default; the
#: cluster's GPU nodes have 12 vCPUs per GPU, which a parallel producer could use).
SYNTHESIS_CORES_PER_GPU_TRIAL = 1


def modelled_gpu_throughput(reference: str, profile: str, method: str) -> Throughput | None:
    """A GPU reference's images/s for a method where no measurement of its pipeline holds: the
    slower of the GPU's bare compute and what the trial's host cores synthesise, assuming the
    two overlap fully (synthesis on the producer thread while the GPU computes) and a GPU
    node's cores synthesise as fast as the core that measured them."""
    bare = REFERENCE_BARE.get(reference, {}).get(profile, {}).get(method)
    if bare is None:
        return None
    host = HOST_SYNTHESIS_PER_CORE.get(profile, {}).get(method)
    if host is None:
        return Throughput(bare, f"modelled: {reference}, bare compute (nothing synthesised on the host)")
    per_core, what = host
    synthesis = per_core * SYNTHESIS_CORES_PER_GPU_TRIAL
    return Throughput(min(bare, synthesis),
                      f"modelled: the slower of the GPU's bare compute, {bare:,.0f} images/s (measured: {reference}), "
                      f"and the host's synthesis, {SYNTHESIS_CORES_PER_GPU_TRIAL} core(s) x {per_core:,.0f} images "
                      f"per CPU-second ({what})")


def reference_figure(reference: str, profile: str, method: str) -> float | None:
    """A reference device's images/s for a method and profile: measured, or modelled from a measured device."""
    figure = REFERENCE_THROUGHPUT.get(reference, {}).get(profile, {}).get(method)
    if figure is None and reference in MODELLED_THROUGHPUT:
        source, factor = MODELLED_THROUGHPUT[reference]
        base = REFERENCE_THROUGHPUT.get(source, {}).get(profile, {}).get(method)
        figure = None if base is None else base * factor
    return figure


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

    ``device_kind`` is ``cuda`` or a CPU class of :func:`cpu_kind`.
    """
    saved = _read(path or saved_throughput_path()).get(device_name, {}).get(profile, {}).get(method)
    if isinstance(saved, Mapping) and saved.get("images_per_second"):
        return Throughput(float(saved["images_per_second"]),
                          f"bench --save on {device_name}, {saved.get('date', 'undated')}")
    reference = _REFERENCE_FOR.get(device_kind)
    if reference is not None and (reference, profile, method) in SUPERSEDED:
        return modelled_gpu_throughput(reference, profile, method)
    figure = reference_figure(reference, profile, method) if reference else None
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
    basis: str = ""  # where the throughput comes from, without the figure; "" when none is known
    images_per_second: float | None = None

    def short(self) -> str:
        """``20 trainings, 11,520 images, 0.14 h`` (``hours unknown`` without a throughput)."""
        images = "? images" if self.images is None else f"{self.images:,} images"
        hours = ("hours unknown" if not self.basis else "? h") if self.hours is None else \
            f"{self.hours:.2f} h" if self.hours < 10 else f"{self.hours:,.0f} h"
        return f"{self.trainings} trainings, {images}, {hours}"

    def text(self) -> str:
        images = "?" if self.images is None else f"{self.images:,}"
        if self.hours is None and not self.basis:
            return f"{self.trainings} training(s), {images} training images processed; {self.source}"
        hours = "?" if self.hours is None else (f"{self.hours:.2f}" if self.hours < 10 else f"{self.hours:,.0f}")
        return (f"{self.trainings} training(s), {images} training images processed, about {hours} device-hours "
                f"of training ({self.source}; evaluation and start-up not included)")


def hours_unknown(method: str, profile: str, device_name: str) -> str:
    """What every cost line says of a method with no throughput figure for the device (a new
    method has none until it is measured)."""
    return (f"{method}/{profile} on {device_name}: hours unknown until "
            f"`python -m kdsearch.bench --methods {method} --profile {profile} --save`")


def estimate(method: str, profile: str, trials: Iterable[tuple[int, int | None]], device_kind: str,
             device_name: str) -> Estimate:
    """Cost of trials given as (epochs, training images per epoch or None)."""
    trials = list(trials)
    sizes = [epochs * images if images is not None else None for epochs, images in trials]
    total = None if any(s is None for s in sizes) else int(sum(sizes))
    speed = throughput(method, profile, device_kind, device_name)
    if speed is None:
        return Estimate(len(trials), total, None, hours_unknown(method, profile, device_name))
    hours = None if total is None else total / speed.images_per_second / 3600.0
    return Estimate(len(trials), total, hours, f"{speed.images_per_second:,.1f} images/s, {speed.source}", speed.source,
                    speed.images_per_second)


def _trial_cost(spec: TrialSpec) -> tuple[int, int | None]:
    from kdsearch import data as data_lib

    cfg = spec.trial.train
    images = data_lib.train_image_count(spec.dataset, spec.category, cfg.data_root, val_fraction=cfg.val_fraction,
                                        max_train_images=cfg.max_train_images)
    return cfg.epochs, images


def cpu_kind(bf16: bool, flags: frozenset[str]) -> str:
    """Which reference a CPU's training is costed from: its numerics, then its vector units.

    ``flags`` are Linux's cpuinfo flags. bf16 on AMX tiles (``amx_bf16``) is ``cpu-amx``, on
    AVX512-BF16 without AMX ``cpu-avx512-bf16``; fp32 with AVX-512 (``avx512f``) is
    ``cpu-avx512``, with AVX2 and no AVX-512 ``cpu-avx2`` (about 2x slower); anything else
    (no flags read, bf16 without bf16 units, which is emulated) is ``cpu``.
    """
    if bf16:
        if "amx_bf16" in flags:
            return "cpu-amx"
        return "cpu-avx512-bf16" if "avx512_bf16" in flags else "cpu"
    if "avx512f" in flags:
        return "cpu-avx512"
    return "cpu-avx2" if "avx2" in flags else "cpu"


def sweep_seconds(estimate: Estimate) -> float | None:
    """A sweep's wall time on this machine (the progress line's first ETA): its trainings, each
    trial's evaluation and set-up (:data:`TRIAL_OVERHEAD_IMAGES` training images' worth) and
    the sweep's start (:data:`SWEEP_START_SECONDS`); ``None`` where the training time is unknown."""
    if estimate.hours is None or not estimate.images_per_second:
        return None
    overhead = estimate.trainings * TRIAL_OVERHEAD_IMAGES / estimate.images_per_second
    return estimate.hours * 3600.0 + overhead + SWEEP_START_SECONDS


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
        specs = job.trainings
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
            saved += TEACHER_CLEAN_SHARE.get(profile, {}).get(trial.train.method, 0.0) * (epochs - 1)
    return 1.0 - saved / weights if weights else 1.0

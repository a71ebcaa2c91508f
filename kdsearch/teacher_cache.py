"""The frozen teacher's features of each clean training image, computed once (``teacher_cache``).

A frozen teacher in eval mode maps the same clean image to the same features every epoch:
RD4AD's, DSKD's and MRKD's ``teacher(normal)``, and the normal half of DMDD's
``teacher(cat[normal, anomalous])``. :class:`TeacherCache` computes them in the first
epoch that meets an image and hands them back in every later one, in the dtype and memory
format the step itself produces (bf16 under autocast, channels-last when the run uses it).

Exactness: the cache returns what the step would have computed, bit for bit.

* An entry serves a batch only when the batch has as many rows as the call that computed
  it: the trial's ``batch_size``. Convolution kernels are chosen by shape, and oneDNN's
  fp32 kernels give a row other bits in a batch of 3 than in a batch of 16 (WRN50, 64²);
  at a fixed shape the rows' order does not change them (measured, fp32 and bf16). The
  epoch's last, smaller batch is computed by the step itself, as without the cache.
* DMDD's teacher sees the normal and the anomalous batch in one call of twice the rows.
  Serving the normal half from the cache splits that call in two; the first full batch
  checks that the split gives the joint call's bits (it does on this project's CPUs) and
  the cache stays off for the run where it does not.
* An entry's key is the teacher's identity (backbone, levels, its weights' checksum), the
  preprocessing, image size, precision, memory format and device type, and the image's
  content (a hash of its decoded uint8 tensor), never a path; a changed one misses.
* A per-epoch change of the clean image (``synthesis.normal_rotation``) turns the cache
  off: the teacher then sees another tensor each epoch (:meth:`~kdsearch.trial.Trial.inert_settings`).
* ``torch.compile`` fuses the teacher into the compiled step, whose kernels need not give
  the eager pass's bits: ``auto`` leaves the cache off with ``--compile``.

Where the entries live: on the training device when the whole training set fits in
:data:`DEVICE_SHARE` of its free memory, else (CUDA) in pinned host memory when it fits in
:data:`HOST_SHARE` of the available RAM, else nowhere (the cache is off). On a CPU the
device is the host: :data:`HOST_SHARE` of the available RAM. Under DDP each rank caches
the images its shard brings it (every image, over the epochs' reshuffles), sized for the
whole set. Size per image: Σ channels × (size / stride)² × 2 bytes in bf16, 3.7 MB for
WRN50's layers 1-3 at 256² (:func:`bytes_per_image`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdsearch.methods.base import AnomalyMethod, Batch
from kdsearch.nn import FrozenTeacher
from kdsearch.numerics import Numerics
from kdsearch.trial import Trial

__all__ = ["DEVICE_SHARE", "HOST_SHARE", "TeacherKey", "TeacherCache", "bytes_per_image",
           "content_keys", "teacher_cache_wanted", "placement", "build_teacher_cache"]

#: Share of the device's free memory the entries may take there.
DEVICE_SHARE = 0.25
#: Share of the host's available memory the entries may take there (pinned, on CUDA).
HOST_SHARE = 0.25


@dataclass(frozen=True)
class TeacherKey:
    """What the teacher's features of an image depend on, besides the image."""

    backbone: str
    levels: tuple[int, ...]
    weights: float  # the frozen teacher's checksum (AnomalyMethod.frozen_fingerprint)
    preprocessing: str
    image_size: int
    precision: str
    memory_format: str
    device_type: str


def content_keys(images: torch.Tensor) -> list[str]:
    """One key per decoded uint8 image (N, 3, H, W): a hash of its bytes."""
    host = images.detach().cpu().contiguous()
    return [hashlib.blake2b(image.numpy().tobytes(), digest_size=16).hexdigest() for image in host]


def bytes_per_image(teacher: FrozenTeacher, image_size: int, precision: str) -> int:
    """Bytes of one image's features: Σ channels × (size / stride)², 2 bytes each in bf16, 4 in fp32."""
    element = 2 if precision == "bf16" else 4
    return sum(c * (image_size // r) ** 2 for c, r in zip(teacher.channels, teacher.reductions)) * element


def teacher_cache_wanted(trial: Trial) -> bool:
    """Whether ``trial`` asks for the cache: ``on``, or ``auto`` without ``--compile``, where it applies."""
    setting = trial.train.teacher_cache
    if setting == "off" or "teacher_cache" in trial.inert_settings:
        return False
    return setting == "on" or not trial.train.compile


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def placement(total_bytes: int, device: torch.device) -> str | None:
    """``device``, ``host`` (pinned, CUDA only) or ``None``: where ``total_bytes`` of entries fit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if total_bytes <= DEVICE_SHARE * free:
            return "device"
        return "host" if total_bytes <= HOST_SHARE * _available_host_bytes() else None
    return "device" if total_bytes <= HOST_SHARE * _available_host_bytes() else None


class TeacherCache:
    """The teacher's features of the clean training images, keyed by content.

    Args:
        teacher: the frozen teacher the step runs on the clean image.
        key: its identity and the run's numerics (:class:`TeacherKey`).
        keys: the content key of each training image, by its index in the batches.
        rows: the full batch's rows (the trial's ``batch_size``): only batches of that many
            are served.
        split: the step runs the teacher on ``cat[image, anomalous]`` (DMDD): the first
            full batch checks that split calls give the joint call's bits.
        where: ``device`` or ``host`` (pinned).
        store: the entries; pass one dict to several caches to share it (a changed key misses).
    """

    def __init__(self, teacher: FrozenTeacher, key: TeacherKey, keys: Sequence[str], rows: int, *,
                 split: bool = False, where: str = "device", store: dict[Any, Any] | None = None) -> None:
        self.teacher = teacher
        self.key = key
        self.keys = list(keys)
        self.rows = rows
        self.split = split
        self.where = where
        self.store: dict[Any, Any] = {} if store is None else store
        #: ``None`` until a DMDD step has checked the split; then whether it is exact.
        self.split_exact: bool | None = None if split else True
        self.hits = self.misses = 0

    def _entry_key(self, index: int) -> tuple[TeacherKey, str, int]:
        return self.key, self.keys[index], self.rows

    def _stored(self, feature: torch.Tensor) -> torch.Tensor:
        if self.where == "host":
            return feature.to("cpu").pin_memory()
        return feature.clone()

    def features(self, batch: Batch, indices: Sequence[int]) -> list[torch.Tensor] | None:
        """The teacher's features of ``batch["image"]`` (called under the step's autocast), or
        ``None`` where the step must compute them itself (a smaller batch, an inexact split)."""
        images = batch["image"]
        if len(indices) != self.rows or self.split_exact is False:
            return None
        if self.split_exact is None and not self._check_split(images, batch["anomalous"]):
            return None
        entries = [self.store.get(self._entry_key(i)) for i in indices]
        if all(entry is not None for entry in entries):
            self.hits += len(indices)
            device = images.device
            levels = []
            for level, channels_last in enumerate(entries[0][1]):
                stacked = torch.stack([entry[0][level] for entry in entries]).to(device, non_blocking=False)
                levels.append(stacked.contiguous(memory_format=torch.channels_last if channels_last
                                                 else torch.contiguous_format))
            return levels
        computed = self.teacher(images)
        formats = tuple(f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
                        for f in computed)
        for row, (index, entry) in enumerate(zip(indices, entries)):
            if entry is None:
                self.misses += 1
                self.store[self._entry_key(index)] = ([self._stored(f[row]) for f in computed], formats)
            else:
                self.hits += 1
        return computed

    def _check_split(self, images: torch.Tensor, anomalous: torch.Tensor) -> bool:
        joint = self.teacher(torch.cat([images, anomalous]))
        halves = [self.teacher(images), self.teacher(anomalous)]
        self.split_exact = all(torch.equal(j[:len(images)], a) and torch.equal(j[len(images):], b)
                               for j, a, b in zip(joint, *halves))
        return self.split_exact

    def attach(self, batch: Batch) -> Batch:
        """``batch`` without its ``index``, with ``teacher_image`` where the cache serves it."""
        indices = batch.get("index")
        out: Batch = {k: v for k, v in batch.items() if k != "index"}
        if indices is not None:
            features = self.features(out, indices)
            if features is not None:
                out["teacher_image"] = features
        return out


def build_teacher_cache(trial: Trial, method: AnomalyMethod, numerics: Numerics, images: torch.Tensor,
                        *, store: dict[Any, Any] | None = None) -> TeacherCache | None:
    """The cache of ``trial``'s training on ``images`` (uint8, the training split), or
    ``None`` where it is off: not asked for (:func:`teacher_cache_wanted`), or too large
    for the memory shares (:func:`placement`)."""
    if not teacher_cache_wanted(trial):
        return None
    teacher = method.cached_teacher()
    if teacher is None:
        return None
    train = trial.train
    where = placement(len(images) * bytes_per_image(teacher, train.image_size, numerics.precision), numerics.device)
    if where is None:
        return None
    key = TeacherKey(backbone=trial.method_config.backbone, levels=tuple(teacher.encoder.feature_info.out_indices),
                     weights=method.frozen_fingerprint(), preprocessing=train.preprocessing,
                     image_size=train.image_size, precision=numerics.precision,
                     memory_format=numerics.memory_format, device_type=numerics.device.type)
    return TeacherCache(teacher, key, content_keys(images), train.batch_size,
                        split=trial.method_config.teacher_cache_input() == "first_half", where=where, store=store)

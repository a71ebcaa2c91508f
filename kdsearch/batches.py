"""Training batches and the validation split, made on the training device.

Images live on the device as one uint8 tensor per split (decoded once by
:mod:`kdsearch.data`); an epoch is a seeded permutation cut into batches, converted to
float and normalised on the device, with synthetic anomalies added in batches when the
method asks for them. No per-sample Python runs in this path except NSA's patch
drawing (and, on a CPU, its OpenCV Poisson blends).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from kdsearch.data import normalize
from kdsearch.methods.base import Batch
from kdsearch.synthesis import AnomalySynthesizer
from kdsearch.synthesis.painted import paint_defects

#: Seed of the validation split's synthetic anomalies: fixed so every trial sees the same split.
VALIDATION_SEED = 20220601


class TrainBatches:
    """Seeded epochs of training batches from a uint8 image tensor on the device."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, anomalies: AnomalySynthesizer | None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, stream: int = 0,
                 with_index: bool = False) -> None:
        """``stream`` > 0 gives a phase with anomalies of its own (DMDD's MSN) an image order
        and anomaly draws independent of the main phase's (stream 0); ``with_index`` adds each
        batch's positions in ``images`` (``index``, for the teacher cache)."""
        if len(images) < 2:
            raise ValueError("training needs at least 2 normal images")
        self.images = images
        self.batch_size = batch_size
        self.anomalies = anomalies
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.with_index = with_index
        if anomalies is not None:
            anomalies.prepare(images)
        # Every rank draws the same permutation and keeps its own shard of it; anomalies
        # differ per rank.
        self.generator = torch.Generator().manual_seed(seed + 1_000_003 * stream)
        self.anomaly_generator = torch.Generator().manual_seed(seed * 1000 + rank + 1 + 1_000_003 * stream)

    def state_dict(self) -> dict:
        return {"permutation": self.generator.get_state(), "anomalies": self.anomaly_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["permutation"])
        self.anomaly_generator.set_state(state["anomalies"])

    @property
    def per_rank(self) -> int:
        """Images each rank trains on per epoch: the same on every rank.

        Collectives (DDP's gradient all-reduce, the divergence check) need every rank to
        take the same number of steps, so each rank keeps ``N // world_size`` images of
        the epoch's permutation (as ``DistributedSampler(drop_last=True)``); the up to
        ``world_size - 1`` left over differ from epoch to epoch.
        """
        return len(self.images) // self.world_size

    def __len__(self) -> int:
        per_rank = self.per_rank
        batches = -(-per_rank // self.batch_size)
        # A trailing batch of one image is dropped: batch norm cannot train on it.
        return batches - (1 if per_rank % self.batch_size == 1 and per_rank > 1 else 0)

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[Batch]:
        host_order = torch.randperm(len(self.images), generator=self.generator)[self.rank :: self.world_size][: self.per_rank]
        order = host_order.to(self.images.device)
        for step in range(len(self)):
            cut = slice(step * self.batch_size, (step + 1) * self.batch_size)
            indices = order[cut]
            images01 = self.images[indices].float().div_(255.0)
            # A tuple, not a tensor: read on the host with no device sync.
            index = {"index": tuple(host_order[cut].tolist())} if self.with_index else {}
            if self.anomalies is None:
                yield {"image": self._format(normalize(images01)), **index}
                continue
            # The normal images come back too: DRAEM's loader rotates some of them
            # (synthesis.normal_rotation) and trains on the rotated ones throughout.
            normal, anomalous, masks = self.anomalies.with_normals(images01, self.anomaly_generator, indices=indices)
            yield {"image": self._format(normalize(normal)), "anomalous": self._format(normalize(anomalous)),
                   "anomaly_mask": masks, **index}


_DONE = object()


def prefetched(batches: Iterable[Batch], depth: int, device: torch.device | None = None) -> Iterator[Batch]:
    """Iterate ``batches`` while a background thread makes up to ``depth`` of them ahead.

    Synthesis (NSA's patch drawing above all) then overlaps the training step instead of
    stalling it. One thread draws the batches in their usual order from the same
    generators, so the batches are identical with and without prefetching. ``depth`` 0
    iterates in the calling thread. An error in the producer is raised here.

    On a CUDA ``device`` the producer queues its work on a stream of its own: a host sync
    in synthesis (NSA reads back one flag per image per round) then waits for that work
    only, not for the training step queued on the default stream, and the GPU runs both
    at once. The consumer's stream waits for each batch's event before using it, and the
    batch's tensors are recorded on that stream so their memory is not reused too early.
    """
    if depth <= 0:
        yield from batches
        return
    side = torch.cuda.Stream(device=device) if device is not None and device.type == "cuda" else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with _on_stream(side, device):
                for batch in batches:
                    made = None
                    if side is not None:
                        made = torch.cuda.Event()
                        made.record(side)
                    while not stop.is_set():
                        try:
                            ready.put((batch, made), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            ready.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            ready.put(exc)

    worker = threading.Thread(target=produce, name="kdsearch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            batch, made = item
            if made is not None:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(made)
                for value in batch.values():
                    if isinstance(value, torch.Tensor):
                        value.record_stream(consumer)
            yield batch
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


@contextmanager
def _on_stream(stream: torch.cuda.Stream | None, device: torch.device | None) -> Iterator[None]:
    """Make ``stream`` (and its device) current in this thread; nothing without a stream."""
    if stream is None:
        yield
        return
    # The current device and stream are per thread: a fresh thread would start on GPU 0.
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield


@dataclass(frozen=True)
class ValidationSet:
    """Held-out normal images plus synthetic anomalies made from them with a fixed seed."""

    images: torch.Tensor  # float normalised (N, 3, H, W)
    masks: torch.Tensor   # bool (N, H, W)
    labels: torch.Tensor  # int64 (N,)


def make_validation_set(val_normal: torch.Tensor, device: torch.device | str) -> ValidationSet | None:
    """Validation split: each held-out normal image, and an anomalous copy of it.

    A selection metric must reward neither finding a method's own training anomalies nor
    the test's own defects, so the anomalies come from a family of their own: painted
    smears, stripes, speckles and worn patches
    (:func:`~kdsearch.synthesis.painted.paint_defects`), not the DRAEM or NSA anomalies the
    methods train on, and not the built-in dataset's test defects.
    Seeded by :data:`VALIDATION_SEED`, so the split is identical for every trial and
    method; it never touches the test split.

    Returns:
        The split, or ``None`` when nothing is held out (``val_fraction`` 0).
    """
    n = len(val_normal)
    if n == 0:
        return None
    normal01 = val_normal.float() / 255.0
    anomalous01, masks = paint_defects(normal01, torch.Generator().manual_seed(VALIDATION_SEED))
    images = normalize(torch.cat([normal01, anomalous01]).to(device))
    all_masks = torch.cat([torch.zeros_like(masks), masks]).squeeze(1) > 0.5
    labels = torch.cat([torch.zeros(n, dtype=torch.long), (masks.flatten(1).amax(1) > 0.5).long().cpu()])
    return ValidationSet(images, all_masks.cpu(), labels)

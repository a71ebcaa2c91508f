"""A full disk, told as what it is: which folder, how much a trial needs, what to do.

A trial's checkpoint (the student, its optimiser state, random states) is the largest
thing a sweep writes: 150-200 MB at the smoke budget, more with WRN50 students. A worker
that cannot save one raises :class:`CheckpointDiskFull`, whose message carries a marker
and the size, so the driver can stop the sweep with one ``error:`` instead of restarting
the trial into the same full disk.
"""
from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["is_disk_full", "says_disk_full", "state_bytes", "CheckpointDiskFull", "checkpoint_mb_in", "free_mb", "disk_full_advice",
           "disk_full_message"]

_MARKER = "kdsearch-disk-full"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (or while handling), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def says_disk_full(text: str) -> bool:
    """Whether an error's text (a traceback, a library's message) tells of a full disk or quota."""
    return "No space left on device" in text or "Disk quota exceeded" in text or _MARKER in text


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota.

    Checks the errno and, for libraries that fold it into their text (pyarrow's file
    system), the message.
    """
    return any((isinstance(e, OSError) and e.errno in _FULL_ERRNOS) or says_disk_full(str(e)) for e in _chain(exc))


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about its size on disk."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


class CheckpointDiskFull(RuntimeError):
    """A trial's checkpoint could not be written: the disk holding ``folder`` is full."""

    def __init__(self, folder: str, size_bytes: int) -> None:
        self.folder, self.size_bytes, self.size_mb = folder, size_bytes, size_bytes / 2**20
        super().__init__(f"{_MARKER} checkpoint_mb={self.size_mb:.1f}: no space left for a {self.size_mb:.0f} MB "
                         f"checkpoint in {folder}")

    def __reduce__(self):
        # Ray copies and pickles the exceptions it re-raises; rebuild from the constructor's
        # arguments, not from the message (``args``), which the constructor does not take.
        return type(self), (self.folder, self.size_bytes)


def checkpoint_mb_in(text: str) -> float | None:
    """The checkpoint size a :class:`CheckpointDiskFull` message carries, if ``text`` holds one."""
    match = re.search(rf"{_MARKER} checkpoint_mb=([0-9.]+)", text)
    return float(match.group(1)) if match else None


def free_mb(folder: str | Path) -> float | None:
    """Free space on the disk holding ``folder`` (its nearest existing parent), or None for a URI."""
    if "://" in str(folder):
        return None
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return None


def disk_full_advice(folder: str, checkpoint_mb: float | None, concurrent: int | None) -> str:
    """What a full disk means for a sweep and how to go on, for one ``error:`` line."""
    free = free_mb(folder)
    parts = [f"the disk holding {folder} is full"]
    if checkpoint_mb is not None:
        # While a trial replaces its checkpoint the old and the new one exist together.
        need = (f"each running trial needs about {checkpoint_mb:.0f} MB there for its checkpoint "
                f"({2 * checkpoint_mb:.0f} MB while replacing it)")
        if concurrent:
            need += f", so {concurrent} trial(s) at once need about {2 * checkpoint_mb * concurrent:.0f} MB"
        parts.append(need)
    if free is not None:
        parts.append(f"{free:.0f} MB are free now")
    return ("; ".join(parts) + ". Free space there, or put checkpoints on a larger disk with --storage, then run "
            "the same command with --resume")


def disk_full_message(exc: BaseException) -> str:
    """The ``error:`` text for a full disk met anywhere (``exc`` satisfies :func:`is_disk_full`)."""
    for e in _chain(exc):
        if isinstance(e, CheckpointDiskFull):
            return disk_full_advice(e.folder, e.size_mb, None)
        if isinstance(e, OSError) and e.filename:
            return disk_full_advice(str(Path(e.filename).parent), None, None)
    return ("no space left on a disk this run writes to (results, checkpoints, the Ray or system temporary "
            "folder). Free space, then run the same command (with --resume for a sweep)")

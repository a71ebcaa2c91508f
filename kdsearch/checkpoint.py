"""Complete checkpoints: every state a resumed trial needs, written atomically, read safely.

A checkpoint holds the trained weights (not the frozen teachers, rebuilt exactly from the
config), each training phase's optimiser and scheduler, the batch generators, every
global random state and the epoch records: a run resumed from it draws and computes what
an unbroken run would.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsearch.diskspace import CheckpointDiskFull, is_disk_full, state_bytes
from kdsearch.errors import UserError

__all__ = ["CheckpointUnreadable", "rng_state", "restore_rng_state", "save_checkpoint", "load_checkpoint", "config_changes",
           "RESUMABLE_CHANGES"]

#: Settings a resumed run may give other values than its checkpoint holds: where the data
#: and the cache live, how far ahead batches are made, and whether the teacher's features are
#: cached. Nothing else changes what a run computes, except ``epochs``, which may only grow.
RESUMABLE_CHANGES = frozenset({"train.data_root", "train.cache_dir", "train.prefetch", "train.teacher_cache"})


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


class CheckpointUnreadable(UserError):
    """A checkpoint file that cannot be trained on; ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} {reason}; delete it and run without --resume")
        self.path, self.reason = path, reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Checkpoints hold tensors and plain types only, so they load with
    ``weights_only=True``: a file that would run code when unpickled is refused, never run.
    Raises :class:`CheckpointUnreadable` for a file that is not one.
    """
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; run without --resume to start fresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointUnreadable(str(path), "is not a kdsearch checkpoint: it is not a file of tensors and plain "
                                              "types, so it was not loaded (loading it could run code)") from None
    except (RuntimeError, EOFError, OSError) as exc:
        # torch's messages run on over sentences and lines: keep the first sentence.
        detail = str(exc).strip().splitlines()[0].split(". ")[0].rstrip(".")[:160] if str(exc).strip() \
            else "empty or cut short"
        raise CheckpointUnreadable(str(path), f"is not a readable kdsearch checkpoint ({type(exc).__name__}: "
                                              f"{detail})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointUnreadable(str(path), "is not a kdsearch checkpoint (no model state and epoch)")
    return state


def _flatten(prefix: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    # Through JSON, so tuples and lists compare equal (a checkpoint keeps tuples, a CLI builds lists).
    import json
    plain = json.loads(json.dumps(dict(config or {}), default=str))
    return {f"{prefix}.{key}": value for key, value in plain.items()}


_CONFIG_SECTIONS = {"train": "train_config", "method": "method_config", "synthesis": "synthesis_config"}


def config_changes(state: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What a resumed command sets differently from the checkpoint it resumes, one phrase each.

    ``current`` holds the resumed trial's configs as a checkpoint holds them
    (:func:`kdsearch.loop.config_state`). Raising ``train.epochs`` is allowed (training
    continues); lowering it is a change. Settings in :data:`RESUMABLE_CHANGES` may differ.
    """
    def flat(configs: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for section, entry in _CONFIG_SECTIONS.items() for k, v in _flatten(section, configs.get(entry)).items()}

    stored, asked = flat(state), flat(current)
    changes = []
    for name in sorted(stored.keys() | asked.keys()):
        if name in RESUMABLE_CHANGES:
            continue
        was, now = stored.get(name, "(unset)"), asked.get(name, "(unset)")
        if was == now:
            continue
        if name == "train.epochs" and isinstance(was, int) and isinstance(now, int) and now > was:
            continue
        label = name.split(".", 1)[1] if name.startswith(("train.", "method.")) else name
        changes.append(f"{label}: checkpoint {was!r}, command {now!r}")
    return changes

"""The decoded-tensor cache: an in-process LRU in front of ``torch.save`` files on disk.

A category decoded at one image size is stored under ``<cache_dir>/tensors/`` keyed by
(dataset, resolved data root, category, image size, a fingerprint of every source file's
size and modification time, and :data:`CACHE_FORMAT`). Later calls in the same process
(other epochs, other trials) get it from memory; other processes read the file. Files are
written to a temporary name and renamed, so readers never see half a file; a file that
cannot be read back is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from kdsearch.data.decode import DEFAULT_PREPROCESSING
from kdsearch.data.samples import Manifest
from kdsearch.errors import UserError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when decoding or the stored payload changes; old files are then ignored."""

MEMORY_BUDGET_BYTES = 2 * 1024**3
"""The in-process cache drops least recently used categories above this size."""

Payload = dict[str, object]

_memory: OrderedDict[str, tuple[Payload, int]] = OrderedDict()
_lock = threading.Lock()


def default_cache_dir() -> Path:
    """``$KDSEARCH_CACHE`` if set, else ``~/.cache/kdsearch``."""
    env = os.environ.get("KDSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kdsearch"


def fingerprint(manifest: Manifest) -> str:
    """Hash of every source file's path, size and modification time."""
    h = hashlib.sha256()
    for path in manifest.files():
        st = path.stat()
        h.update(f"{path.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(dataset: str, root: Path, category: str, image_size: int, files_fingerprint: str,
              preprocessing: str = DEFAULT_PREPROCESSING) -> str:
    """The cache key of one decoded category (the default preprocessing keeps the keys it always had)."""
    ident = [CACHE_FORMAT, dataset, str(root), category, image_size, files_fingerprint]
    if preprocessing != DEFAULT_PREPROCESSING:
        ident.append(preprocessing)
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()


def cache_file(cache_dir: Path, dataset: str, category: str, image_size: int, key: str) -> Path:
    """Where the payload of ``key`` is stored on disk."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", category)
    return cache_dir / "tensors" / f"{dataset}-{safe}-{image_size}px-{key[:20]}.pt"


def _nbytes(payload: Payload) -> int:
    return sum(v.numel() * v.element_size() for v in payload.values() if isinstance(v, torch.Tensor))


def _remember(key: str, payload: Payload) -> None:
    with _lock:
        _memory[key] = (payload, _nbytes(payload))
        _memory.move_to_end(key)
        while len(_memory) > 1 and sum(size for _, size in _memory.values()) > MEMORY_BUDGET_BYTES:
            _memory.popitem(last=False)


def clear_memory_cache() -> None:
    """Forget every category held in this process (files on disk stay)."""
    with _lock:
        _memory.clear()


def _read(path: Path, key: str) -> Payload | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: rebuild it
        log.warning("ignoring unreadable tensor cache %s (%s); rebuilding it", path, exc)
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    return payload


def _write(path: Path, payload: Payload) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(
            f"cannot write the tensor cache under {path.parent}: {exc}; set KDSEARCH_CACHE "
            "(or pass a cache directory) to a writable folder"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_build(key: str, path: Path, build: Callable[[], Payload]) -> Payload:
    """The payload stored under ``key``: from memory, else from ``path``, else ``build()``.

    A built payload is written to ``path`` atomically and kept in memory.
    """
    with _lock:
        hit = _memory.get(key)
        if hit is not None:
            _memory.move_to_end(key)
            return hit[0]
    payload = _read(path, key)
    if payload is None:
        payload = dict(build())
        payload["key"] = key
        _write(path, payload)
    _remember(key, payload)
    return payload

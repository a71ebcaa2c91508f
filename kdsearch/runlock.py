"""One sweep per results folder and axis at a time, and one sweep per training.

Two sweeps of the same axis into one folder would train every trial twice on the same
cores and overwrite each other's rows. The lock is created atomically (``O_EXCL``) and
holds the owner's host and process id, so a second sweep can say who runs; a lock whose
process died on this host is taken over with a warning.

Sweeps of different axes may run into one folder at once, and their rows may share a
training (MRKD's Table 7 rows and its main row). Each training a sweep is about to run is
claimed first (:class:`TrainingClaims`: ``<results>/_claims/<training_key>.claim``, created
atomically, naming the owner); a sweep that finds a training claimed by a live sweep waits
for that training's row and writes its own rows from it, so one training runs once. The
claim of a sweep that died on this host is taken over.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path

from kdsearch.errors import UserError, warn

LOCK_NAME = ".sweep.lock"
CLAIMS_DIRNAME = "_claims"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a lock's, a claim's or a temp folder's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_folders_of_gone_processes(root: str | os.PathLike[str], prefix: str) -> int:
    """Delete the folders ``<root>/<prefix><pid>-*`` whose process no longer runs on this
    machine (what a killed process made for itself and never removed); return how many."""
    import re
    import shutil

    owned = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    removed = 0
    for folder in Path(root).glob(f"{prefix}*"):
        match = owned.match(folder.name)
        if match and folder.is_dir() and not process_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _owner() -> dict[str, object]:
    """This process's record in a lock or claim file."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_owner(path: Path) -> dict[str, object]:
    """The record a lock or claim file holds; empty when unreadable."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _gone(record: dict[str, object], host: str) -> bool:
    """Whether a record's process was on this host and has ended (its lock or claim may be taken over)."""
    pid = record.get("pid")
    return record.get("host") == host and isinstance(pid, int) and not process_alive(pid)


class SweepLock:
    """Held while a sweep writes into ``folder``; use as a context manager."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.owner = _owner()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self.owner, handle)
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            return
        other = _read_owner(self.path)
        host, pid = other.get("host"), other.get("pid")
        if _gone(other, str(self.owner["host"])):
            warn(f"taking over the lock of a sweep that is gone (pid {pid} on {host}, started {other.get('started')})")
            self.path.unlink(missing_ok=True)
            if self._create():
                return
            other = {}
        raise UserError(f"another sweep writes into {self.path.parent} (pid {pid} on {host}, started "
                        f"{other.get('started', '?')}); wait for it, choose another --results folder, or delete "
                        f"{self.path} if that sweep is gone")

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class TrainingClaims:
    """The trainings one sweep has claimed in a results folder (one file each)."""

    def __init__(self, results_dir: str | os.PathLike[str]) -> None:
        self.folder = Path(results_dir) / CLAIMS_DIRNAME
        self.owner = {**_owner(), "claim": uuid.uuid4().hex}
        self.held: set[str] = set()

    def path(self, training_key: str) -> Path:
        return self.folder / f"{training_key}.claim"

    def take(self, training_key: str) -> dict[str, object] | None:
        """Claim a training: ``None`` once it is this sweep's, else the live owner's record
        (host, pid, started). A claim left by a process that is gone on this host is taken over."""
        if training_key in self.held:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(training_key)
        # Two sweeps taking over the same dead claim must not both win: one at a time.
        with open(self.folder / ".lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                other = _read_owner(path) if path.exists() else None
                if other is not None:
                    pid = other.get("pid")
                    if other.get("host") == self.owner["host"] and isinstance(pid, int) and process_alive(pid) \
                            and other.get("claim") != self.owner["claim"]:
                        return other
                    if other.get("host") not in (self.owner["host"], None) and other:
                        return other
                    path.unlink(missing_ok=True)  # its sweep is gone (or it is ours, or unreadable)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as handle:
                    json.dump(self.owner, handle)
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)
        self.held.add(training_key)
        return None

    def claimed_elsewhere(self, training_key: str) -> dict[str, object] | None:
        """The owner of a training's claim when another live sweep holds it, else ``None``."""
        path = self.path(training_key)
        if training_key in self.held or not path.exists():
            return None
        other = _read_owner(path)
        return None if _gone(other, str(self.owner["host"])) else other or None

    def want_model(self, training_key: str) -> None:
        """Ask the sweep that runs a training to keep its weights (as ``--keep-models`` does):
        this sweep's rows may score the model in ways that sweep's rows do not."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            wanted_path(self.folder.parent, training_key).touch()
        except OSError:
            pass  # then a row that scores otherwise trains again

    def release(self, training_key: str) -> None:
        if training_key not in self.held:
            return
        self.held.discard(training_key)
        path = self.path(training_key)
        if _read_owner(path).get("claim") == self.owner["claim"]:
            path.unlink(missing_ok=True)

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)


def wanted_path(results_dir: str | os.PathLike[str], training_key: str) -> Path:
    """The marker by which a waiting sweep asks a training's trial to keep its weights."""
    return Path(results_dir) / CLAIMS_DIRNAME / f"{training_key}.wanted"

"""One sweep per results folder and axis at a time: a lock file naming its owner.

Two sweeps of the same axis into one folder would train every trial twice on the same
cores and overwrite each other's rows. The lock is created atomically (``O_EXCL``) and
holds the owner's host and process id, so a second sweep can say who runs; a lock whose
process died on this host is taken over with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from kdsearch.errors import UserError, warn

LOCK_NAME = ".sweep.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class SweepLock:
    """Held while a sweep writes into ``folder``; use as a context manager."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

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
        try:
            other = json.loads(self.path.read_text())
        except (OSError, ValueError):
            other = {}
        host, pid = other.get("host"), other.get("pid")
        if host == self.owner["host"] and isinstance(pid, int) and not _alive(pid):
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

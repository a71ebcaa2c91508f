"""Remove the checkpoints a sweep leaves in Ray's storage (local folder or URI), and the
local staging folders of checkpoints whose worker was killed before Ray took them."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

#: A checkpoint is written into ``<tmp>/kdsearch-ckpt-<pid>-*`` before Ray copies it to the
#: storage; the pid says whose it is, so a folder whose process is gone can be removed.
STAGING_PREFIX = "kdsearch-ckpt-"
_STAGING = re.compile(rf"^{STAGING_PREFIX}(\d+)-")


def staging_folder() -> tempfile.TemporaryDirectory:
    """A checkpoint's staging folder, owned by this process (removed when the ``with`` ends)."""
    return tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphaned_staging(root: str | os.PathLike[str] | None = None) -> int:
    """Delete the staging folders on this machine whose process no longer runs (a worker
    killed while Ray copied its checkpoint leaves its folder, hundreds of MB, for good).

    Returns:
        How many folders were removed.
    """
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*"):
        match = _STAGING.match(folder.name)
        if match and folder.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed

def remove_fit_folders(storage: str, name: str, train_runs: list[str]) -> None:
    """Delete a Tuner's experiment folder and its DDP trials' Train run folders."""
    for folder in (name, *train_runs):
        remove_experiment(storage, folder)


def remove_stale_experiments(storage: str, job_name: str) -> None:
    """Delete this job's experiment folders from earlier runs (local storage; the sweep lock keeps them unused)."""
    if "://" in storage or not Path(storage).is_dir():
        return
    for folder in Path(storage).glob(f"{job_name}-*"):
        if folder.is_dir():
            remove_experiment(storage, folder.name)


def remove_experiment(storage: str, name: str) -> None:
    import pyarrow.fs as pafs

    try:
        if "://" in storage:
            fs, root = pafs.FileSystem.from_uri(storage)
            fs.delete_dir(f"{root.rstrip('/')}/{name}")
        else:
            import shutil

            shutil.rmtree(Path(storage) / name, ignore_errors=True)
    except (OSError, ValueError):
        pass  # leftover checkpoints waste space but never harm the results

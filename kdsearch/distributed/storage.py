"""Remove the checkpoints a sweep leaves in Ray's storage (local folder or URI), and the
local staging folders of checkpoints whose worker was killed before Ray took them."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from kdsearch.runlock import remove_folders_of_gone_processes

#: A checkpoint is written into ``<tmp>/kdsearch-ckpt-<pid>-*`` before Ray copies it to the
#: storage; the pid says whose it is, so a folder whose process is gone can be removed.
STAGING_PREFIX = "kdsearch-ckpt-"


def staging_folder() -> tempfile.TemporaryDirectory:
    """A checkpoint's staging folder, owned by this process (removed when the ``with`` ends)."""
    return tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-")


def remove_orphaned_staging(root: str | os.PathLike[str] | None = None) -> int:
    """Delete the staging folders on this machine whose process no longer runs (a worker
    killed while Ray copied its checkpoint leaves its folder, hundreds of MB, for good).

    Returns:
        How many folders were removed.
    """
    return remove_folders_of_gone_processes(root or tempfile.gettempdir(), STAGING_PREFIX)

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


#: A sweep's workers' temp folder, ``<tmp>/kdsearch-tmp-<id>``: see :func:`worker_temp_dir`.
WORKER_TMP_PREFIX = "kdsearch-tmp-"


def worker_temp_dir(results_dir: str | os.PathLike[str], job_name: str, root: str | os.PathLike[str] | None = None
                    ) -> Path:
    """The temp folder (``TMPDIR``) of one sweep's Ray workers on this machine.

    Whatever a worker leaves in its temp folder goes with it when the sweep ends: a worker
    that is killed, or that leaves by ``os._exit`` (every DDP worker at the end of its trial),
    never runs the clean-up of the folders made at import (W&B, which timm imports, makes an
    empty ``tmp*wandb-media`` and ``tmp*wandb-artifacts`` in every process). Named by the
    results folder and the axis, which the sweep lock holds for one sweep at a time, so the
    next run of the same sweep (``--resume`` after a killed driver) finds a killed one's
    folder and removes it. Short, under the system temp folder: Unix sockets made in it
    have a short path limit.
    """
    import hashlib

    ident = hashlib.sha256(f"{Path(results_dir).resolve()}\0{job_name}".encode()).hexdigest()[:12]
    return Path(root or tempfile.gettempdir()) / f"{WORKER_TMP_PREFIX}{ident}"


def fresh_worker_temp_dir(results_dir: str | os.PathLike[str], job_name: str,
                          root: str | os.PathLike[str] | None = None) -> Path:
    """:func:`worker_temp_dir`, emptied of what an earlier run of the sweep left, and made."""
    folder = worker_temp_dir(results_dir, job_name, root)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_worker_temp_dir(results_dir: str | os.PathLike[str], job_name: str,
                           root: str | os.PathLike[str] | None = None) -> None:
    """Remove a sweep's workers' temp folder and all it holds (its workers are gone)."""
    shutil.rmtree(worker_temp_dir(results_dir, job_name, root), ignore_errors=True)


def worker_env(temp_dir: Path) -> dict[str, str]:
    """Environment of a sweep's Ray workers: their temp folder, with torch's compile cache
    kept where it would be without it (shared by sweeps, not removed with the folder)."""
    env = {"TMPDIR": str(temp_dir)}
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        env["TORCHINDUCTOR_CACHE_DIR"] = _inductor_cache_dir()
    return env


def _inductor_cache_dir() -> str:
    """torch's default compile cache folder, ``<tmp>/torchinductor_<user>`` (as
    ``torch._inductor.runtime.cache_dir_utils.default_cache_dir``, whose import takes seconds)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))

"""Remove the checkpoints a sweep leaves in Ray's storage (local folder or URI)."""
from __future__ import annotations

from pathlib import Path

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

"""A full disk: recognised however it is raised, told with the space a trial needs, exit 2."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from kdsearch import checkpoint
from kdsearch.diskspace import (
    CheckpointDiskFull,
    checkpoint_mb_in,
    disk_full_advice,
    disk_full_message,
    is_disk_full,
    state_bytes,
)
from kdsearch.errors import run_cli


def test_is_disk_full_follows_errno_messages_and_causes() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # pyarrow folds the errno into its text
    assert is_disk_full(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("trial failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("out of memory"))
    assert not is_disk_full(None)


def test_state_bytes_counts_nested_tensors() -> None:
    state = {"model": {"w": torch.zeros(10, 10), "b": torch.zeros(10, dtype=torch.float64)},
             "rng": [torch.zeros(5, dtype=torch.uint8)], "epoch": 3}
    assert state_bytes(state) == 400 + 80 + 5


def test_a_checkpoint_on_a_full_disk_raises_with_its_size_and_leaves_no_temp_file(tmp_path, monkeypatch) -> None:
    state = {"model": {"w": torch.zeros(1024, 1024)}}  # 4 MiB

    def full(obj, file) -> None:
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(CheckpointDiskFull) as info:
        checkpoint.save_checkpoint(state, tmp_path / "ckpt" / "state.pt")
    assert info.value.folder == str(tmp_path / "ckpt") and info.value.size_mb == pytest.approx(4.0)
    assert checkpoint_mb_in(str(info.value)) == pytest.approx(4.0)
    assert is_disk_full(info.value)
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_advice_names_the_folder_the_space_per_trial_and_the_way_on(tmp_path) -> None:
    text = disk_full_advice(str(tmp_path), 176.2, 2)
    assert text.startswith(f"the disk holding {tmp_path} is full")
    assert "about 176 MB there for its checkpoint (352 MB while replacing it)" in text
    assert "2 trial(s) at once need about 705 MB" in text
    assert "MB are free now" in text and "--storage" in text and "--resume" in text
    assert "at once" not in disk_full_advice("s3://bucket/ckpt", 10.0, None)


def test_a_full_disk_anywhere_in_a_cli_is_an_error_line_and_exit_2(tmp_path, capsys) -> None:
    def main(argv) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "row.parquet"))

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the disk holding {tmp_path / 'results'} is full") and "Traceback" not in err

    def other(argv) -> int:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError):
        run_cli(other, [])
    wrapped = RuntimeError("worker died")
    wrapped.__cause__ = CheckpointDiskFull(str(Path("/ckpt")), 3 * 2**20)
    assert "about 3 MB there for its checkpoint" in disk_full_message(wrapped)


def test_every_kdsearch_exception_survives_copy_and_pickle() -> None:
    """Ray copies and pickles an exception raised in a worker before it re-raises it."""
    import copy
    import pickle

    from kdsearch.checkpoint import CheckpointUnreadable
    from kdsearch.diskspace import CheckpointDiskFull
    from kdsearch.errors import UserError
    from kdsearch.loop import TrialDiverged
    from kdsearch.metrics import UndefinedMetricError

    for exc in (CheckpointDiskFull("/results/_ray", 176 * 2**20), UserError("bad --set"),
                TrialDiverged("loss became nan at epoch 1/8, step 2"), UndefinedMetricError("one class only"),
                CheckpointUnreadable("/results/_ray/t/checkpoint_000001/state.pt", "is not a readable checkpoint")):
        for clone in (copy.copy(exc), copy.deepcopy(exc), pickle.loads(pickle.dumps(exc))):
            assert type(clone) is type(exc) and str(clone) == str(exc)
    full = pickle.loads(pickle.dumps(CheckpointDiskFull("/results/_ray", 176 * 2**20)))
    assert (full.folder, full.size_mb) == ("/results/_ray", 176.0) and checkpoint_mb_in(str(full)) == 176.0


class _FullDisk:
    """A stream on a full disk: every write fails with ENOSPC."""

    def write(self, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_log_handler_on_a_full_disk_prints_no_logging_error_block(capfd, monkeypatch) -> None:
    """W&B's debug log on the full disk printed Python's '--- Logging error ---' block with a
    traceback for every record (14 of them in one sweep); a sweep's driver silences them."""
    import logging

    from kdsearch.distributed.session import _quiet_logs

    monkeypatch.setattr(logging, "raiseExceptions", True)  # Python's default; restored after the test
    monkeypatch.delenv("RAY_IGNORE_UNHANDLED_ERRORS", raising=False)  # _quiet_logs sets it; restored after
    _quiet_logs()
    logger = logging.getLogger("kdsearch-test-wandb-like")
    handler = logging.StreamHandler(_FullDisk())
    logger.addHandler(handler)
    try:
        logger.warning("a record W&B writes to its debug log")
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err


def test_rays_unhandled_error_log_of_a_failed_report_is_silenced(capfd, monkeypatch) -> None:
    """Ray logged every failed tune.report on a full disk as 'Unhandled error' with the
    worker's traceback (worker.py:439), next to kdsearch's one error: line."""
    pytest.importorskip("ray")
    from ray._private import worker as ray_worker

    from kdsearch.distributed.session import _quiet_logs

    monkeypatch.delenv("RAY_IGNORE_UNHANDLED_ERRORS", raising=False)
    _quiet_logs()
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ray_worker.Worker, "deserialize_objects", lambda self, objects, refs: [full])
    ray_worker.Worker.raise_errors(object.__new__(ray_worker.Worker), [b""], [None])
    assert "Unhandled error" not in capfd.readouterr().err


def test_a_sweep_on_a_full_disk_counts_the_trials_that_ran_at_once(tmp_path, monkeypatch) -> None:
    """Without --max-concurrent the message used to leave out how many trials at once need the
    space (its K came from --max-concurrent alone): it now counts those seen running at once."""
    import types

    from kdsearch.distributed import driver
    from kdsearch.distributed.options import RunOptions
    from kdsearch.errors import UserError

    class FullDisk:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(driver.tune, "Tuner", FullDisk)
    # Two trials ran at once before the disk filled.
    callback = types.SimpleNamespace(failure=None, disk_full=False, checkpoint_mb=194.0, train_runs=[],
                                     most_running=2)
    options = RunOptions(results_dir=str(tmp_path), storage=str(tmp_path / "ckpt"))
    with pytest.raises(UserError, match=r"\(388 MB while replacing it\), so 2 trial\(s\) at once need about 776 MB"):
        driver._fit(lambda config: None, "sweep", options, None, None, 3, callback, 0)

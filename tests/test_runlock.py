"""One sweep per results folder and axis: a second one stops, a dead one's lock is taken over."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kdsearch.errors import UserError
from kdsearch.runlock import LOCK_NAME, SweepLock


def test_a_second_sweep_stops_naming_the_first(tmp_path):
    with SweepLock(tmp_path):
        with pytest.raises(UserError, match=rf"another sweep writes into .*\(pid {os.getpid()} on "):
            SweepLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = SweepLock(tmp_path)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": lock.owner["host"], "pid": int(dead.stdout), "started": "x"}))
    with lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "taking over the lock of a sweep that is gone" in capsys.readouterr().err


def test_a_lock_from_another_host_is_not_taken(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "x"}))
    with pytest.raises(UserError, match="pid 1 on elsewhere"):
        SweepLock(tmp_path).acquire()

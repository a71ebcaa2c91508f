"""Where W&B keeps its local files."""
from __future__ import annotations

from pathlib import Path

from kdsearch.tracking import wandb_root


def test_wandb_files_go_under_the_results_unless_wandb_dir_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert wandb_root(tmp_path / "results") == tmp_path / "results" / "_wandb"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    assert wandb_root(tmp_path / "results") == tmp_path / "elsewhere"
    monkeypatch.setenv("WANDB_DIR", "~/wb")
    assert wandb_root("results") == Path.home() / "wb"
    monkeypatch.setenv("WANDB_DIR", "  ")
    assert wandb_root("results") == Path("results") / "_wandb"


def test_the_wandb_modes_are_defined_once_in_tracking() -> None:
    from kdsearch import ablate, tracking

    [option] = [a for a in ablate.build_parser()._actions if "--wandb" in a.option_strings]
    assert option.choices is tracking.MODES and option.default == "auto"


def test_a_killed_drivers_wandb_temp_folders_go_with_the_next_sweep(monkeypatch, tmp_path):
    """`import wandb` makes tmp*wandb-media and tmp*wandb-artifacts in the system temp folder and
    only a normal exit removes them: a SIGKILLed sweep driver left both for good. The driver
    imports W&B into a folder of its own, which the next sweep removes once that process is gone."""
    import os
    import subprocess
    import sys
    import tempfile

    from kdsearch import tracking

    repo = Path(__file__).resolve().parents[1]
    killed = ("import os, kdsearch.tracking as t; t.import_wandb_apart(); import timm; os._exit(0)")  # no clean-up
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(repo))
    subprocess.run([sys.executable, "-c", killed], env=env, check=True, timeout=120)
    [dead] = tmp_path.glob(f"{tracking.DRIVER_TMP_PREFIX}*")  # all inside the killed driver's own folder
    assert len(list(dead.glob("*wandb*"))) == 2 and not list(tmp_path.glob("*wandb*"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tracking.import_wandb_apart()  # the next sweep
    assert not dead.exists() and not list(tmp_path.glob("*wandb*"))
    # What remains is this process's own (when it imported W&B just now), removed when it exits.
    assert {p.name.split("-")[2] for p in tmp_path.glob(f"{tracking.DRIVER_TMP_PREFIX}*")} <= {str(os.getpid())}

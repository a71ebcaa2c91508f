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

"""A sixth method is one method module plus one search-space YAML (inside the package, also
its own golden record: docs/DESIGN.md), and nothing else.

This module is that method module: ``toy``, a one-layer convolutional autoencoder scored
by its reconstruction error. Imported through ``$KDSEARCH_METHODS`` (the one-trial grid's
processes, Ray workers included) it registers itself as any method module does; in the
test process it is registered for one test at a time, so other tests see the five papers'
methods only. The tests write its YAML, then run it through ``kdsearch.train`` and through
a one-trial grid of ``kdsearch.ablate`` on Ray.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from kdsearch import results
from kdsearch.errors import run_cli
from kdsearch.methods import METHODS_ENV, AnomalyMethod, Batch, MethodConfig, register_method
from kdsearch.methods import _registry
from kdsearch.spaces import SEARCH_SPACES_ENV

REPO = Path(__file__).resolve().parent.parent
TOY_YAML = """\
paper: toy
method: toy
profiles:
  smoke: {dataset: synthetic, image_size: 64, epochs: 2, batch_size: 4, max_train_images: 8, seeds: [0], categories: [weave]}
  quick: {dataset: synthetic, image_size: 64, epochs: 2, batch_size: 4, seeds: [0]}
  paper: {dataset: mvtec, image_size: 256, epochs: 10, batch_size: 16, val_fraction: 0.0, seeds: [0]}
axes:
  width: {table: "toy widths", param: width, values: [4]}
"""


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    """Hidden channels of the autoencoder."""

    lr: float = 0.01
    width: int = 8


class ToyAutoencoder(AnomalyMethod):
    """Reconstructs the image through ``width`` channels; the anomaly map is the error."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        self.encode = nn.Conv2d(3, config.width, 3, padding=1)
        self.decode = nn.Conv2d(config.width, 3, 3, padding=1)

    def _error(self, images: torch.Tensor) -> torch.Tensor:
        return (self.decode(torch.relu(self.encode(images))) - images).pow(2).mean(dim=1)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": self._error(batch["image"]).mean()}

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, scoring: ToyConfig | None = None) -> torch.Tensor:
        return self._error(images)


if Path(__file__).stem in os.environ.get(METHODS_ENV, "").split(","):
    register_method("toy")(ToyAutoencoder)


@pytest.fixture
def toy_spaces(tmp_path, monkeypatch) -> Path:
    """The toy's YAML as the only search space, and the toy registered for this test."""
    folder = tmp_path / "spaces"
    folder.mkdir()
    (folder / "toy.yaml").write_text(TOY_YAML)
    monkeypatch.setenv(SEARCH_SPACES_ENV, str(folder))
    monkeypatch.setitem(_registry._METHODS, "toy", ToyAutoencoder)
    monkeypatch.setattr(ToyAutoencoder, "method_name", "toy", raising=False)
    return folder


def test_the_toy_method_trains_through_kdsearch_train(toy_spaces, capsys) -> None:
    from kdsearch.train import main

    assert run_cli(main, ["--method", "toy", "--profile", "smoke", "--set", "width=6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["method"] == "toy" and out["status"] == "ok" and out["epochs"] == 2
    assert 0.0 <= out["pixel_auroc"] <= 1.0 and out["train_images_per_second"] > 0


def test_a_method_without_a_throughput_says_its_hours_are_unknown_until_bench(toy_spaces, capsys, tmp_path,
                                                                               monkeypatch) -> None:
    """No reference figure and no ``bench --save``: --list, --dry-run (one axis or all) and the
    sweep's first ETA all say the hours are unknown and which command measures them."""
    from kdsearch import ablate
    from kdsearch.cost import job_cost
    from kdsearch.plan import plan
    from kdsearch.progress import NO_ESTIMATE, SweepProgress

    monkeypatch.setenv("KDSEARCH_CACHE", str(tmp_path / "cache"))  # no saved figures
    (toy_spaces / "toy.yaml").write_text(TOY_YAML + '  width2: {param: width, values: [4, 6]}\n')
    until = "hours unknown until `python -m kdsearch.bench --methods toy --profile"
    assert run_cli(ablate.main, ["--list", "--costs"]) == 0
    listed = capsys.readouterr().out
    assert "quick 4 trainings, 576 images, hours unknown · paper" in listed and f"{until} quick --save`" in listed
    argv = ["--paper", "toy", "--profile", "smoke", "--dry-run", "--results", str(tmp_path / "res")]
    assert run_cli(ablate.main, [*argv, "--axis", "width"]) == 0
    assert "cost of what remains: 1 training(s), 16 training images processed; toy/smoke on " in capsys.readouterr().out
    assert run_cli(ablate.main, [*argv, "--axis", "all"]) == 0
    table = capsys.readouterr().out
    assert "0.00" not in table and table.count("unknown\n") == 4 and f"{until} smoke --save`" in table
    hours = job_cost(plan("toy", "width", profile="smoke", results_dir=tmp_path / "res")).hours
    assert hours is None and SweepProgress(1, hours).eta_seconds() == (None, NO_ESTIMATE)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_one_trial_grid_of_the_toy_method_runs_on_ray(toy_spaces, tmp_path) -> None:
    raytmp = tempfile.mkdtemp(dir="/tmp", prefix="kdt")
    env = dict(os.environ, RAY_TMPDIR=raytmp, WANDB_MODE="disabled", KDSEARCH_METHODS=Path(__file__).stem,
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    env.pop("RAY_ADDRESS", None)
    root = tmp_path / "res"
    listed = subprocess.run([sys.executable, "-m", "kdsearch.ablate", "--list"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "toy" in listed.stdout and "width" in listed.stdout
    run = subprocess.run([sys.executable, "-m", "kdsearch.ablate", "--paper", "toy", "--axis", "width", "--profile",
                          "smoke", "--results", str(root), "--wandb", "disabled"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    frame = results.read_results(root, "toy", "width")
    assert len(frame) == 1 and frame["status"].tolist() == ["ok"] and frame["method"].tolist() == ["toy"]
    assert json.loads(frame["config_json"].iloc[0])["width"] == 4


def test_the_toy_is_registered_only_inside_its_tests() -> None:
    import pkgutil

    from kdsearch import methods
    from kdsearch.methods import list_methods

    # The package's method modules, each registered under its file's name; the toy is not among them.
    modules = sorted(m.name for m in pkgutil.iter_modules(methods.__path__) if not m.name.startswith("_")
                     and m.name != "base")
    assert list_methods() == modules and "toy" not in modules

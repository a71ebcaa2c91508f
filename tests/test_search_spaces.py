"""Every row of every axis of every search space builds, steps and trains.

Parametrised over the YAML files, so a new row or paper is tested without a new test:
by default each search axis builds its model under the smoke profile and takes one
training step and one anomaly map (grid rows: ``test_axes_vary.py``); ``-m slow`` trains each row for one full smoke epoch through
the real loop and evaluates it.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.methods import create_method, list_methods
from kdsearch.spaces import list_papers, load_search_space
from kdsearch.loop import fit_and_evaluate
from kdsearch.settings import settings_for
from kdsearch.trial import resolve

METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad")


def _cases(grid: bool = True) -> list[tuple[str, str, object]]:
    """(paper, axis, value): every row of every grid axis (when ``grid``) and one value per search axis."""
    cases = []
    for paper in list_papers():
        space = load_search_space(paper)
        for axis in space.axes.values():
            if axis.is_grid:
                cases += [(paper, axis.name, label) for label in axis.rows] if grid else []
            elif axis.distribution == "categorical":
                cases.append((paper, axis.name, axis.choices[0]))
            else:
                cases.append((paper, axis.name, axis.low))
    return cases


def test_every_paper_names_a_registered_method_and_has_axes():
    papers = list_papers()
    assert "rd4ad" in papers
    for paper in papers:
        space = load_search_space(paper)
        assert space.method in list_methods()
        assert space.axes, f"{paper} defines no axes"
        assert any(not a.is_grid for a in space.axes.values()), f"{paper} has no search (distribution) axis"


def _smoke_trial(paper: str, axis: str, value: object):
    space = load_search_space(paper)
    smoke = space.profile("smoke")
    overrides = {**space.axis(axis).overrides(value), "epochs": 1}
    if smoke.get("categories"):
        overrides["category"] = smoke["categories"][0]
    return space, resolve(settings_for(space.method, profile="smoke", space=space, user=overrides))


# Grid rows are built and stepped by tests/test_axes_vary.py, which also compares them.
@pytest.mark.parametrize("paper, axis, value", _cases(grid=False), ids=lambda v: str(v))
def test_axis_row_builds_and_takes_a_training_step(paper: str, axis: str, value: object) -> None:
    space, trial = _smoke_trial(paper, axis, value)
    torch.manual_seed(0)
    size = trial.train.image_size
    method = create_method(space.method, size, trial.method_config)
    batch = {"image": torch.randn(4, 3, size, size)}
    if trial.synthesis is not None:
        masks = torch.zeros(4, 1, size, size)
        masks[:2, :, size // 4 : size // 2, size // 4 : size // 2] = 1.0
        batch["anomalous"] = batch["image"] + 2.0 * masks
        batch["anomaly_mask"] = masks
    method.train()
    losses = method.training_step(batch)
    assert torch.isfinite(losses["loss"]), losses
    losses["loss"].backward()
    assert any(p.grad is not None for p in method.trainable_parameters())
    method.eval()
    maps = method.anomaly_map(batch["image"])
    assert maps.shape == (4, size, size) and torch.isfinite(maps).all()
    assert method.image_score(maps).shape == (4,)


@pytest.mark.slow
@pytest.mark.parametrize("paper, axis, value", _cases(), ids=lambda v: str(v))
def test_axis_row_trains_one_smoke_epoch(paper: str, axis: str, value: object) -> None:
    _, trial = _smoke_trial(paper, axis, value)
    outcome = fit_and_evaluate(trial, progress=False)
    assert outcome.status == "ok", outcome.error
    assert outcome.epochs == 1
    record = outcome.epoch_records[0]
    assert math.isfinite(record["loss"])
    for key in METRICS:
        value_ = outcome.metrics[key]
        assert math.isnan(value_) or 0.0 <= value_ <= 1.0, (key, value_)
    assert 0.0 <= outcome.metrics["image_auroc"] <= 1.0


def test_malformed_search_space_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.yaml").write_text("method: rd4ad\nprofiles: {smoke: {}, quick: {}, paper: {}}\naxes:\n  k: {values: [1, 2]}\n")
    monkeypatch.setenv("KDSEARCH_SEARCH_SPACES", str(tmp_path))
    with pytest.raises(UserError, match="needs 'param'"):
        load_search_space("bad")
    with pytest.raises(UserError, match="unknown paper 'nope'"):
        load_search_space("nope")


def test_a_paper_default_is_written_once_in_its_config_dataclass(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A search space has no ``defaults:`` layer of its own: such a key is refused, not read."""
    (tmp_path / "extra.yaml").write_text("method: rd4ad\ndefaults: {lr: 0.01}\n"
                                         "profiles: {smoke: {}, quick: {}, paper: {}}\naxes: {}\n")
    monkeypatch.setenv("KDSEARCH_SEARCH_SPACES", str(tmp_path))
    with pytest.raises(UserError, match=r"unknown top-level key\(s\) \['defaults'\].*config dataclass"):
        load_search_space("extra")

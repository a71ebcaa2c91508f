"""No ablation row is a no-op: every grid axis's rows compute different things.

This is also the fast test that every grid row builds, trains a step (finite loss,
gradients) and draws a finite map (search axes: ``test_search_spaces.py``).

Each row's model is built under the smoke profile from the same seed and run on one
fixed batch (made by the row's own synthesis, so FAS or α rows differ where the paper's
do). Two rows are "the same" when both their loss and their anomaly map agree, the map up
to a positive scale factor (a rescaled map ranks every pixel the same).
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from kdsearch.batches import TrainBatches
from kdsearch.data import load_category
from kdsearch.methods import create_method
from kdsearch.spaces import list_papers, load_search_space
from kdsearch.synthesis import AnomalySynthesizer
from kdsearch.settings import settings_for
from kdsearch.trial import resolve

#: Rows equal at initialisation by design, checked after a few training steps instead.
IDENTICAL_AT_INIT = {
    # PMN links are zero-initialised so each path starts as the identity.
    ("dmdd", "pmn"): [("NGM", "NGM+Inner", "NGM+Inner+Outer"), ("AIM", "AIM+Inner", "AIM+Inner+Outer")],
}
TRAINING_STEPS = 2


def _grid_axes() -> list[tuple[str, str]]:
    return [(paper, name) for paper in list_papers()
            for name, axis in load_search_space(paper).axes.items() if axis.is_grid and len(axis.rows) > 1]


@pytest.fixture(scope="module")
def normal_images() -> torch.Tensor:
    return load_category("synthetic", "washer", 64, max_train_images=8).train.images[:8]


def _row_output(paper: str, axis_name: str, label: str, images: torch.Tensor, steps: int) -> tuple[float, torch.Tensor]:
    space = load_search_space(paper)
    overrides = {**space.axis(axis_name).overrides(label), "device": "cpu"}
    # An axis row as a plan resolves it: a fixed value a row ignores is the plan's to judge.
    trial = resolve(settings_for(space.method, profile="smoke", space=space, user=overrides))
    torch.manual_seed(0)
    method = create_method(space.method, trial.train.image_size, trial.method_config)
    spec = trial.synthesis
    batches = TrainBatches(images, len(images), 0, AnomalySynthesizer(spec) if spec is not None else None)
    batch = next(iter(batches))
    main, *later_phases = method.training_phases(1)
    optimizer = main.optimizer
    method.train()
    for step in range(steps):
        torch.manual_seed(100 + step)
        loss = method.training_step(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    own_synthesis = trial.method_config.phase_synthesis()
    for phase in later_phases if steps else []:  # DMDD's MSN: one step of its own pass, on its own anomalies
        phase_batch = batch
        if phase.name in own_synthesis:
            own = dataclasses.replace(spec, **own_synthesis[phase.name])
            phase_batch = next(iter(TrainBatches(images, len(images), 0, AnomalySynthesizer(own), stream=1)))
        method.eval()
        phase.module.train()
        phase.optimizer.zero_grad(set_to_none=True)
        phase.step(phase.module, phase_batch)["loss"].backward()
        phase.optimizer.step()
        method.train()
    torch.manual_seed(1)
    loss = method.training_step(batch)["loss"]
    assert torch.isfinite(loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    assert any(p.grad is not None for p in method.trainable_parameters())
    loss = float(loss.detach())
    method.eval()
    torch.manual_seed(2)
    amap = method.anomaly_map(batch["image"]).detach().double()
    assert torch.isfinite(amap).all() and amap.shape == (len(images), 64, 64)
    return loss, amap


def _proportional(map_a: torch.Tensor, map_b: torch.Tensor, tolerance: float) -> bool:
    """``map_a`` ≈ c · ``map_b`` + d for some c > 0: both rank every pixel the same.

    Centred first, so that a nearly constant map (an untrained segmentation head's 0.5)
    is judged by its variation, not by its offset.
    """
    map_a, map_b = map_a - map_a.mean(), map_b - map_b.mean()
    scale = float((map_a * map_b).sum() / (map_b * map_b).sum().clamp_min(1e-30))
    return scale > 0 and float((map_a - scale * map_b).norm()) <= tolerance * float(map_a.norm())


def _same(a: tuple[float, torch.Tensor], b: tuple[float, torch.Tensor]) -> bool:
    """Same loss and proportional maps (float noise only)."""
    (loss_a, map_a), (loss_b, map_b) = a, b
    return abs(loss_a - loss_b) <= 1e-6 * max(1.0, abs(loss_a)) and _proportional(map_a, map_b, 1e-5)


#: After training, maps of rows that differ only by a loss scale (a no-op under Adam) stay
#: proportional to about 1e-6; real differences after two steps are far above this.
TRAINED_TOLERANCE = 1e-3


def _together_by_design(paper: str, axis: str, first: str, second: str) -> bool:
    return any(first in group and second in group for group in IDENTICAL_AT_INIT.get((paper, axis), []))


@pytest.mark.parametrize("paper, axis", _grid_axes())
def test_no_two_rows_of_an_axis_compute_the_same_thing(paper: str, axis: str, normal_images: torch.Tensor) -> None:
    labels = list(load_search_space(paper).axis(axis).rows)
    at_init = {label: _row_output(paper, axis, label, normal_images, steps=0) for label in labels}
    # Pairs whose maps rank pixels alike at init must differ once trained: a listed pair
    # (equal by design) and a pair whose losses differ only by a scale both look so.
    to_train = []
    for first, second in itertools.combinations(labels, 2):
        if _together_by_design(paper, axis, first, second):
            # The list must stay true: a listed pair that already differs belongs off it.
            assert _same(at_init[first], at_init[second]), f"{first} and {second} differ at init; unlist them"
            to_train.append((first, second))
        else:
            assert not _same(at_init[first], at_init[second]), f"{paper}/{axis}: rows {first} and {second} are the same"
            if _proportional(at_init[first][1], at_init[second][1], 1e-5):
                to_train.append((first, second))
    trained = {label: _row_output(paper, axis, label, normal_images, TRAINING_STEPS)
               for label in {label for pair in to_train for label in pair}}
    for first, second in to_train:
        assert not _proportional(trained[first][1], trained[second][1], TRAINED_TOLERANCE), \
            f"{paper}/{axis}: rows {first} and {second} give the same maps after {TRAINING_STEPS} training steps"


def test_same_detects_a_rescaled_map_and_a_changed_loss() -> None:
    amap = torch.rand(2, 8, 8, dtype=torch.float64)
    assert _same((1.0, amap), (1.0, 3.0 * amap)) and _same((1.0, amap), (1.0, 3.0 * amap + 1.0))
    assert not _same((1.0, amap), (1.0, -amap))
    assert not _same((1.0, amap), (1.1, amap))
    assert not _same((1.0, amap), (1.0, amap + 0.01 * torch.rand_like(amap)))

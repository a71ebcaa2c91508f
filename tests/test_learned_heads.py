"""Every learned scoring part does its job: its map ranks pixels at least as well as what it is fed.

A learned head that inverts its input (DMDD's MSN did, through its initialisation) leaves
every other test green and every table wrong. Each check here trains a head on inputs whose
anomalous pixels are known, at the method's own optimiser and loss, and asserts that its map
is far above chance and not below its inputs' pixel AUROC by more than :data:`MARGIN`.
Where a known-answer toy cannot show the property, the head is trained at ``quick`` on the
built-in data instead (slow).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdsearch.methods import list_methods
from kdsearch.methods.adps import PostSegmentationModule, focal_loss, weighted_mask_block
from kdsearch.methods.dmdd import MultiPerceptionSegmentationNetwork, segmentation_loss
from kdsearch.metrics import pixel_auroc
from kdsearch.nn import upsample_maps

#: A head may lose this much pixel AUROC against its inputs on the toy and still pass.
MARGIN = 0.02
SIZE = 64


def _masks(generator: torch.Generator, n: int) -> torch.Tensor:
    """(n, 1, SIZE, SIZE): the first half normal, the second half with one rectangle each."""
    masks = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n // 2, n):
        h, w = (int(v) for v in torch.randint(6, 16, (2,), generator=generator))
        y, x = (int(v) for v in torch.randint(0, SIZE - 16, (2,), generator=generator))
        masks[i, :, y : y + h, x : x + w] = 1.0
    return masks


def _distance_maps(masks: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Eight non-negative, uncentred maps (two branches × strides 4-32), higher on the anomaly,
    as DMDD's 1 − cos maps are."""
    maps = []
    for _branch in range(2):
        for level in range(4):
            side = SIZE // 4 // 2**level
            share = F.interpolate(masks, size=(side, side), mode="area")
            maps.append(0.15 + 0.05 * torch.rand(len(masks), 1, side, side, generator=generator) + 0.2 * share)
    return maps


def _train_msn(pu: bool, mm: bool, steps: int) -> tuple[float, float]:
    """(input AUROC of the maps' mean, the MSN's AUROC) on held-out toy maps after ``steps``."""
    torch.manual_seed(0)
    msn = MultiPerceptionSegmentationNetwork(["top_down", "bottom_up"], 4, SIZE, pu=pu, mm=mm)
    optimizer = torch.optim.Adam(msn.parameters(), lr=0.005)  # DMDD's msn_lr
    train, test = torch.Generator().manual_seed(1), torch.Generator().manual_seed(99)
    test_masks = _masks(test, 32)
    test_maps = _distance_maps(test_masks, test)
    for _ in range(steps):
        masks = _masks(train, 8)
        loss = segmentation_loss(msn(_distance_maps(masks, train)), masks, 100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        head = msn.eval()(test_maps)
    summed = upsample_maps([m.squeeze(1) for m in test_maps], (SIZE, SIZE)).sum(0)
    truth = test_masks.squeeze(1).bool().numpy()
    return pixel_auroc(summed.numpy(), truth), pixel_auroc(head.squeeze(1).numpy(), truth)


def test_dmdd_msn_compression_keeps_the_ranking_of_its_maps_over_many_steps():
    # With the compression's bias at 0 it fell to AUROC 0.001 by step 50: the inverted map.
    fed, head = _train_msn(pu=False, mm=False, steps=150)
    assert fed > 0.95
    assert head > 0.9 and head >= fed - MARGIN, (fed, head)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("category", ["weave", "washer"])
def test_dmdd_msn_beats_the_summed_maps_it_fuses_on_the_built_in_data(category: str, seed: int) -> None:
    # The whole head (PU and MM) ranks below maps that are already perfect on the toy above
    # (0.75 against 0.998: its PU links mix coarse levels in), so it is checked where its
    # inputs are imperfect: quick, fp32. Measured (seeds 0/1): weave 0.724/0.688 against
    # 0.681/0.610, washer 0.823/0.846 against 0.730/0.582. With the compression's bias at 0 it
    # gave 0.53/0.48 and 0.54/0.20.
    from kdsearch.loop import fit_and_evaluate
    from kdsearch.settings import single_trial

    settings = {"category": category, "precision": "fp32", "seed": seed}
    with_msn = fit_and_evaluate(single_trial("dmdd", "quick", settings), progress=False).metrics["pixel_auroc"]
    summed = fit_and_evaluate(single_trial("dmdd", "quick", settings | {"msn": False}), progress=False).metrics["pixel_auroc"]
    assert with_msn > 0.6 and with_msn >= summed - 0.05, (with_msn, summed)


def _features(masks: torch.Tensor, generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Teacher and student pyramids (strides 4, 8, 16) that agree on normal pixels and
    disagree inside the anomaly, as a trained ADPS student does."""
    teacher, student = [], []
    for level, channels in enumerate((8, 16, 32)):
        side = SIZE // 4 // 2**level
        t = torch.randn(len(masks), channels, side, side, generator=generator)
        noise = torch.randn(t.shape, generator=generator)
        inside = F.interpolate(masks, size=(side, side), mode="area")
        teacher.append(t)
        student.append(t + 0.4 * noise + 3.0 * inside * torch.randn(t.shape, generator=generator))
    return teacher, student


def test_adps_psm_ranks_pixels_at_least_as_well_as_the_weighted_masks_it_is_fed():
    torch.manual_seed(0)
    psm = PostSegmentationModule([8, 16, 32], [4, 8, 16])
    optimizer = torch.optim.Adam(psm.parameters(), lr=1e-3)
    train, test = torch.Generator().manual_seed(1), torch.Generator().manual_seed(99)
    for _ in range(120):
        masks = _masks(train, 8)
        teacher, student = _features(masks, train)
        weighted = [weighted_mask_block(t, s)[1] for t, s in zip(teacher, student)]
        loss = focal_loss(psm(weighted), masks.squeeze(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_masks = _masks(test, 16)
    teacher, student = _features(test_masks, test)
    pairs = [weighted_mask_block(t, s) for t, s in zip(teacher, student)]
    with torch.no_grad():
        head = torch.softmax(psm.eval()([c for _, c in pairs]), dim=1)[:, 1]
    fed = upsample_maps([w for w, _ in pairs], (SIZE, SIZE)).sum(0)
    truth = test_masks.squeeze(1).bool().numpy()
    fed_auroc, head_auroc = pixel_auroc(fed.numpy(), truth), pixel_auroc(head.numpy(), truth)
    assert fed_auroc > 0.95
    assert head_auroc > 0.9 and head_auroc >= fed_auroc - MARGIN, (fed_auroc, head_auroc)


@pytest.mark.slow
@pytest.mark.parametrize("method", list_methods())
def test_every_methods_score_map_is_well_above_chance_at_quick(method: str) -> None:
    # The parts that make each map (RD4AD's and DSKD's decoders, MRKD's generation modules,
    # ADPS's PSM, DMDD's MSN) trained at quick, fp32, seed 0 on synthetic weave. Measured:
    # 0.79 (DSKD), 0.90 (MRKD), 0.93-0.995 (ADPS), 0.75 (DMDD); chance is 0.5, and a map at
    # or below it is a defect until explained.
    from kdsearch.loop import fit_and_evaluate
    from kdsearch.settings import single_trial

    outcome = fit_and_evaluate(single_trial(method, "quick", {"category": "weave", "precision": "fp32"}), progress=False)
    assert outcome.status == "ok", outcome.error
    assert outcome.metrics["pixel_auroc"] > 0.65, outcome.metrics

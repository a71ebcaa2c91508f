"""DMDD: decoupled student, PMN, NGM/AIM losses, MSN shapes and training, top-100 score."""
from __future__ import annotations

import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.methods import build_config, create_method
from kdsearch.methods.dmdd import (
    ChannelAttention,
    MultiPerceptionSegmentationNetwork,
    PyramidPath,
    SpatialAttention,
    segmentation_loss,
)
from kdsearch.spaces import load_search_space

CHANNELS = [64, 128, 256, 512]  # resnet18 layer1-4


def _method(**overrides):
    torch.manual_seed(0)
    return create_method("dmdd", 64, {"backbone": "resnet18", **overrides})


def test_split_doubles_channels_and_starts_equal_to_the_teacher():
    method = _method().eval()
    images = torch.randn(2, 3, 64, 64)
    normality, abnormality = method.student(images)
    teacher = method.teacher(images)
    assert [s.weight.shape[0] for s in method.student.splits] == [2 * c for c in CHANNELS]
    assert [n.shape for n in normality] == [t.shape for t in teacher]
    assert [a.shape for a in abnormality] == [t.shape for t in teacher]
    assert [n.shape[-1] for n in normality] == [16, 8, 4, 2]
    for t, n, a in zip(teacher, normality, abnormality):
        assert torch.allclose(n, t, atol=1e-4) and torch.allclose(a, t, atol=1e-4)


def test_only_the_normality_half_feeds_the_next_stage():
    method = _method().eval()
    images = torch.randn(2, 3, 64, 64)
    before, _ = method.student(images)
    first = method.student.splits[0]
    with torch.no_grad():
        first.weight[CHANNELS[0]:] += 1.0  # abnormality half of stage 1
    after, _ = method.student(images)
    assert torch.allclose(before[1], after[1])
    with torch.no_grad():
        first.weight[: CHANNELS[0]] += 0.1  # normality half of stage 1
    changed, _ = method.student(images)
    assert not torch.allclose(before[1], changed[1])


def test_pyramid_paths_start_as_identity_and_flow_one_way():
    features = [torch.randn(2, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(CHANNELS)]
    for direction in ("top_down", "bottom_up"):
        path = PyramidPath(CHANNELS, direction)
        assert all(torch.equal(a, b) for a, b in zip(path(features), features))
        for link in path.links:
            torch.nn.init.normal_(link.weight)
        out = path(features)
        untouched = 3 if direction == "top_down" else 0
        assert torch.equal(out[untouched], features[untouched])
        assert all(not torch.allclose(out[i], features[i]) for i in range(4) if i != untouched)


def test_branch_switches_build_only_the_asked_pmn_paths():
    full = _method()
    assert len(full.normality_pmn) == 2 and len(full.abnormality_pmn) == 2
    assert [p.direction for p in full.normality_pmn] == ["top_down", "bottom_up"]
    assert [p.direction for p in full.abnormality_pmn] == ["bottom_up", "top_down"]
    inner_only = _method(abnormality_branch=False, normality_outer=False, msn=False)
    assert inner_only.abnormality_pmn is None and [p.direction for p in inner_only.normality_pmn] == ["top_down"]
    losses = inner_only.training_step({"image": torch.randn(2, 3, 64, 64), "anomalous": torch.randn(2, 3, 64, 64),
                                       "anomaly_mask": torch.zeros(2, 1, 64, 64)})
    assert set(losses) == {"ngm", "loss"}


def test_ngm_and_aim_losses_on_known_inputs():
    method = _method().eval()  # running statistics: the untrained student equals the teacher
    images = torch.randn(2, 3, 64, 64)
    same = {"image": images, "anomalous": images.clone(), "anomaly_mask": torch.zeros(2, 1, 64, 64)}
    losses = method.training_step(same)
    assert losses["ngm"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["aim"].item() == pytest.approx(0.0, abs=1e-5)
    # Every pixel anomalous: the AIM target is 1 everywhere while the distance is 0.
    full = method.training_step({**same, "anomaly_mask": torch.ones(2, 1, 64, 64)})
    assert full["aim"].item() == pytest.approx(1.0, abs=1e-5)
    # Half of each image anomalous: area downsampling keeps the mean target at 0.5.
    half = torch.zeros(2, 1, 64, 64)
    half[..., :32] = 1.0
    assert method.training_step({**same, "anomaly_mask": half})["aim"].item() == pytest.approx(0.5, abs=1e-5)
    other = method.training_step({**same, "anomalous": torch.randn(2, 3, 64, 64)})
    assert other["ngm"].item() > 0.01
    assert other["loss"].item() == pytest.approx(other["ngm"].item() + other["aim"].item())


def test_attention_shapes_and_ranges():
    x = torch.rand(2, 8, 32, 32)
    ca = ChannelAttention(8, 2)(x)
    sa = SpatialAttention(7)(x)
    assert ca.shape == (2, 8, 1, 1) and sa.shape == (2, 1, 32, 32)
    assert ((ca > 0) & (ca < 1)).all() and ((sa > 0) & (sa < 1)).all()
    msn = MultiPerceptionSegmentationNetwork(["top_down", "bottom_up"], 4, 64, pu=True, mm=True)
    assert msn.global_attention.shape == (8, 64, 64)
    maps = [torch.rand(2, 1, 16 // 2**i, 16 // 2**i) for i in range(4)] * 2
    out = msn(maps)
    assert out.shape == (2, 1, 64, 64) and ((out > 0) & (out < 1)).all()
    single = MultiPerceptionSegmentationNetwork(["bottom_up"], 4, 64, pu=True, mm=True)
    assert single.global_attention.shape == (4, 64, 64)
    with pytest.raises(ValueError, match="expects 4 maps"):
        single(maps)


def test_untrained_msn_without_mm_is_the_map_mean_shifted_to_the_prior():
    msn = MultiPerceptionSegmentationNetwork(["top_down", "bottom_up"], 4, 64, pu=True, mm=False)
    maps = [torch.rand(2, 1, 16 // 2**i, 16 // 2**i) for i in range(4)] * 2
    up = torch.cat([torch.nn.functional.interpolate(m, size=(64, 64), mode="bilinear", align_corners=False) for m in maps], 1)
    prior_logit = torch.logit(torch.tensor(0.01))
    assert torch.allclose(msn(maps), torch.sigmoid(up.mean(1, keepdim=True) + prior_logit), atol=1e-6)
    # Near the prior (1-3 % of pixels are anomalous), not p >= 0.5 on every pixel.
    assert msn(maps).mean().item() < 0.05


def test_top_100_score_on_a_hand_made_map():
    method = _method()
    maps = torch.zeros(2, 64, 64)
    maps[0].view(-1)[:50] = 1.0
    maps[0].view(-1)[50:100] = 0.5
    maps[0].view(-1)[100:400] = 0.1
    maps[1].view(-1)[:200] = 0.2
    maps[1, 10, 10] = 5.0
    scores = method.image_score(maps)
    assert scores[0].item() == pytest.approx(0.75)
    assert scores[1].item() == pytest.approx((5.0 + 99 * 0.2) / 100)


def test_segmentation_loss_matches_eq5():
    probabilities = torch.full((1, 1, 16, 16), 0.25)
    masks = torch.zeros(1, 1, 16, 16)
    masks[..., :4, :] = 1.0
    # Pixel BCE: 64 positives at -log(0.25), 192 negatives at -log(0.75); image BCE: -log(0.25).
    pixel = (64 * -torch.log(torch.tensor(0.25)) + 192 * -torch.log(torch.tensor(0.75))) / 256
    expected = pixel + -torch.log(torch.tensor(0.25))
    assert segmentation_loss(probabilities, masks, 100).item() == pytest.approx(expected.item(), rel=1e-5)


def test_msn_is_a_second_phase_that_trains_the_head_alone():
    method = _method()
    main, msn = method.training_phases(epochs=1)
    assert (main.name, msn.name) == ("main", "msn") and msn.module is method.msn
    main_ids = {id(p) for group in main.optimizer.param_groups for p in group["params"]}
    msn_ids = {id(p) for group in msn.optimizer.param_groups for p in group["params"]}
    assert msn_ids == {id(p) for p in method.msn.parameters()} and not main_ids & msn_ids
    assert {id(p) for p in method.student.parameters()} <= main_ids
    assert msn.optimizer.param_groups[0]["lr"] == method.config.msn_lr
    assert _method(msn=False).training_phases(epochs=1)[-1].name == "main"
    batch = {"image": torch.randn(2, 3, 64, 64), "anomalous": torch.randn(2, 3, 64, 64),
             "anomaly_mask": (torch.rand(2, 1, 64, 64) > 0.8).float()}
    student_before = [p.detach().clone() for p in method.student.parameters()]
    msn_before = [p.detach().clone() for p in method.msn.parameters()]
    method.eval()
    msn.module.train()
    loss = msn.step(msn.module, batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    msn.optimizer.step()
    assert all(p.grad is None for p in method.student.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student_before, method.student.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(msn_before, method.msn.parameters()))


def test_anomaly_maps_with_and_without_msn():
    images = torch.randn(2, 3, 64, 64)
    with_msn = _method().eval().anomaly_map(images)
    assert with_msn.shape == (2, 64, 64) and ((with_msn > 0) & (with_msn < 1)).all()
    method = _method(msn=False).eval()
    plain = method.anomaly_map(images)
    # The untrained student equals the teacher: the summed 1 - cos maps vanish (up to rounding).
    assert plain.shape == (2, 64, 64) and plain.abs().max().item() < 1e-4
    with torch.no_grad():
        method.abnormality_pmn[0].links[0].weight.normal_()
    assert method.anomaly_map(images).min().item() > 1e-3


def test_one_fas_synthesis_serves_both_phases_by_default():
    config = _method().config
    assert config.msn_synthesis == "shared"
    spec = config.synthesis()
    assert (spec.kind, spec.probability, spec.foreground) == ("draem", 1.0, "grabcut")
    assert config.phase_synthesis() == {}  # the MSN iterates the distillation's batches
    no_fas = _method(fas=False).config
    assert no_fas.synthesis().foreground == "none" and no_fas.phase_synthesis() == {}  # -FAS: full-image for both
    assert _method(msn=False).config.synthesis().foreground == "grabcut"


def test_the_own_reading_draws_full_image_for_the_distillation_and_fas_for_the_msn():
    own = _method(msn_synthesis="own").config
    spec = own.synthesis()
    assert (spec.kind, spec.probability, spec.foreground) == ("draem", 1.0, "none")
    assert own.phase_synthesis() == {"msn": {"foreground": "grabcut"}}
    assert _method(msn_synthesis="own", fas=False).config.phase_synthesis() == {"msn": {"foreground": "none"}}
    assert _method(msn_synthesis="own", msn=False).config.phase_synthesis() == {}


def _masks_per_phase(monkeypatch, **overrides) -> dict[str, list]:
    """The anomaly masks each phase of a smoke DMDD trial on an object category trained on,
    and (under "foregrounds") the foreground mode of every synthesis it drew from."""
    from kdsearch.loop import fit_and_evaluate
    from kdsearch.methods.dmdd import DMDD
    from kdsearch.synthesis import AnomalySynthesizer
    from kdsearch.settings import single_trial

    seen: dict[str, list] = {"main": [], "msn": [], "foregrounds": []}
    main_step, msn_step, synthesize = DMDD.training_step, DMDD._msn_step, AnomalySynthesizer.with_normals

    def record_main(self, batch):
        seen["main"].append(batch["anomaly_mask"].clone())
        return main_step(self, batch)

    def record_msn(self, msn, batch):
        seen["msn"].append(batch["anomaly_mask"].clone())
        return msn_step(self, msn, batch)

    def record_synthesis(self, *args, **kwargs):
        seen["foregrounds"].append(self.config.foreground)
        return synthesize(self, *args, **kwargs)

    monkeypatch.setattr(DMDD, "training_step", record_main)
    monkeypatch.setattr(DMDD, "_msn_step", record_msn)
    monkeypatch.setattr(AnomalySynthesizer, "with_normals", record_synthesis)
    trial = single_trial("dmdd", "smoke", {"category": "pill", "device": "cpu", **overrides})
    try:
        assert fit_and_evaluate(trial, progress=False).status == "ok"
    finally:
        monkeypatch.undo()  # the next call wraps the methods themselves, not these wrappers
    return seen


def test_the_fas_row_changes_both_phases_anomalies_by_default(monkeypatch):
    full = _masks_per_phase(monkeypatch)
    no_fas = _masks_per_phase(monkeypatch, fas=False)
    assert len(full["main"]) == len(no_fas["main"]) > 0 and len(full["msn"]) == len(no_fas["msn"]) > 0
    # One synthesis for both phases: FAS in the full model, full-image in -FAS.
    assert set(full["foregrounds"]) == {"grabcut"} and set(no_fas["foregrounds"]) == {"none"}
    assert len(full["foregrounds"]) == len(full["main"]) + len(full["msn"])
    assert not all(torch.equal(a, b) for a, b in zip(full["main"], no_fas["main"]))
    assert not all(torch.equal(a, b) for a, b in zip(full["msn"], no_fas["msn"]))


def test_the_own_reading_changes_only_the_masks_the_msn_trains_on(monkeypatch):
    full = _masks_per_phase(monkeypatch, msn_synthesis="own")
    no_fas = _masks_per_phase(monkeypatch, msn_synthesis="own", fas=False)
    assert len(full["main"]) == len(no_fas["main"]) > 0 and len(full["msn"]) == len(no_fas["msn"]) > 0
    assert set(full["foregrounds"]) == {"none", "grabcut"} and set(no_fas["foregrounds"]) == {"none"}
    assert all(torch.equal(a, b) for a, b in zip(full["main"], no_fas["main"]))  # the same distillation
    assert not all(torch.equal(a, b) for a, b in zip(full["msn"], no_fas["msn"]))


def test_without_the_msn_the_readings_differ_only_through_fas():
    from kdsearch.settings import settings_for, single_trial
    from kdsearch.trial import resolve

    def identity(**settings):
        return resolve(settings_for("dmdd", profile="smoke", user={"category": "pill", "msn": False, **settings})).training_identity

    # Full-image distillation three ways: one training.
    assert identity(msn_synthesis="own") == identity(msn_synthesis="own", fas=False) == identity(fas=False)
    assert identity() != identity(fas=False)  # shared FAS shapes the distillation
    # On a texture both switches change nothing without the MSN.
    weave = single_trial("dmdd", "smoke", {"category": "weave", "msn": False}).training_identity
    assert weave == resolve(settings_for("dmdd", profile="smoke",
                                               user={"category": "weave", "msn": False, "msn_synthesis": "own"})).training_identity


@pytest.mark.parametrize("overrides, message", [
    ({"normality_branch": False, "abnormality_branch": False}, "at least one"),
    ({"score_top_k": 64 * 64 + 1}, "score_top_k"),
    ({"msn_spatial_kernel": 4}, "odd"),
])
def test_impossible_settings_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        create_method("dmdd", 64, {"backbone": "resnet18", **overrides})


def test_every_row_of_the_search_space_is_a_valid_config():
    space = load_search_space("dmdd")
    assert list(space.axis("msn").rows) == ["w/o MSN", "w/ MSN", "-FAS", "-PU", "-MM"]
    assert len(space.axis("pmn").rows) == 7
    for axis in space.axes.values():
        for label in axis.rows:
            build_config("dmdd", axis.overrides(label)).validate(64)
    aim_inner = build_config("dmdd", space.axis("pmn").overrides("AIM+Inner"))
    switches = (aim_inner.msn, aim_inner.normality_branch, aim_inner.abnormality_inner, aim_inner.abnormality_outer)
    assert switches == (False, False, True, False)

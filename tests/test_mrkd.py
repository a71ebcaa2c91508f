"""MRKD: FLM masking ratio, ILM wiring, score-map selection, config checks."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods import build_config, create_method
from kdsearch.methods.mrkd import random_pixel_mask
from kdsearch.methods.rd4ad import fused_distance_map
from kdsearch.nn import flattened_cosine_loss
from kdsearch.spaces import load_search_space


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.5, 0.8])
def test_pixel_mask_keeps_the_requested_ratio_and_spans_channels(ratio):
    torch.manual_seed(0)
    features = torch.randn(4, 8, 128, 128)
    mask = random_pixel_mask(features, ratio)
    assert mask.shape == (4, 1, 128, 128)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    masked_share = 1.0 - mask.mean().item()
    # 65,536 Bernoulli draws: the standard error is below 0.002.
    assert masked_share == pytest.approx(ratio, abs=0.01)
    assert random_pixel_mask(features, 0.0).min().item() == 1.0


def test_flm_feeds_masked_student_features_to_the_generators():
    torch.manual_seed(0)
    method = create_method("mrkd", 64, {"backbone": "resnet18", "mask_ratio": 0.3})
    method.generators = nn.ModuleList(nn.Identity() for _ in range(3))
    student = [torch.randn(2, c, 64, 64) + 5.0 for c in (64, 128, 256)]
    restored = method.restore(student)
    for f in restored:
        zero_pixels = (f == 0).all(dim=1)
        # Whole pixels (all channels) are zeroed, about λ of them; nothing else is.
        assert zero_pixels.float().mean().item() == pytest.approx(0.3, abs=0.03)
        assert ((f == 0) == zero_pixels.unsqueeze(1)).all()


def test_synthesis_follows_ilm_and_alpha():
    assert build_config("mrkd", {"alpha": 0.0}).synthesis() is None
    assert build_config("mrkd", {"ilm": False}).synthesis() is None
    spec = build_config("mrkd", {"alpha": 0.4}).synthesis()
    assert (spec.kind, spec.probability, spec.foreground) == ("nsa", 0.4, "none")


def test_ilm_sends_the_anomalous_image_through_the_bottleneck_and_supervises_with_the_normal_one():
    torch.manual_seed(0)
    method = create_method("mrkd", 64, {"backbone": "resnet18", "flm": False})
    method.eval()  # fixed batch-norm statistics make the two computations comparable
    normal, anomalous = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    net = method.network
    seen = []
    hook = net.bottleneck.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    loss = method.training_step({"image": normal, "anomalous": anomalous})["loss"]
    method.training_step({"image": normal})
    hook.remove()
    assert all(torch.equal(s, t) for s, t in zip(seen[0], net.teacher(anomalous)))
    assert all(torch.equal(s, t) for s, t in zip(seen[1], net.teacher(normal)))
    expected = flattened_cosine_loss(net.teacher(normal), net.decoder(net.bottleneck(net.teacher(anomalous))))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_score_maps_select_levels_and_fuse_by_sum():
    torch.manual_seed(0)
    method = create_method("mrkd", 64, {"backbone": "resnet18", "flm": False, "gaussian_sigma": 0.0})
    method.eval()
    images = torch.randn(2, 3, 64, 64)
    maps = {}
    for levels in [(1,), (2,), (1, 2), (1, 2, 3)]:
        maps[levels] = method.anomaly_map(images, dataclasses.replace(method.config, score_maps=levels))
    assert maps[(1,)].shape == (2, 64, 64)
    assert torch.allclose(maps[(1, 2)], maps[(1,)] + maps[(2,)], atol=1e-5)
    teacher, student = method.network(images)
    assert torch.allclose(maps[(1, 2, 3)], fused_distance_map(teacher, student, (64, 64), 0.0), atol=1e-5)
    assert torch.allclose(method.image_score(maps[(1,)]), maps[(1,)].flatten(1).amax(1))


def test_anomaly_map_masks_at_test_time_only_when_asked():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    stochastic = create_method("mrkd", 64, {"backbone": "resnet18"}).eval()
    assert not torch.allclose(stochastic.anomaly_map(images), stochastic.anomaly_map(images))
    fixed = create_method("mrkd", 64, {"backbone": "resnet18", "flm_at_test": False}).eval()
    assert torch.equal(fixed.anomaly_map(images), fixed.anomaly_map(images))


def test_flm_adds_generation_modules_only_when_on():
    with_flm = create_method("mrkd", 64, {"backbone": "resnet18"})
    without = create_method("mrkd", 64, {"backbone": "resnet18", "flm": False})
    assert [m.body[0].in_channels for m in with_flm.generators] == [64, 128, 256]
    assert without.generators is None
    assert sum(p.numel() for p in with_flm.trainable_parameters()) > sum(p.numel() for p in without.trainable_parameters())


@pytest.mark.parametrize("overrides, message", [
    ({"alpha": 1.5}, "alpha"), ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"score_maps": [4]}, "score_maps"), ({"score_maps": [1, 1]}, "score_maps"), ({"score_maps": []}, "score_maps"),
])
def test_impossible_settings_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        create_method("mrkd", 64, {"backbone": "resnet18", **overrides})


def test_every_row_of_the_search_space_is_a_valid_config():
    space = load_search_space("mrkd")
    assert list(space.axis("modules").rows) == ["Baseline", "ILM", "FLM", "ILM+FLM"]
    assert list(space.axis("alpha").rows) == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert list(space.axis("score_maps").rows) == ["SM1", "SM2", "SM3", "SM1&2", "SM2&3", "SM1&2&3"]
    for axis in space.axes.values():
        for label in axis.rows:
            config = build_config("mrkd", axis.overrides(label))
            config.validate(64)
    baseline = build_config("mrkd", space.axis("modules").overrides("Baseline"))
    assert (baseline.ilm, baseline.flm) == (False, False)

"""DSKD: maps and losses, DFE shapes, structures, score maps, and every row of search_spaces/dskd.yaml."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.methods import build_config, create_method
from kdsearch.methods.dskd import distance_map, normalize_features, student_loss


# ----------------------------------------------------------------------------- maps and losses

def test_distance_map_hand_values():
    a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    b = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    # ½‖a − b‖² = 1, 1 − cos = 1.
    assert distance_map(a, b, 0.1).item() == pytest.approx(1.1)
    assert distance_map(a, a, 0.1).item() == pytest.approx(0.0)
    assert distance_map(a, -a, 0.0).item() == pytest.approx(2.0)
    # Not unit vectors: ½‖(3, 0) − (0, 4)‖² = 12.5, cos = 0.
    c, d = 3 * a, 4 * b
    assert distance_map(c, d, 0.1).item() == pytest.approx(0.1 * 12.5 + 1.0)


def test_normalisation_modes():
    f = torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)
    (unit,) = normalize_features([f], "l2")
    (squared,) = normalize_features([f], "l2_squared")
    torch.testing.assert_close(unit.flatten(), torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(squared.flatten(), torch.tensor([3 / 25, 4 / 25]))
    # With unit vectors the ℓ2 term equals the cosine distance, so M = (1 + λ)(1 − cos).
    a, b = normalize_features([torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)])
    torch.testing.assert_close(distance_map(a, b, 0.1), 1.1 * distance_map(a, b, 0.0))


def test_student_loss_is_the_level_mean_of_pixel_means():
    torch.manual_seed(0)
    ref = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    stu = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    expected = (distance_map(ref[0], stu[0], 0.1).mean() + distance_map(ref[1], stu[1], 0.1).mean()) / 2
    assert student_loss(ref, stu, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------- DFE and structures

@pytest.mark.parametrize("dfe", [True, False])
def test_dfe_output_shapes(dfe):
    torch.manual_seed(0)
    m = create_method("dskd", 64, {"dfe": dfe}).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = m.encoder(images)
        assert [tuple(f.shape) for f in features] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
        code = m.embedding(features if dfe else features[-1:])
        # F1 ↓×2 and F2 ↓×1 to F3's 4×4, concat, stride-2 residual stage: 512 × 2 × 2.
        assert tuple(code.shape) == (2, 512, 2, 2)
        decoded = m.decoder(code)
    assert [tuple(d.shape) for d in decoded] == [tuple(f.shape) for f in features]
    if dfe:
        assert [len(a) for a in m.embedding.align] == [2, 1]
        assert m.embedding.embed[0].body[0].in_channels == 3 * 256
    else:
        assert len(m.embedding.align) == 0
        assert m.embedding.embed[0].body[0].in_channels == 256
    assert len(m.embedding.embed) == 2  # dfe_blocks default


def test_structures_own_the_right_parts_and_losses():
    images = torch.randn(2, 3, 64, 64)
    expected = {"ds": (True, True, True, {"loss_e", "loss_d"}), "t_e": (True, True, False, {"loss_e"}),
                "t_d": (True, False, True, {"loss_d"}), "e_d": (False, True, True, {"loss_ed"})}
    for structure, (teacher, encoder, decoder, losses) in expected.items():
        m = create_method("dskd", 64, {"structure": structure})
        assert (m.teacher is not None, m.encoder is not None, m.decoder is not None) == (teacher, encoder, decoder)
        out = m.training_step({"image": images})
        assert set(out) == losses | {"loss"}
        torch.testing.assert_close(out["loss"], sum(out[k] for k in losses))


def test_score_maps_sum_linearly():
    torch.manual_seed(0)
    m = create_method("dskd", 64, {}).eval()
    images = torch.randn(2, 3, 64, 64)
    single = []
    for level in (1, 2, 3):
        single.append(m.anomaly_map(images, dataclasses.replace(m.config, score_maps=(level,))))
    assert m.config.score_maps == (1, 2, 3)
    # Upsampling and the Gaussian are linear, so M1-3 is the sum of M1, M2 and M3.
    torch.testing.assert_close(m.anomaly_map(images), sum(single), rtol=1e-4, atol=1e-5)
    assert m.anomaly_map(images).shape == (2, 64, 64)


@pytest.mark.parametrize("overrides, message", [
    ({"score_maps": [4]}, "score_maps must be distinct levels"),
    ({"score_maps": [1, 1]}, "score_maps must be distinct levels"),
    ({"lambda_l2": -1.0}, "lambda_l2 must be >= 0"),
    ({"dfe": False, "structure": "t_e"}, "structure t_e"),
    ({"dfe_blocks": 0}, "dfe_blocks must be >= 1"),
])
def test_impossible_values_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        create_method("dskd", 64, overrides)


def test_unknown_fields_are_user_errors():
    with pytest.raises(UserError, match="unknown dskd config field 'lambda'"):
        build_config("dskd", {"lambda": 0.1})
    with pytest.raises(UserError, match="structure must be one of"):
        build_config("dskd", {"structure": "DS"})


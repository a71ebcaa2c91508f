"""ADPS: patch grid, WMB, losses, PSM, validation, and every row of search_spaces/adps.yaml."""
from __future__ import annotations

import math

import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.methods import build_config, create_method
from kdsearch.methods.adps import (
    PatchStudent,
    PostSegmentationModule,
    flipped_distillation_loss,
    focal_loss,
    pixel_distance,
    weighted_mask_block,
)
from kdsearch.nn.patches import StagedFeatures, patchify, unpatchify
from kdsearch.nn import create_backbone


# ----------------------------------------------------------------------------- patch grid

def test_patchify_unpatchify_round_trip_and_layout():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(x, 2)
    assert patches.shape == (8, 3, 4, 4)
    # Row-major grid order inside each image: top-left, top-right, bottom-left, bottom-right.
    assert torch.equal(patches[0], x[0, :, :4, :4])
    assert torch.equal(patches[1], x[0, :, :4, 4:])
    assert torch.equal(patches[2], x[0, :, 4:, :4])
    assert torch.equal(patches[7], x[1, :, 4:, 4:])
    for k in (1, 2, 4, 8):
        assert torch.equal(unpatchify(patchify(x, k), k), x)
    with pytest.raises(ValueError, match="cannot be cut"):
        patchify(x, 3)


def test_patch_student_is_patch_local_up_to_asym_stage():
    torch.manual_seed(0)
    student = PatchStudent("resnet18", (1, 2, 3), patch_k=2, asym_stage=2).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = student(images)
        # All three stages patch-local: each quarter of every level comes from that quarter's crop alone.
        crop = student.network(images[:, :, :32, 32:])
    for level, (full, local) in enumerate(zip(features, crop)):
        h = full.shape[-1] // 2
        torch.testing.assert_close(full[:, :, :h, h:], local, msg=f"level {level}")


def test_patch_student_k1_is_the_plain_backbone():
    torch.manual_seed(0)
    student = PatchStudent("resnet18", (1, 2, 3), patch_k=1, asym_stage=0).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(student(images), student.network(images)):
            torch.testing.assert_close(a, b)


def test_staged_features_match_timm_forward():
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", "none", (1, 2, 3)).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(images)
        staged = StagedFeatures(backbone).eval()(images)
    assert [f.shape[1] for f in staged] == [64, 128, 256]
    for a, b in zip(staged, expected):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- WMB and losses

def test_weighted_mask_block_on_hand_made_vectors():
    # Three pixels: same direction, orthogonal, opposite.
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]]).T.reshape(1, 2, 1, 3)
    student = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).T.reshape(1, 2, 1, 3)
    weight, weighted = weighted_mask_block(teacher, student, "cosine")
    torch.testing.assert_close(weight, torch.tensor([[[0.0, 1.0, 2.0]]]))
    torch.testing.assert_close(weighted, teacher * torch.tensor([0.0, 1.0, 2.0]))
    # MSE = channel mean of (T − S)²: (4 + 0)/2, (1 + 1)/2, (9 + 0)/2.
    mse = pixel_distance(teacher, student, "mse")
    torch.testing.assert_close(mse, torch.tensor([[[2.0, 1.0, 4.5]]]))
    torch.testing.assert_close(pixel_distance(teacher, student, "both"), mse + weight)


def test_focal_loss_matches_hand_calculation():
    # p(anomaly) = 0.8 on both pixels: one anomalous (y = 1), one normal (y = 0).
    logit = math.log(0.8 / 0.2)
    logits = torch.tensor([0.0, logit]).reshape(1, 2, 1, 1).repeat(1, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]]])
    expected = (-(0.2 ** 2) * math.log(0.8) - (0.8 ** 2) * math.log(0.2)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)
    # γ = 0 is plain cross-entropy.
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx((-math.log(0.8) - math.log(0.2)) / 2, rel=1e-5)


def test_flipped_distillation_loss_values():
    t = torch.randn(2, 8, 4, 4)
    normal = torch.zeros(2, 1, 16, 16)
    anomalous = torch.ones(2, 1, 16, 16)
    # Identical features: 0 on normal pixels, cos = 1 on anomalous ones; summed over two levels.
    assert flipped_distillation_loss([t, t], [t, t], normal).item() == pytest.approx(0.0, abs=1e-6)
    assert flipped_distillation_loss([t, t], [t, t], anomalous).item() == pytest.approx(2.0, abs=1e-5)
    assert flipped_distillation_loss([t], [-t], anomalous).item() == pytest.approx(-1.0, abs=1e-5)
    # MSE: identical features give MSE 0, so exp(−0) = 1 on anomalous pixels.
    assert flipped_distillation_loss([t], [t], anomalous, "mse").item() == pytest.approx(1.0, abs=1e-6)
    # Right half anomalous: Y = 1 there (loss cos = 1), 0 on the left (loss 0): pixel mean 0.5.
    half = torch.zeros(1, 1, 16, 16)
    half[..., :, 8:] = 1.0
    loss = flipped_distillation_loss([t[:1]], [t[:1]], half).item()
    assert loss == pytest.approx(0.5, abs=1e-6)


def test_post_segmentation_module_output_at_input_resolution():
    psm = PostSegmentationModule([64, 128, 256], [4, 8, 16])
    weighted = [torch.randn(2, 64, 16, 16), torch.randn(2, 128, 8, 8), torch.randn(2, 256, 4, 4)]
    assert psm(weighted).shape == (2, 2, 64, 64)
    assert len(psm.skip_blocks) == 2 and len(psm.tail_blocks) == 2


# ----------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("overrides, size, message", [
    ({"patch_k": 3}, 64, "does not divide"),
    ({"patch_k": 16, "asym_stage": 1}, 64, "multiple of 8"),
    ({"asym_stage": 3}, 64, "asym_stage must be in 0..2"),
    ({"structure": "wo_t", "fusion": "concat"}, 64, "structure full"),
    ({"patch_k": 0}, 64, "patch_k must be >= 1"),
])
def test_impossible_values_are_user_errors(overrides, size, message):
    with pytest.raises(UserError, match=message):
        create_method("adps", size, {"backbone": "resnet18", **overrides})


def test_unknown_and_badly_typed_fields_are_user_errors():
    with pytest.raises(UserError, match="unknown adps config field 'patch_size'"):
        build_config("adps", {"patch_size": 4})
    with pytest.raises(UserError, match="structure must be one of"):
        build_config("adps", {"structure": "W/O PW"})
    cfg = build_config("adps", {"patch_k": 4.0, "texture_root": "textures"})
    assert cfg.patch_k == 4 and cfg.texture_root == "textures"


def test_paper_grid_k16_is_valid_at_256_even_fully_patch_local():
    cfg = build_config("adps", {"patch_k": 16, "asym_stage": 2})
    cfg.validate(256)
    create_method("adps", 256, {"backbone": "resnet18", "patch_k": 16, "asym_stage": 2})


def test_structure_variants_own_the_right_parts():
    parts = {}
    for structure in ("full", "wo_pw", "wo_t", "wo_s"):
        m = create_method("adps", 64, {"backbone": "resnet18", "structure": structure})
        parts[structure] = (m.teacher is not None, m.student is not None, m.psm is not None)
        trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
        assert "teacher" not in trainable
    assert parts == {"full": (True, True, True), "wo_pw": (True, True, False),
                     "wo_t": (False, True, True), "wo_s": (True, False, True)}


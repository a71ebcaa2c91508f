import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from kdsearch.errors import UserError
from kdsearch.nn import (
    FrozenTeacher,
    OneClassBottleneck,
    ReverseDecoder,
    ResidualBlock,
    bottleneck_width_factor,
    create_backbone,
    flattened_cosine_loss,
    gaussian_blur,
    residual_block_kind,
    stage_depths,
    top_k_mean,
    upsample_maps,
    cosine_distance_map,
)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy(sigma):
    maps = torch.rand(3, 37, 50, generator=torch.Generator().manual_seed(0))
    expected = np.stack([gaussian_filter(m, sigma) for m in maps.double().numpy()])
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-5)


def test_cosine_distance_and_loss_on_hand_made_features():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # pixel vectors (1,0) and (0,1)
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)  # both (1,0)
    np.testing.assert_allclose(cosine_distance_map(t, s).numpy(), [[[0.0, 1.0]]], atol=1e-6)
    # flattened vectors (1,0,0,1) and (1,1,0,0): cos = 1/2
    assert flattened_cosine_loss([t], [s]).item() == pytest.approx(0.5, abs=1e-6)


def test_upsample_and_top_k():
    maps = [torch.ones(2, 4, 4), torch.zeros(2, 8, 8)]
    up = upsample_maps(maps, (16, 16))
    assert up.shape == (2, 2, 16, 16) and up[0].min() == 1 and up[1].max() == 0
    m = torch.arange(10.0).reshape(1, 2, 5)
    assert top_k_mean(m, 3).item() == pytest.approx(8.0)
    with pytest.raises(ValueError):
        top_k_mean(m, 11)


@pytest.mark.parametrize("kind, scale, size", [("basic", "up", 16), ("bottleneck", "down", 4), ("bottleneck", "same", 8)])
def test_residual_block_shapes(kind, scale, size):
    block = ResidualBlock(16, 32, kind, width=8, scale=scale)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 32, size, size)


@pytest.mark.parametrize("backbone, kind, width, depths", [
    ("resnet18", "basic", 1.0, [2, 2, 2]),
    ("wide_resnet50_2", "bottleneck", 2.0, [3, 4, 6]),
])
def test_teacher_introspection_and_rd4ad_blocks(backbone, kind, width, depths):
    teacher = FrozenTeacher(backbone)
    assert residual_block_kind(teacher.encoder) == kind
    assert bottleneck_width_factor(teacher.encoder) == width
    assert stage_depths(teacher.encoder) == depths
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.encoder.training
    feats = teacher(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == teacher.channels
    assert [64 // f.shape[-1] for f in feats] == teacher.reductions == [4, 8, 16]
    ocbe = OneClassBottleneck(teacher.channels, teacher.reductions, depths[0], kind, width)
    code = ocbe(feats)
    assert code.shape == (2, 2 * teacher.channels[-1], 2, 2)
    decoded = ReverseDecoder(ocbe.out_channels, teacher.channels, depths, kind, width)(code)
    assert [d.shape for d in decoded] == [f.shape for f in feats]


def test_pretrained_path_loads_weights_and_missing_file_is_user_error(tmp_path):
    import timm

    reference = timm.create_model("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    loaded = create_backbone("resnet18", str(path))
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)
    with pytest.raises(UserError, match="does not exist"):
        create_backbone("resnet18", str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="unknown backbone"):
        create_backbone("resnet_nonexistent")


def test_auto_weights_unreachable_fails_fast_with_file_to_provide(monkeypatch):
    from kdsearch.nn import backbones

    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(backbones, "_cached_weight_file", lambda hub_id: None)
    with pytest.raises(UserError, match=r"wide_resnet50_2\.tv_in1k.*--pretrained PATH.*--pretrained none"):
        create_backbone("wide_resnet50_2", "auto")

import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.methods import create_method, list_methods


def test_registry_lists_rd4ad_and_rejects_unknown():
    assert "rd4ad" in list_methods()
    with pytest.raises(UserError, match="unknown method 'nope'"):
        create_method("nope", 64)
    with pytest.raises(UserError, match="unknown rd4ad config field 'patch_k'"):
        create_method("rd4ad", 64, {"patch_k": 4})
    with pytest.raises(UserError, match="multiple of 32"):
        create_method("rd4ad", 70, {"backbone": "resnet18"})


def test_rd4ad_shapes_and_loss_decreases():
    torch.manual_seed(0)
    method = create_method("rd4ad", 64, {"backbone": "resnet18", "lr": 0.005})
    optimizer, _ = method.configure_optimizer(epochs=1)
    batch = {"image": torch.randn(4, 3, 64, 64)}
    method.train()
    losses = []
    for _ in range(8):
        loss = method.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    method.eval()
    maps = method.anomaly_map(batch["image"])
    assert maps.shape == (4, 64, 64)
    assert torch.isfinite(maps).all() and maps.min() >= 0
    scores = method.image_score(maps)
    assert torch.allclose(scores, maps.flatten(1).amax(1))


def test_teacher_is_frozen_and_not_optimised():
    method = create_method("rd4ad", 64, {"backbone": "resnet18"})
    trainable = {id(p) for p in method.trainable_parameters()}
    assert all(id(p) not in trainable for p in method.network.teacher.parameters())
    assert trainable, "bottleneck and decoder must be trainable"


def test_lr_milestones_are_fractions_of_the_budget():
    method = create_method("rd4ad", 64, {"backbone": "resnet18", "lr_milestones": [0.8, 0.9], "lr_gamma": 0.2})
    optimizer, scheduler = method.configure_optimizer(epochs=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[7] == pytest.approx(0.005) and lrs[8] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.0002)
    with pytest.raises(UserError, match="fractions"):
        create_method("rd4ad", 64, {"backbone": "resnet18", "lr_milestones": [240]})

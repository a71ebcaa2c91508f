"""CUDA autocast's rules, enforced on the CPU path.

A GPU is lent only now and then, so a change that breaks the CUDA code path must fail
here first. Forcing ``precision=bf16`` on a CPU runs that path (bf16 activations meeting
fp32 losses); :class:`CudaAutocastRules` then refuses every op that CUDA autocast refuses,
while autocast is on, whatever device the op runs on.

PyTorch's autocast reference ("Autocast Op Reference", and ``autocast_mode.cpp``'s CUDA
table) bans ``binary_cross_entropy`` (``F.binary_cross_entropy`` and ``nn.BCELoss``)
inside an autocast region: it raises rather than run, since the op is unsafe in half
precision. CPU autocast lets it through, which is why a CPU run cannot see the failure
by itself. ``binary_cross_entropy_with_logits`` is allowed and autocasts to float32.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from kdsearch.loop import fit_and_evaluate
from kdsearch.methods import create_method, list_methods
from kdsearch.settings import single_trial

# What CUDA autocast refuses, as Python reaches it (``nn.BCELoss`` calls the functional).
CUDA_AUTOCAST_BANNED = frozenset({F.binary_cross_entropy, torch._C._nn.binary_cross_entropy})


class CudaAutocastRules(TorchFunctionMode):
    """Raise on any op CUDA autocast refuses, while autocast is enabled on any device.

    A function mode sees each call before dispatch, where the autocast state is the
    caller's; below the autocast kernel the state already reads as off.
    """

    def __init__(self) -> None:
        super().__init__()
        self.checked_ops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        autocasting = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
        if autocasting:
            self.checked_ops += 1
            if func in CUDA_AUTOCAST_BANNED:
                raise RuntimeError(f"{func.__name__} runs under autocast; CUDA autocast refuses it "
                                   "(compute it outside autocast, or from logits)")
        return func(*args, **(kwargs or {}))


def test_the_guard_refuses_what_cuda_autocast_refuses() -> None:
    probabilities = torch.rand(4, requires_grad=True)
    target = torch.ones(4)
    with CudaAutocastRules(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="CUDA autocast refuses"):
            F.binary_cross_entropy(probabilities, target)
        with pytest.raises(RuntimeError, match="CUDA autocast refuses"):
            torch.nn.BCELoss()(probabilities, target)
        F.binary_cross_entropy_with_logits(probabilities, target)  # allowed on CUDA
    with CudaAutocastRules():
        F.binary_cross_entropy(probabilities, target).backward()  # outside autocast: fine


@pytest.mark.parametrize("method", list_methods())
def test_every_training_phase_follows_cuda_autocast_rules(method: str) -> None:
    """Every phase of every method, trained and evaluated in forced bf16 (CUDA's path)."""
    trial = single_trial(method, "smoke", {"device": "cpu", "precision": "bf16", "epochs": 1,
                                      "memory_format": "channels_last"})
    guard = CudaAutocastRules()
    with guard:
        outcome = fit_and_evaluate(trial, progress=False)
    assert outcome.status == "ok", outcome.error
    assert guard.checked_ops > 100  # the guard really watched the autocast regions
    # Every phase ran its steps under the guard: each logs its loss.
    phases = create_method(method, trial.train.image_size, trial.method_config).training_phases(1)
    expected = {"loss" if phase.name == "main" else f"{phase.name}_loss" for phase in phases}
    assert expected <= set(outcome.epoch_records[0]), outcome.epoch_records[0]


def _perturbed(method_name: str):
    """An untrained method whose maps vary from pixel to pixel (DMDD's untrained student equals
    its teacher, so its maps would be all zero)."""
    torch.manual_seed(0)
    method = create_method(method_name, 64, {"backbone": "resnet18"})
    if method_name == "dmdd":
        with torch.no_grad():
            for split in method.student.splits:
                split.weight.add_(0.05 * torch.randn_like(split.weight))
    return method.eval()


@pytest.mark.parametrize("method_name", list_methods())
def test_maps_and_scores_are_fp32_under_bf16_autocast(method_name: str) -> None:
    # Under bf16 a map has 8 mantissa bits: most pixels fall on the same few values and the
    # metrics break the ties arbitrarily. Maps must be computed in fp32 whatever autocast runs.
    from kdsearch.evaluate import predict
    from kdsearch.numerics import resolve_numerics

    images = torch.rand(4, 3, 64, 64)
    maps, scores = predict(_perturbed(method_name), images, 4, resolve_numerics(torch.device("cpu"), "bf16"))
    assert maps.dtype == torch.float32 and scores.dtype == torch.float32
    on_bf16_grid = (maps.bfloat16().float() == maps).float().mean().item()
    assert on_bf16_grid < 0.5, f"{on_bf16_grid:.0%} of {method_name}'s map values are bf16 values"
    assert maps.unique().numel() > maps.numel() // 4


@pytest.mark.parametrize("fusion", ["abs_diff", "concat"])
def test_every_adps_fusion_maps_under_bf16_autocast(fusion: str) -> None:
    # The fp32 map turns autocast off while the features are bf16: a learned fusion (concat's
    # conv) must take its weights' dtype there instead of failing on a dtype mismatch.
    from kdsearch.evaluate import predict
    from kdsearch.numerics import resolve_numerics

    torch.manual_seed(0)
    method = create_method("adps", 64, {"backbone": "resnet18", "fusion": fusion}).eval()
    maps, _ = predict(method, torch.rand(2, 3, 64, 64), 2, resolve_numerics(torch.device("cpu"), "bf16"))
    assert maps.dtype == torch.float32 and maps.shape == (2, 64, 64) and torch.isfinite(maps).all()

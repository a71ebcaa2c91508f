"""A trained module keeps its config: scoring settings are an argument of the scoring, never a swap."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from kdsearch.evaluate import predict
from kdsearch.methods import create_method
from kdsearch.numerics import Numerics
from kdsearch.settings import single_trial

CPU = Numerics(device=torch.device("cpu"), autocast_dtype=None, channels_last=False)

# A scoring variant of each method: its inference fields set away from the trained ones.
VARIANTS = [
    ("rd4ad", {}, {"gaussian_sigma": 1.0}),
    ("dskd", {}, {"score_maps": (2,), "gaussian_sigma": 2.0}),
    ("mrkd", {}, {"score_maps": (1, 3), "flm_at_test": False}),
    ("mrkd", {"flm_at_test": False}, {"flm_at_test": True}),  # masks drawn at test time
    ("dmdd", {"msn": False}, {"score_top_k": 10, "gaussian_sigma": 1.0}),
    ("adps", {}, {"gaussian_sigma": 1.0}),  # the PSM's map, blurred in the image score
    ("adps", {"structure": "wo_pw"}, {"gaussian_sigma": 1.0}),  # the distances' map, blurred
]


def _trained(method: str, settings: dict):
    """A module of ``method``'s smoke trial with weights of its own (no training needed: any
    weights serve to compare two scorings of them)."""
    trial = single_trial(method, "smoke", settings)
    torch.manual_seed(0)
    module = create_method(method, trial.train.image_size, trial.method_config)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return module.eval(), trial.train.image_size


def _scored(module, images, scoring=None):
    torch.manual_seed(1)  # MRKD's test-time masks draw the same in both
    return predict(module, images, 2, CPU, scoring)


def test_a_modules_config_cannot_be_swapped() -> None:
    module, _ = _trained("rd4ad", {})
    with pytest.raises(AttributeError):
        module.config = dataclasses.replace(module.config, gaussian_sigma=1.0)
    assert module.config.gaussian_sigma == 4.0


@pytest.mark.parametrize(("method", "settings", "variant"), VARIANTS)
def test_scoring_a_variant_equals_a_module_built_with_it(method, settings, variant) -> None:
    """Bit-identical to the variant's own module on the same weights; the trained module's
    config is unchanged afterwards and its own scoring differs from the variant's."""
    module, size = _trained(method, settings)
    trained = module.config
    scoring = dataclasses.replace(trained, **variant)
    assert set(variant) <= set(trained.inference_fields())
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)

    maps, scores = _scored(module, images, scoring)
    assert module.config is trained

    own = create_method(method, size, scoring)
    own.load_state_dict(module.state_dict())
    own_maps, own_scores = _scored(own.eval(), images)
    assert torch.equal(maps, own_maps) and torch.equal(scores, own_scores)

    default_maps, default_scores = _scored(module, images)
    assert not (torch.equal(maps, default_maps) and torch.equal(scores, default_scores))


def test_only_the_inference_fields_of_the_scoring_settings_act() -> None:
    """The trained model's own fields decide the rest (DSKD's λ is in its training loss)."""
    module, size = _trained("dskd", {})
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    scoring = dataclasses.replace(module.config, lambda_l2=0.5, score_maps=(1,))
    assert module.scoring_config(scoring) == dataclasses.replace(module.config, score_maps=(1,))
    assert module.scoring_config(None) is module.config and module.scoring_config(module.config) is module.config
    assert torch.equal(_scored(module, images, scoring)[0],
                       _scored(module, images, dataclasses.replace(module.config, score_maps=(1,)))[0])
    with pytest.raises(TypeError, match="DSKDConfig expected, got RD4ADConfig"):
        module.scoring_config(_trained("rd4ad", {})[0].config)

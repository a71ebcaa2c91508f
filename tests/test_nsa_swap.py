"""MRKD's official NSA call: a patch of the image itself, shifted, copied (kdsearch.synthesis.nsa_swap)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.synthesis import AnomalySynthesizer, SynthesisConfig, nsa_swap_synthesize, object_foreground_threshold
from kdsearch.trial import check_explicit_settings, explicit_names
from kdsearch.settings import single_trial

# MVTec AD categories with a BACKGROUND entry in MRKD's main.py, and that entry (b, t).
CODE_BACKGROUNDS = {"bottle": (200, 60), "screw": (200, 60), "capsule": (200, 60), "zipper": (200, 60),
                    "hazelnut": (20, 20), "pill": (20, 20), "toothbrush": (20, 20), "metal_nut": (20, 20)}


def _scene(batch: int = 24, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Textured discs on a bright background, and their object masks."""
    g = torch.Generator().manual_seed(0)
    axis = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    disc = ((y - size / 2) ** 2 + (x - size / 2) ** 2 < (0.35 * size) ** 2).float()
    grain = torch.rand(batch, 3, size, size, generator=g) * 0.3
    images = disc * (0.2 + grain) + (1 - disc) * 0.85
    # On uint8 levels, as decoded images are: a copied pixel keeps its exact value.
    return (images.clamp(0, 1) * 255).round() / 255, disc.expand(batch, 1, size, size).clone()


def test_patches_come_from_the_image_itself_and_move_only_object_pixels() -> None:
    images, objects = _scene()
    anomalous, masks = nsa_swap_synthesize(images, np.random.default_rng(0), foreground=objects, num_patches=(1, 3),
                                           half_width_bounds=((0.03, 0.2), (0.03, 0.2)), min_object_fraction=0.7)
    changed = ((anomalous - images).abs().mean(dim=1, keepdim=True) > 0).float()
    # The code's label: the changed pixels, median-filtered (isolated ones dropped, gaps filled).
    assert (masks != changed).float().mean() < 0.1 * changed.mean()
    # Only pixels that are object at the cut or at the destination move: on the destination's
    # background (a flat 0.85) a changed pixel took an object value from the cut.
    on_background = (changed > 0) & (objects == 0)
    assert bool((anomalous.mean(dim=1, keepdim=True)[on_background] < 0.6).all())
    assert changed[objects > 0].sum() > 4 * on_background.sum()  # cuts and destinations lie on the object
    assert bool((masks.flatten(1).sum(dim=1) > 0).all())  # every image anomalous
    # Copied, not blended: every new value is a value of the same image's original.
    for b in range(len(images)):
        new = anomalous[b][:, changed[b, 0] > 0].T
        old = images[b].flatten(1).T
        assert bool(torch.isin(new[:, 0], old[:, 0]).all())


def test_width_bounds_and_patch_count_follow_the_table() -> None:
    images, _ = _scene(48, 256)
    _, small = nsa_swap_synthesize(images, np.random.default_rng(1), num_patches=(1, 1),
                                   half_width_bounds=((0.01, 0.01), (0.01, 0.01)))
    # Toothbrush: half-width round(0.01 * 256) = 3 px, one patch: at most a 6 x 6 square moves.
    assert bool((small.flatten(1).sum(dim=1) <= 36).all())
    _, large = nsa_swap_synthesize(images, np.random.default_rng(1), num_patches=(1, 4),
                                   half_width_bounds=((0.03, 0.4), (0.03, 0.4)))
    assert large.mean() > 20 * small.mean()


def test_the_synthesizer_dispatches_swap_and_refuses_blend_settings() -> None:
    images, _ = _scene(8, 64)
    synth = AnomalySynthesizer(SynthesisConfig(kind="nsa", nsa_mode="swap", nsa_num_patches=(1, 1)))
    synth.prepare((images * 255).round().to(torch.uint8))
    first = synth(images, 3, indices=torch.arange(8))
    again = synth(images, 3, indices=torch.arange(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    settings = {"synthesis.nsa_mode": "swap", "synthesis.nsa_blend": "torch"}
    with pytest.raises(UserError, match="synthesis.nsa_blend is set but nothing uses it"):
        check_explicit_settings([("row", single_trial("mrkd", "smoke", settings), explicit_names("mrkd", settings))])


def test_the_paper_profile_follows_mrkds_official_call_per_category() -> None:
    capsule = single_trial("mrkd", "paper", {"category": "capsule", "pretrained": "none"})
    assert capsule.method_config.ilm and capsule.synthesis.probability == 1.0  # every training image
    synthesis = capsule.synthesis
    assert synthesis.nsa_mode == "swap" and synthesis.nsa_num_patches == (1, 1)
    assert synthesis.nsa_half_width_bounds == ((0.01, 0.05), (0.01, 0.05))
    assert synthesis.foreground == "threshold" and synthesis.nsa_min_object_fraction == 0.7
    assert round(synthesis.threshold_background * 255) == 200 and round(synthesis.threshold_level * 255) == 60
    cable = single_trial("mrkd", "paper", {"category": "cable", "pretrained": "none"}).synthesis
    assert cable.foreground == "none" and cable.nsa_num_patches == (1, 3)
    assert cable.nsa_half_width_bounds == ((0.01, 0.05), (0.01, 0.1))
    hazelnut = single_trial("mrkd", "paper", {"category": "hazelnut", "pretrained": "none"}).synthesis
    assert round(hazelnut.threshold_background * 255) == 20 and hazelnut.nsa_half_width_bounds[0] == (0.03, 0.35)
    # The first category when none is given gets its own row of the table; --set still wins.
    first = single_trial("mrkd", "paper", {"pretrained": "none"})
    assert first.train.category == "bottle" and first.synthesis.nsa_num_patches == (1, 3)
    chosen = single_trial("mrkd", "paper", {"category": "capsule", "pretrained": "none", "synthesis.nsa_num_patches": [1, 2]})
    assert chosen.synthesis.nsa_num_patches == (1, 2)
    # quick keeps the text's blended reading.
    assert single_trial("mrkd", "quick", {}).synthesis.nsa_mode == "auto"


def test_capsule_like_images_get_about_one_percent_changed_and_keep_what_the_label_drops() -> None:
    images, objects = _scene(32, 256)
    capsule = single_trial("mrkd", "paper", {"category": "capsule", "pretrained": "none"}).synthesis
    synth = AnomalySynthesizer(capsule)
    synth.prepare((images * 255).round().to(torch.uint8))
    anomalous, masks = synth(images, 0, indices=torch.arange(32))
    changed = (anomalous != images).any(dim=1, keepdim=True)
    assert 0.002 < masks.mean() < 0.02  # the text's blended reading labels 6-8 %
    # The image is what MRKD trains on: changed pixels the median drops from the label stay.
    assert changed.float().mean() > masks.mean()
    assert bool((changed & (masks == 0)).any())


def test_every_copied_pixel_stays_in_the_image_where_the_label_drops_it() -> None:
    # Bright dots 6 px apart on grey: a shifted patch moves dots, and every changed pixel is
    # isolated, so the code's 5x5 median leaves no label, yet the image it trains on changed.
    images = torch.full((16, 3, 64, 64), 128 / 255)
    images[:, :, 2::6, 2::6] = 1.0
    anomalous, masks = nsa_swap_synthesize(images, np.random.default_rng(0), num_patches=(1, 1),
                                           half_width_bounds=((0.05, 0.1), (0.05, 0.1)))
    changed = (anomalous != images).any(dim=1)
    assert masks.sum() == 0
    assert changed.flatten(1).any(dim=1).sum() >= 8  # most shifts are not multiples of the dot spacing
    assert bool(torch.isin(anomalous[changed.unsqueeze(1).expand_as(anomalous)], torch.tensor([128 / 255, 1.0])).all())


def test_the_label_is_the_codes_median_filtered_change() -> None:
    # One patch on the whole image (no object mask): the copied set is the destination box, so
    # the code's label is the 5x5 median of the pixels whose mean change exceeds one grey level.
    images, _ = _scene(16, 96)
    anomalous, masks = nsa_swap_synthesize(images, np.random.default_rng(2), num_patches=(1, 1),
                                           half_width_bounds=((0.05, 0.2), (0.05, 0.2)))
    change = ((anomalous - images) * 255).abs().mean(dim=1) > 1.0 + 1e-4
    expected = np.stack([cv2.medianBlur(c.numpy().astype(np.uint8), 5) for c in change])
    assert torch.equal(masks[:, 0].bool(), torch.from_numpy(expected).bool())
    assert bool((masks[:, 0].bool() & ~change).any())  # the filter fills gaps: a label, not the change


@pytest.mark.parametrize("category", ["capsule", "hazelnut"])
def test_the_object_rule_is_the_codes_integer_rule(category: str) -> None:
    background, level = CODE_BACKGROUNDS[category]
    synthesis = single_trial("mrkd", "paper", {"category": category, "pretrained": "none"}).synthesis
    # The YAML's values give the code's integers back exactly.
    assert synthesis.threshold_background * 255 == background and synthesis.threshold_level * 255 == level
    # Channel means exactly t from b are background (|mean - b| > t fails), a third of a grey
    # level further is object: on the left the boundary value, on the right one step beyond.
    edge = background - level if background > level else background + level
    step = -1 if background > level else 1
    image = torch.full((1, 3, 64, 64), float(background))
    image[0, :, :, :24] = torch.tensor([edge - 1, edge, edge + 1]).view(3, 1, 1)  # mean exactly edge
    image[0, :, :, 40:] = torch.tensor([edge, edge, edge + step]).view(3, 1, 1)  # mean edge +- 1/3
    mask = object_foreground_threshold(image / 255, background=synthesis.threshold_background,
                                       threshold=synthesis.threshold_level)[0, 0]
    assert not mask[:, :24].any() and bool(mask[:, 40:].all()) and not mask[:, 24:40].any()


def test_every_table_background_is_in_whole_grey_levels() -> None:
    for category, (background, level) in CODE_BACKGROUNDS.items():
        synthesis = single_trial("mrkd", "paper", {"category": category, "pretrained": "none"}).synthesis
        assert synthesis.foreground == "threshold", category
        assert (synthesis.threshold_background * 255, synthesis.threshold_level * 255) == (background, level), category


@pytest.mark.parametrize("background, level", [(200, 60), (20, 20), (1, 3), (2, 7), (128, 25), (255, 100)])
def test_the_object_rule_compares_channel_sums_without_rounding(background: int, level: int) -> None:
    # Every channel sum 0..765 once: object exactly where |sum - 3b| > 3t, NSA's |mean - b| > t.
    sums = torch.arange(766)
    image = torch.stack([sums // 3, (sums + 1) // 3, (sums + 2) // 3]).view(1, 3, 1, 766)
    mask = object_foreground_threshold(image.to(torch.uint8), background=background / 255, threshold=level / 255,
                                       median_kernel=1, min_fraction=0.0, max_fraction=1.0)[0, 0, 0]
    assert torch.equal(mask.bool(), (sums - 3 * background).abs() > 3 * level)

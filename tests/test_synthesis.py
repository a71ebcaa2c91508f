"""Tests of kdsearch.synthesis: Perlin masks, texture banks, DRAEM, NSA, foregrounds."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.synthesis import (
    AnomalySynthesizer,
    SynthesisConfig,
    TextureBank,
    draem_synthesize,
    grabcut_foreground,
    nsa_synthesize,
    object_foreground_threshold,
    perlin_masks,
    perlin_noise,
    random_color_augment,
)

TOL = 1.0 / 255.0


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _textured_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour patterns plus grain: gradients everywhere, values inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.arange(size, dtype=torch.float32) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    images = []
    for _ in range(batch):
        freq = 2.0 + 6.0 * torch.rand(3, 2, generator=g)
        phase = 2.0 * math.pi * torch.rand(3, generator=g)
        waves = [torch.sin(2 * math.pi * (f[0] * y + f[1] * x) + p) for f, p in zip(freq, phase)]
        grain = 0.05 * torch.rand(3, size, size, generator=g)
        images.append(0.45 + 0.25 * torch.stack(waves) + grain)
    return torch.stack(images).clamp(0.0, 1.0)


def _disc_image(size: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disc on a dark noisy background, as float (1, 3, S, S), and the disc mask (S, S)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size * 0.5) ** 2 + (xx - size * 0.47) ** 2 < (size * 0.27) ** 2
    image = rng.normal(40, 15, (size, size, 3))
    image[disc] = rng.normal(200, 15, (int(disc.sum()), 3))
    tensor = torch.from_numpy(image.clip(0, 255).astype(np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    return tensor, torch.from_numpy(disc)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / float((a | b).sum())


def _changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (after != before).any(dim=1, keepdim=True).float()


@pytest.fixture(scope="module")
def bank() -> TextureBank:
    return TextureBank.procedural(64, count=16, seed=0)


# ---------------------------------------------------------------- Perlin


def test_perlin_noise_range_smooth_and_reproducible() -> None:
    noise = perlin_noise((3, 64, 80), (4, 8), _gen(1), "cpu")
    assert noise.shape == (3, 64, 80) and noise.dtype == torch.float32
    assert noise.abs().max() <= 1.5
    assert noise.std() > 0.1  # not flat
    # Smooth: a step of one pixel moves the field far less than its range.
    assert noise.diff(dim=1).abs().max() < 0.25
    assert noise.diff(dim=2).abs().max() < 0.25
    assert torch.equal(noise, perlin_noise((3, 64, 80), (4, 8), _gen(1), "cpu"))
    assert not torch.equal(noise, perlin_noise((3, 64, 80), (4, 8), _gen(2), "cpu"))
    # Batch entries get their own gradients.
    assert not torch.equal(noise[0], noise[1])


def test_perlin_noise_is_zero_on_lattice_points() -> None:
    # Perlin noise vanishes at lattice corners: a check that the gradients and offsets line up.
    noise = perlin_noise((2, 32, 32), (4, 4), _gen(0), "cpu")
    assert noise[:, ::8, ::8].abs().max() < 1e-5


def test_perlin_masks_binary_and_reproducible() -> None:
    masks = perlin_masks(16, (48, 64), _gen(3), "cpu")
    assert masks.shape == (16, 1, 48, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks, perlin_masks(16, (48, 64), _gen(3), "cpu"))
    assert 0.0 < masks.mean() < 0.5  # thresholding at 0.5 keeps a minority of pixels


# ---------------------------------------------------------------- textures


def test_procedural_bank_deterministic_in_range_and_diverse(bank: TextureBank) -> None:
    again = TextureBank.procedural(64, count=16, seed=0)
    assert torch.equal(bank.textures, again.textures)
    assert len(bank) == 16 and bank.size == (64, 64) and bank.textures.dtype == torch.uint8
    other = TextureBank.procedural(64, count=16, seed=1)
    assert not torch.equal(bank.textures, other.textures)
    flat = bank.textures.float().flatten(1) / 255.0
    distance = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    off_diagonal = distance[~torch.eye(len(bank), dtype=torch.bool)]
    assert off_diagonal.min() > 0.02  # every pair clearly different
    assert bool((flat.std(dim=1) > 0.02).all())  # no flat texture


def test_bank_sample_deterministic_and_in_unit_range(bank: TextureBank) -> None:
    a = bank.sample(8, _gen(5))
    b = bank.sample(8, _gen(5))
    assert a.shape == (8, 3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_color_augment_changes_images_and_stays_in_range() -> None:
    images = _textured_images(6, 32)
    out = random_color_augment(images, _gen(0), num_ops=3)
    assert out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert bool(((out - images).abs().flatten(1).amax(1) > 0).all())
    assert torch.equal(random_color_augment(images, _gen(0), num_ops=0), images)


def test_bank_from_directory_loads_rgb_recursively(tmp_path) -> None:
    (tmp_path / "banded").mkdir()
    (tmp_path / "dotted" / "deeper").mkdir(parents=True)
    red = np.zeros((40, 30, 3), np.uint8)
    red[..., 2] = 255  # OpenCV writes BGR: this is pure red
    cv2.imwrite(str(tmp_path / "banded" / "a.png"), red)
    cv2.imwrite(str(tmp_path / "dotted" / "deeper" / "b.png"), np.full((20, 20, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "dotted" / "c.jpg"), np.full((50, 50, 3), 60, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    bank = TextureBank.from_directory(tmp_path, 16)
    assert len(bank) == 3 and bank.size == (16, 16)
    first = bank.textures[0].float()  # sorted paths: banded/a.png first
    assert first[0].mean() > 250 and first[1].mean() < 5 and first[2].mean() < 5
    assert len(TextureBank.from_directory(tmp_path, 16, max_images=2)) == 2


def test_bank_from_directory_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="no \\*.jpg or \\*.png"):
        TextureBank.from_directory(tmp_path, 16)
    with pytest.raises(UserError, match="not a folder"):
        TextureBank.from_directory(tmp_path / "missing", 16)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode"):
        TextureBank.from_directory(tmp_path, 16)


# ---------------------------------------------------------------- DRAEM


def test_draem_mask_covers_every_changed_pixel(bank: TextureBank) -> None:
    images = _textured_images(12, 64)
    anomalous, masks = draem_synthesize(images, bank, _gen(0))
    assert anomalous.shape == images.shape and masks.shape == (12, 1, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # Nothing outside the mask moved at all; the mask is the Perlin region (DRAEM's label),
    # so it holds every changed pixel.
    assert torch.equal(anomalous * (1 - masks), images * (1 - masks))
    assert bool((masks >= _changed(images, anomalous)).all())
    assert anomalous.min() >= 0.0 and anomalous.max() <= 1.0
    assert int((masks.flatten(1).sum(1) > 0).sum()) >= 10  # nearly every image anomalous


def test_draem_exact_labels_on_request(bank: TextureBank) -> None:
    images = _textured_images(12, 64)
    anomalous, masks = draem_synthesize(images, bank, _gen(0), change_tolerance=TOL)
    assert torch.equal(masks, _changed(images, anomalous))
    inside = masks[:, 0] > 0
    assert bool(((anomalous - images).abs().mean(1)[inside] > TOL).all())


def test_draem_reproducible_with_fixed_seed(bank: TextureBank) -> None:
    images = _textured_images(6, 64)
    first = draem_synthesize(images, bank, _gen(7), anomaly_probability=0.5)
    second = draem_synthesize(images, bank, _gen(7), anomaly_probability=0.5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    third = draem_synthesize(images, bank, _gen(8), anomaly_probability=0.5)
    assert not torch.equal(first[1], third[1])


def test_draem_probability_zero_and_opaque_beta_leave_images_unchanged(bank: TextureBank) -> None:
    images = _textured_images(4, 64)
    anomalous, masks = draem_synthesize(images, bank, _gen(0), anomaly_probability=0.0)
    assert torch.equal(anomalous, images) and masks.sum() == 0
    # β = 1 keeps the original inside the mask: nothing changes; DRAEM's label is still the
    # Perlin region, the exact label empty.
    anomalous, masks = draem_synthesize(images, bank, _gen(0), beta_range=(1.0, 1.0))
    assert torch.equal(anomalous, images) and masks.sum() > 0
    anomalous, masks = draem_synthesize(images, bank, _gen(0), beta_range=(1.0, 1.0), change_tolerance=TOL)
    assert torch.equal(anomalous, images) and masks.sum() == 0


def test_draem_respects_foreground(bank: TextureBank) -> None:
    images = _textured_images(8, 64)
    foreground = torch.zeros(8, 1, 64, 64)
    foreground[:, :, 16:48, 8:40] = 1.0
    foreground[3] = 0.0  # an image without foreground stays normal
    anomalous, masks = draem_synthesize(images, bank, _gen(2), foreground=foreground)
    changed = _changed(images, anomalous)
    assert bool((masks >= changed).all())
    assert masks[foreground == 0].sum() == 0 and changed[foreground == 0].sum() == 0
    assert masks[3].sum() == 0 and torch.equal(anomalous[3], images[3])
    assert int((masks.flatten(1).sum(1) > 0).sum()) >= 6  # retries keep FAS from starving


def test_draem_resizes_texture_bank_and_keeps_dtype(bank: TextureBank) -> None:
    images = _textured_images(2, 48).double()
    anomalous, masks = draem_synthesize(images, bank, _gen(0))
    assert anomalous.dtype == torch.float64 and masks.dtype == torch.float64
    assert bool((masks >= _changed(images, anomalous)).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_draem_on_cuda_matches_cpu_for_cpu_generator(bank: TextureBank) -> None:
    images = _textured_images(4, 64)
    cpu = draem_synthesize(images, bank, _gen(4))
    gpu = draem_synthesize(images.cuda(), bank.to("cuda"), _gen(4))
    assert gpu[0].device.type == "cuda" and gpu[1].device.type == "cuda"
    assert bool((gpu[1] >= _changed(images.cuda(), gpu[0])).all())
    # Same draws; masks may differ only where the noise sits at the threshold.
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 1e-3


# ---------------------------------------------------------------- NSA


def test_nsa_mask_equals_changed_pixels_and_is_reproducible() -> None:
    images = _textured_images(6, 96)
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    anomalous, masks = nsa_synthesize(images, images, rng_a, image_indices=range(6))
    again, masks_again = nsa_synthesize(images, images, rng_b, image_indices=range(6))
    assert torch.equal(anomalous, again) and torch.equal(masks, masks_again)
    assert masks.shape == (6, 1, 96, 96) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks, _changed(images, anomalous))
    assert torch.equal(anomalous * (1 - masks), images * (1 - masks))
    assert int((masks.flatten(1).sum(1) > 0).sum()) >= 5
    assert anomalous.min() >= 0.0 and anomalous.max() <= 1.0


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_nsa_blended_in_torch_matches_opencv_and_keeps_its_labels_exact(mode: str) -> None:
    """The batched torch solve (CUDA's default) against OpenCV per image, on the same draws."""
    images = _textured_images(12, 96)
    by_opencv = nsa_synthesize(images, images, np.random.default_rng(5), image_indices=range(12), mode=mode,
                               blend="opencv")
    by_torch = nsa_synthesize(images, images, np.random.default_rng(5), image_indices=range(12), mode=mode,
                              blend="torch", workers=1)
    again = nsa_synthesize(images, images, np.random.default_rng(5), image_indices=range(12), mode=mode,
                           blend="torch", workers=3)
    assert torch.equal(by_torch[0], again[0]) and torch.equal(by_torch[1], again[1])
    assert torch.equal(by_torch[1], _changed(images, by_torch[0]))
    assert (by_torch[0] - by_opencv[0]).abs().max().item() * 255 <= 3  # up to a grey level per blended patch
    overlap = (by_torch[1] * by_opencv[1]).sum() / ((by_torch[1] + by_opencv[1]) > 0).sum()
    assert overlap > 0.99 and by_torch[1].sum() > 0


def test_nsa_on_the_device_keeps_foregrounds_sources_and_exact_labels() -> None:
    """The device path with object foregrounds (the MRKD setting), a uint8 pool and no indices."""
    images = _textured_images(8, 96, seed=3)
    foreground = torch.zeros(8, 1, 96, 96, dtype=torch.bool)
    foreground[:, :, 20:84, 16:70] = True
    foreground[5] = False
    pool = (images * 255).round().to(torch.uint8).contiguous(memory_format=torch.channels_last)
    kwargs = {"foreground": foreground, "source_foreground": foreground, "image_indices": range(8)}
    by_torch = nsa_synthesize(images, pool, np.random.default_rng(9), blend="torch", **kwargs)
    by_opencv = nsa_synthesize(images, pool, np.random.default_rng(9), blend="opencv", **kwargs)
    changed = _changed(images, by_torch[0])
    assert torch.equal(by_torch[1], changed)
    assert changed[~foreground].sum() == 0 and changed[5].sum() == 0
    assert int((changed.flatten(1).sum(1) > 0).sum()) >= 5
    # Same draws as OpenCV: the same patches land in the same places.
    overlap = (by_torch[1] * by_opencv[1]).sum() / ((by_torch[1] + by_opencv[1]) > 0).sum()
    assert overlap > 0.98
    # Without indices a source equal to the image is avoided by comparison, as on the OpenCV path.
    alone = nsa_synthesize(images, images, np.random.default_rng(2), blend="torch")
    assert torch.equal(alone[1], _changed(images, alone[0])) and alone[1].sum() > 0


@pytest.mark.parametrize("kernel", [3, 5])
def test_binary_median_equals_opencv_median_blur(kernel: int) -> None:
    from kdsearch.synthesis.nsa_device import binary_median

    rng = np.random.default_rng(kernel)
    masks = rng.random((6, 40, 33)) < np.linspace(0.2, 0.8, 6)[:, None, None]
    masks[0, :, :3] = True  # a full edge column: the replicated border decides it
    ours = binary_median(torch.from_numpy(masks)[:, None], kernel)[:, 0].numpy()
    for mask, got in zip(masks, ours):
        assert np.array_equal(got, cv2.medianBlur(mask.astype(np.uint8), kernel) > 0)


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 1.0 / 255.0 * 255.0, 2.5, 255.0])
def test_device_change_rule_equals_the_mean_over_channels(tolerance: float) -> None:
    from kdsearch.synthesis.nsa_device import _least_changed_sum

    least = _least_changed_sum(tolerance)
    sums = np.arange(3 * 255 + 1)
    assert np.array_equal(sums >= least, sums / 3.0 > tolerance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nsa_on_cuda_matches_the_torch_path_on_a_cpu() -> None:
    images = _textured_images(8, 128, seed=4)
    cpu = nsa_synthesize(images, images, np.random.default_rng(3), image_indices=range(8), blend="torch")
    gpu = nsa_synthesize(images.cuda(), images, np.random.default_rng(3), image_indices=range(8), blend="torch")
    assert gpu[0].device.type == "cuda"
    assert bool((gpu[1] >= _changed(images.cuda(), gpu[0])).all())
    overlap = (gpu[1].cpu() * cpu[1]).sum() / ((gpu[1].cpu() + cpu[1]) > 0).sum()
    assert overlap > 0.99


def test_nsa_blend_auto_is_torch_on_cuda_and_opencv_on_a_cpu() -> None:
    from kdsearch.synthesis.nsa import resolve_blend

    assert resolve_blend("auto", torch.device("cpu")) == "opencv"
    assert resolve_blend("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_blend("opencv", torch.device("cuda", 0)) == "opencv"
    with pytest.raises(ValueError, match="blend must be one of"):
        resolve_blend("gpu", torch.device("cpu"))


def test_nsa_takes_patches_from_another_image() -> None:
    size = 96
    flat = torch.full((3, size, size), 0.5)
    stripes = flat.clone()
    stripes[:, :, ::4] = 0.9
    stripes[:, :, 2::4] = 0.1
    sources = torch.stack([flat, stripes])
    # The image is source 0 itself; pasting from it would change nothing, so every
    # change must come from the striped image, whose gradients the blend transfers.
    anomalous, masks = nsa_synthesize(flat[None], sources, np.random.default_rng(0), image_indices=[0],
                                      mode="normal")
    assert masks.sum() > 50
    assert torch.equal(masks, _changed(flat[None], anomalous))
    inside = masks[0, 0] > 0
    horizontal_detail = (anomalous[0, :, :, 1:] - anomalous[0, :, :, :-1]).abs().mean(0)
    assert horizontal_detail[inside[:, 1:]].mean() > 0.1


def test_nsa_skips_negligible_patches() -> None:
    # Flat images pasted with flat sources: Poisson blending reproduces the destination,
    # so every patch is negligible and no image may carry a label.
    images = torch.full((3, 3, 64, 64), 0.4)
    sources = torch.stack([torch.full((3, 64, 64), v) for v in (0.1, 0.6, 0.9)])
    anomalous, masks = nsa_synthesize(images, sources, np.random.default_rng(0))
    assert masks.sum() == 0 and torch.equal(anomalous, images)


def test_nsa_probability_zero_and_foreground() -> None:
    images = _textured_images(4, 96)
    anomalous, masks = nsa_synthesize(images, images, np.random.default_rng(0), anomaly_probability=0.0)
    assert torch.equal(anomalous, images) and masks.sum() == 0
    foreground = torch.zeros(4, 1, 96, 96)
    foreground[:, :, 24:80, 20:76] = 1.0
    foreground[1] = 0.0
    anomalous, masks = nsa_synthesize(images, images, np.random.default_rng(3), foreground=foreground,
                                      image_indices=range(4))
    changed = _changed(images, anomalous)
    assert torch.equal(masks, changed)
    assert changed[foreground == 0].sum() == 0
    assert masks[1].sum() == 0
    assert int((masks.flatten(1).sum(1) > 0).sum()) >= 2


def test_nsa_accepts_uint8_sources_and_checks_shapes() -> None:
    images = _textured_images(2, 64)
    sources = torch.round(_textured_images(3, 64, seed=1) * 255).to(torch.uint8)
    anomalous, masks = nsa_synthesize(images, sources, np.random.default_rng(0), mode="mixed")
    assert torch.equal(masks, _changed(images, anomalous))
    with pytest.raises(ValueError, match="sources must have shape"):
        nsa_synthesize(images, sources[:, :, :32], np.random.default_rng(0))


# ---------------------------------------------------------------- foregrounds


def test_grabcut_recovers_disc() -> None:
    image, disc = _disc_image(128)
    foreground = grabcut_foreground(image)
    assert foreground.shape == (1, 1, 128, 128)
    assert set(foreground.unique().tolist()) <= {0.0, 1.0}
    assert _iou(foreground[0, 0], disc) > 0.8


def test_grabcut_falls_back_to_full_image_on_textures() -> None:
    rng = np.random.default_rng(0)
    uniform_texture = np.full((96, 96, 3), 128, np.uint8)
    noise_texture = rng.normal(128, 30, (96, 96, 3)).clip(0, 255).astype(np.uint8)
    batch = torch.from_numpy(np.stack([uniform_texture, noise_texture])).permute(0, 3, 1, 2)
    foreground = grabcut_foreground(batch, workers=2)
    assert torch.equal(foreground, torch.ones(2, 1, 96, 96))


def test_grabcut_is_deterministic_per_image() -> None:
    image, _ = _disc_image(96, seed=3)
    other, _ = _disc_image(96, seed=4)
    alone = grabcut_foreground(image, workers=1)
    # The same image after another one, in a thread pool: identical result.
    together = grabcut_foreground(torch.cat([other, image]), workers=2)
    assert torch.equal(alone[0], together[1])


def test_threshold_foreground_recovers_disc_and_falls_back() -> None:
    image, disc = _disc_image(96)
    assert _iou(object_foreground_threshold(image)[0, 0], disc) > 0.9
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.equal(object_foreground_threshold(flat), torch.ones(1, 1, 32, 32))


# ---------------------------------------------------------------- synthesizer


def test_synthesizer_draem_with_cached_grabcut() -> None:
    disc, mask = _disc_image(96)
    images = torch.cat([disc, _disc_image(96, seed=1)[0]])
    synth = AnomalySynthesizer(SynthesisConfig(kind="draem", foreground="grabcut", texture_count=8))
    foreground = synth.precompute_foreground(torch.round(images * 255).to(torch.uint8))
    assert _iou(foreground[0, 0], mask) > 0.8
    anomalous, masks = synth(images, 123, indices=torch.tensor([0, 1]))
    again, masks_again = synth(images, 123, indices=torch.tensor([0, 1]))
    assert torch.equal(anomalous, again) and torch.equal(masks, masks_again)
    assert bool((masks >= _changed(images, anomalous)).all())
    assert masks[foreground == 0].sum() == 0
    assert masks.sum() > 0


def test_synthesizer_nsa_uses_prepared_sources() -> None:
    images = _textured_images(4, 64)
    synth = AnomalySynthesizer(SynthesisConfig(kind="nsa", probability=1.0))
    synth.prepare(images)
    anomalous, masks = synth(images[:2], _gen(9), indices=[0, 1])
    assert torch.equal(masks, _changed(images[:2], anomalous))
    # Without indices the batch is its own source pool.
    anomalous, masks = synth(images, 5)
    assert torch.equal(masks, _changed(images, anomalous))


def test_synthesis_config_rejects_unknown_names() -> None:
    with pytest.raises(UserError, match="synthesis kind"):
        SynthesisConfig(kind="cutpaste")
    with pytest.raises(UserError, match="foreground mode"):
        SynthesisConfig(foreground="sam")
    with pytest.raises(UserError, match="probability"):
        SynthesisConfig(probability=1.5)


def _training_masks(monkeypatch, settings: dict) -> torch.Tensor:
    """The anomaly masks an ADPS smoke trial's training steps received."""
    from kdsearch.loop import fit_and_evaluate
    from kdsearch.methods.adps import ADPS
    from kdsearch.settings import single_trial

    seen = []
    step = ADPS.training_step

    def recording(self, batch):
        seen.append(batch["anomaly_mask"].clone())
        return step(self, batch)

    monkeypatch.setattr(ADPS, "training_step", recording)
    try:
        assert fit_and_evaluate(single_trial("adps", "smoke", {"device": "cpu", **settings}), progress=False).status == "ok"
    finally:
        monkeypatch.undo()
    return torch.cat(seen)


def test_a_synthesis_setting_changes_the_masks_a_trial_trains_on(monkeypatch):
    default = _training_masks(monkeypatch, {})
    wider = _training_masks(monkeypatch, {"synthesis.perlin_threshold": 0.2})
    assert default.shape == wider.shape and not torch.equal(default, wider)
    # A lower Perlin threshold keeps more of the noise: larger anomalies.
    assert float(wider.mean()) > float(default.mean())

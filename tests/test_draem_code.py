"""DRAEM's synthesis as DRAEM's authors' code does it (``perlin.py``, ``augment_image``,
``transform_image``; imgaug 0.4.0).

The reference figures were measured by running the authors' ``rand_perlin_2d_np`` with
their ``iaa.Affine(rotate=(-90, 90))`` (imgaug 0.4) at 256², 2,000 draws, seed 0:
empty masks 4.5 %, mean mask area 4.88 %, median 4.59 %, a pixel of a 24×24 corner block
anomalous 0.50 % of the time. The colour operations are compared with what imgaug 0.4.0
runs: PIL itself where it calls PIL, OpenCV's colour conversions, and, for equalize, a
numpy transcription of the rule its own histogram code applies.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kdsearch.synthesis import (
    AnomalySynthesizer,
    SynthesisConfig,
    TextureBank,
    draem_synthesize,
    perlin_masks,
    random_color_augment,
)
from kdsearch.synthesis import augment
from kdsearch.synthesis._common import rotate_about_centre, uniform
from kdsearch.synthesis.colorspace import BRIGHTNESS_CHANNEL, BRIGHTNESS_SPACES


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def masks_256() -> torch.Tensor:
    generator = _gen(0)
    return torch.cat([perlin_masks(250, (256, 256), generator, "cpu") for _ in range(4)])[:, 0]


def test_mask_statistics_match_draems_code(masks_256: torch.Tensor) -> None:
    areas = masks_256.flatten(1).mean(dim=1)
    assert 0.030 < (areas == 0).float().mean() < 0.075  # code: 4.5 %; empty masks leave the image normal
    assert 0.042 < areas.mean() < 0.056  # code: 4.88 %
    assert 0.039 < areas.median() < 0.053  # code: 4.59 %


def test_rotated_noise_leaves_the_corners_mostly_normal(masks_256: torch.Tensor) -> None:
    # The code rotates the noise image and fills its corners with 0, below the threshold.
    corners = torch.stack([masks_256[:, :24, :24], masks_256[:, :24, -24:], masks_256[:, -24:, :24],
                           masks_256[:, -24:, -24:]]).mean()
    assert corners < 0.012  # code: 0.50 %; noise evaluated at rotated positions gave 4.8 %


def test_beta_follows_the_code_and_the_text_is_an_option() -> None:
    assert SynthesisConfig().beta_range == (0.0, 0.8)
    images = torch.zeros(64, 3, 64, 64)
    white = TextureBank(torch.full((1, 3, 64, 64), 255, dtype=torch.uint8), augment_ops=0)
    for beta_range, (low, high, mean) in {(0.0, 0.8): (0.2, 1.0, 0.6), (0.1, 1.0): (0.0, 0.9, 0.45)}.items():
        anomalous, masks = draem_synthesize(images, white, _gen(1), beta_range=beta_range)
        inside = masks[:, 0] > 0
        # On a black image under a white texture a pixel's value is the texture weight 1 - β.
        weights = torch.stack([anomalous[i, 0][inside[i]][0] for i in range(64) if inside[i].any()])
        assert weights.min() >= low - 1e-6 and weights.max() <= high + 1e-6
        assert abs(weights.mean().item() - mean) < 0.08


def test_an_empty_perlin_mask_leaves_the_image_normal() -> None:
    images = torch.rand(32, 3, 48, 48, generator=_gen(2))
    bank = TextureBank.procedural(48, count=4, seed=0)
    anomalous, masks = draem_synthesize(images, bank, _gen(3), threshold=0.95)  # mostly empty masks
    empty = masks.flatten(1).sum(dim=1) == 0
    assert empty.sum() > 16
    assert torch.equal(anomalous[empty], images[empty])


def _uint8_batch(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((6, 3, 40, 52)) ** (1 + seed % 3) * 255).round().astype(np.uint8)


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.numpy().transpose(0, 2, 3, 1) * 255.0).round().astype(np.uint8)


def _equalize_reference(image: np.ndarray) -> np.ndarray:
    """imgaug 0.4.0's numpy equalisation of a uint8 (H, W, C) image, per channel: the step is
    (pixels - count of level 255) // 255; level i maps to (step // 2 + pixels below i) // step,
    at most 255; one used level or a step of 0 leaves the channel as it is."""
    out = image.copy()
    for c in range(image.shape[2]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256).astype(np.int64)
        step = int(hist[:255].sum()) // 255
        if np.count_nonzero(hist) <= 1 or step == 0:
            continue
        below = np.concatenate(([0], np.cumsum(hist)[:-1]))
        out[..., c] = np.minimum((step // 2 + below) // step, 255)[channel]
    return out


def _pil_equalize(images: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(ImageOps.equalize(Image.fromarray(i))) for i in images])


@pytest.fixture(scope="module")
def textures_128() -> np.ndarray:
    """The built-in procedural textures, uint8 (8, 128, 128, 3), one per family (49,152 values each)."""
    return TextureBank.procedural(128, 8, 0).textures.numpy().transpose(0, 2, 3, 1)


def _ours_uint8(op, images: np.ndarray, params: dict) -> np.ndarray:
    x = torch.from_numpy(images.transpose(0, 3, 1, 2)).float() / 255.0
    return _as_uint8(op(x, params))


def test_equalize_follows_imgaugs_own_code_on_textures(textures_128: np.ndarray) -> None:
    # imgaug 0.4.0's pillike.Equalize equalizes an image of 4,096 values or more with its
    # own numpy code, not PIL's: its step counts every pixel below level 255, PIL's every
    # pixel below the brightest used level. Textures without pure white tell them apart.
    ours = _ours_uint8(augment._equalize, textures_128, {})
    reference = np.stack([_equalize_reference(i) for i in textures_128])
    assert np.abs(ours.astype(int) - reference).mean() < 0.5
    assert np.array_equal(ours, reference)
    assert np.abs(ours.astype(int) - _pil_equalize(textures_128)).mean() > 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalize_follows_imgaugs_own_code_on_random_images(seed: int) -> None:
    images = _uint8_batch(seed).transpose(0, 2, 3, 1)  # 40 x 52 x 3 = 6,240 values
    ours = _ours_uint8(augment._equalize, images, {})
    assert np.array_equal(ours, np.stack([_equalize_reference(i) for i in images]))


def test_equalize_is_pils_below_4096_values() -> None:
    images = (np.random.default_rng(3).random((4, 30, 40, 3)) * 200).astype(np.uint8)  # 3,600 values
    images[:, :10] = 200  # a third of the pixels at the brightest level, none white: the two rules differ
    ours = _ours_uint8(augment._equalize, images, {})
    assert np.array_equal(ours, _pil_equalize(images))
    assert not np.array_equal(ours, np.stack([_equalize_reference(i) for i in images]))


@pytest.mark.parametrize("cutoff", [0, 4, 13, 20])
def test_autocontrast_is_pils_with_its_cutoff(cutoff: int) -> None:
    images = _uint8_batch(cutoff)
    params = {"cutoff": torch.full((len(images),), float(cutoff))}
    ours = _as_uint8(augment._autocontrast(torch.from_numpy(images).float() / 255.0, params))
    pil = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(i.transpose(1, 2, 0)), cutoff=cutoff))
                    for i in images])
    assert np.array_equal(ours, pil)


def test_hue_shifts_up_to_70_degrees_and_saturation_is_added() -> None:
    # imgaug's AddToHueAndSaturation((-50, 50)): ±50/255 of the hue circle, and ±50 grey
    # levels added to the saturation channel.
    red = torch.zeros(2, 3, 4, 4)
    red[:, 0] = 0.8
    red[:, 1:] = 0.2
    shift = {"hue": torch.tensor([50.0, -50.0]) / 255.0, "sat": torch.tensor([-50.0, 50.0]) / 255.0}
    out = augment._hue_saturation(red, shift)
    hsv = [cv2.cvtColor(_as_uint8(x[None])[0], cv2.COLOR_RGB2HSV_FULL).astype(float) for x in (red[0], out[0], out[1])]
    degrees = [(h[0, 0, 0] * 360.0 / 256.0 + 180.0) % 360.0 - 180.0 for h in hsv]
    assert degrees[1] - degrees[0] == pytest.approx(70.6, abs=2.0)
    assert degrees[2] - degrees[0] == pytest.approx(-70.6, abs=2.0)
    assert hsv[1][0, 0, 1] - hsv[0][0, 0, 1] == pytest.approx(-50.0, abs=1.5)
    assert hsv[2][0, 0, 1] - hsv[0][0, 0, 1] == pytest.approx(50.0, abs=1.5)


_OPENCV = {"YCrCb": (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB), "HSV": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB),
           "HLS": (cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB), "Lab": (cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB),
           "Luv": (cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB), "YUV": (cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB)}


def _brightness_reference(image: np.ndarray, space: str, mul: float, add: float, mul_first: bool) -> np.ndarray:
    """imgaug 0.4.0's MultiplyAndAddToBrightness on a uint8 RGB image with its draws fixed:
    OpenCV's conversion to ``space``, the brightness channel multiplied (a float32 table,
    truncated to uint8) and shifted (the value rounded, clipped) in the given order, back."""
    forward, backward = _OPENCV[space]
    converted = cv2.cvtColor(image, forward)
    channel = BRIGHTNESS_CHANNEL[space]
    times = np.clip(np.arange(256, dtype=np.float32) * np.float32(mul), 0, 255).astype(np.uint8)
    plus = np.clip(np.arange(256) + int(np.round(add)), 0, 255).astype(np.uint8)
    level = converted[..., channel]
    converted[..., channel] = plus[times[level]] if mul_first else times[plus[level]]
    return cv2.cvtColor(converted, backward)


def _brightness_params(n: int, space: str, mul: float, add: float, mul_first: bool) -> dict[str, torch.Tensor]:
    return {"space": torch.full((n,), BRIGHTNESS_SPACES.index(space)), "mul": torch.full((n,), mul),
            "add": torch.full((n,), add), "mul_first": torch.full((n,), mul_first)}


@pytest.mark.parametrize("space", BRIGHTNESS_SPACES)
@pytest.mark.parametrize("mul, add, mul_first", [(1.2, 25.0, True), (0.8, -30.0, False), (1.13, -7.4, True),
                                                 (0.87, 12.6, False)])
def test_brightness_is_imgaugs_in_each_colour_space(textures_128: np.ndarray, space: str, mul: float, add: float,
                                                    mul_first: bool) -> None:
    ours = _ours_uint8(augment._brightness, textures_128, _brightness_params(len(textures_128), space, mul, add,
                                                                             mul_first))
    reference = np.stack([_brightness_reference(i.copy(), space, mul, add, mul_first) for i in textures_128])
    # OpenCV computes some conversions in fixed point: one grey level here and there, more
    # only where a dark pixel's chroma leaves the gamut (Lab, Luv).
    assert np.abs(ours.astype(int) - reference).mean() < 0.5


def test_brightness_colour_spaces_differ_as_imgaugs_do(textures_128: np.ndarray) -> None:
    # Four of the six spaces move the texture by several grey levels from YCrCb's Y.
    ycrcb = _ours_uint8(augment._brightness, textures_128, _brightness_params(8, "YCrCb", 1.2, 20.0, True))
    apart = {space: np.abs(_ours_uint8(augment._brightness, textures_128,
                                       _brightness_params(8, space, 1.2, 20.0, True)).astype(int) - ycrcb).mean()
             for space in BRIGHTNESS_SPACES}
    assert sum(value > 3.0 for value in apart.values()) >= 3, apart


def test_brightness_draws_all_six_spaces_and_both_orders(monkeypatch) -> None:
    # MultiplyAndAddToBrightness picks its colour space per image (uniformly among six) and
    # runs Multiply and Add in a random order (Sequential(random_order=True)).
    seen: list[dict[str, torch.Tensor]] = []

    def brightness(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(params)
        return x

    monkeypatch.setattr(augment, "_OPS", (augment._OPS[0], brightness, *augment._OPS[2:]))
    random_color_augment(torch.zeros(6000, 3, 2, 2), _gen(11), num_ops=3)
    space = torch.cat([p["space"] for p in seen])
    mul_first = torch.cat([p["mul_first"] for p in seen]).float()
    add, mul = torch.cat([p["add"] for p in seen]), torch.cat([p["mul"] for p in seen])
    assert 1600 < len(space) < 2000  # 3 of 10 operations: 30 % of the images
    shares = torch.bincount(space, minlength=6).float() / len(space)
    assert len(shares) == 6 and bool((shares - 1 / 6).abs().max() < 0.04), shares
    assert abs(float(mul_first.mean()) - 0.5) < 0.05
    assert -30.0 <= float(add.min()) < -28.0 and 28.0 < float(add.max()) <= 30.0  # grey levels
    assert 0.8 <= float(mul.min()) < 0.81 and 1.19 < float(mul.max()) <= 1.2


def test_augmenters_see_the_channels_in_draems_bgr_order(textures_128: np.ndarray) -> None:
    # DRAEM reads textures with cv2.imread (BGR) and hands them to augmenters that assume
    # RGB; the default does the same, which is RGB augmentation of the flipped image.
    x = torch.from_numpy(textures_128.transpose(0, 3, 1, 2)).float() / 255.0
    default = random_color_augment(x, _gen(12))
    flipped = random_color_augment(x.flip(1), _gen(12), channel_order="rgb").flip(1)
    assert torch.equal(default, flipped)
    # Only brightness's colour spaces tell the orders apart: Y weighs red 0.299 and blue 0.114.
    params = _brightness_params(8, "YCrCb", 1.2, 20.0, True)
    as_bgr = augment._brightness(x.flip(1), params).flip(1)
    assert float((as_bgr - augment._brightness(x, params)).abs().mean()) * 255.0 > 1.0
    with pytest.raises(ValueError, match="channel_order"):
        random_color_augment(x, _gen(0), channel_order="bgra")


def test_each_image_applies_its_operations_in_its_drawn_order(monkeypatch) -> None:
    # DRAEM feeds np.random.choice(10, 3, replace=False) to a sequential augmenter: 3 distinct
    # operations in a random order. Record which operation touches which image, in turn.
    calls: dict[int, list[int]] = {}

    def recorder(k: int):
        def op(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
            for image in (x[:, 0, 0, 0] * 1000).round().long().tolist():
                calls.setdefault(image, []).append(k)
            return x
        return op

    monkeypatch.setattr(augment, "_OPS", tuple(recorder(k) for k in range(10)))
    x = torch.zeros(300, 3, 4, 4)
    x[:, :, 0, 0] = (torch.arange(300) / 1000.0).view(300, 1)  # every channel: the operations see BGR
    random_color_augment(x, _gen(6), num_ops=3)
    expected = augment.uniform((300, 10), _gen(6), "cpu").argsort(dim=1)[:, :3]
    assert all(calls[i] == expected[i].tolist() for i in range(300))
    assert len({tuple(sequence) for sequence in calls.values()}) > 200  # ordered triples, not sets


# ---------------------------------------------------------------- texture source and label


def test_dtd_textures_are_resized_with_opencvs_default_bilinear(tmp_path) -> None:
    # DRAEM: cv2.resize(cv2.imread(path), dsize=(W, H)) with no interpolation given (bilinear).
    photo = (np.random.default_rng(4).random((300, 220, 3)) * 255).astype(np.uint8)
    (tmp_path / "banded").mkdir()
    cv2.imwrite(str(tmp_path / "banded" / "a.png"), photo)
    bank = TextureBank.from_directory(tmp_path, 64)
    expected = cv2.cvtColor(cv2.resize(photo, (64, 64)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(bank.textures[0].numpy().transpose(1, 2, 0), expected)


def test_the_mask_is_the_perlin_region_even_where_nothing_changes() -> None:
    # DRAEM's code labels the thresholded Perlin region, whatever the blend did there. With
    # the texture equal to the image (and no colour jitter) nothing changes, yet the label
    # is the region.
    images = torch.full((6, 3, 32, 32), 0.5)
    flat_bank = TextureBank(torch.full((1, 3, 32, 32), 128, dtype=torch.uint8), augment_ops=0)
    generator = _gen(0)
    uniform((6,), generator, "cpu")  # draem_synthesize draws which images are anomalous first
    region = perlin_masks(6, (32, 32), generator, "cpu")
    anomalous, masks = draem_synthesize(images, flat_bank, _gen(0))
    assert region.sum() > 0 and torch.equal(masks, region)
    assert float((anomalous - images).abs().max()) < 1.0 / 255.0


def test_the_synthesizer_labels_draem_anomalies_by_their_region() -> None:
    images = torch.full((4, 3, 32, 32), 0.5)
    flat_bank = TextureBank(torch.full((1, 3, 32, 32), 128, dtype=torch.uint8), augment_ops=0)
    _, masks = AnomalySynthesizer(SynthesisConfig(), textures=flat_bank)(images, 3)
    assert masks.sum() > 0


# ---------------------------------------------------------------- rotation of normal images


def test_rotation_is_imgaugs_affine_about_the_centre() -> None:
    # imgaug's Affine defaults: bilinear, constant 0 outside, about ((W - 1) / 2, (H - 1) / 2).
    image = (np.random.default_rng(5).random((48, 40, 3)) * 255).round().astype(np.uint8)
    turned = rotate_about_centre(torch.from_numpy(image).permute(2, 0, 1)[None].float(), torch.tensor([33.0]))
    matrix = cv2.getRotationMatrix2D(((40 - 1) / 2, (48 - 1) / 2), 33.0, 1.0)
    expected = cv2.warpAffine(image, matrix, (40, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    assert np.abs(turned[0].permute(1, 2, 0).round().numpy() - expected).max() <= 1.0


def test_normal_rotation_rotates_its_share_of_the_normal_images() -> None:
    # DRAEM's transform_image: torch.rand(1) > 0.7 -> iaa.Affine(rotate=(-90, 90)) on the
    # normal image, which is then both the normal sample and the anomaly's base.
    images = torch.rand(1000, 3, 12, 12, generator=_gen(6)).mul(255).round().div(255)
    bank = TextureBank.procedural(12, 2, 0)
    synth = AnomalySynthesizer(SynthesisConfig(probability=0.5, normal_rotation=0.3), textures=bank)
    normal, anomalous, masks = synth.with_normals(images, 7)
    turned = (normal != images).flatten(1).any(dim=1)
    assert 0.26 < float(turned.float().mean()) < 0.34
    assert torch.equal(normal[~turned], images[~turned])
    assert torch.equal(normal, normal.mul(255).round().div(255))  # stored as uint8, as imgaug returns it
    # The anomaly is blended into the rotated image: outside its mask it is that image.
    outside = (masks == 0).expand_as(images)
    assert torch.equal(anomalous[outside], normal[outside])
    # Nothing rotates, and nothing is drawn, at 0: the anomalies are those of a config without it.
    plain = AnomalySynthesizer(SynthesisConfig(probability=0.5), textures=bank).with_normals(images[:8], 7)
    assert plain[0] is images[:8] or torch.equal(plain[0], images[:8])
    assert SynthesisConfig().normal_rotation == 0.0


def test_normal_rotation_angles_span_90_degrees_either_way() -> None:
    from kdsearch.synthesis.draem import rotate_normal_images

    # A horizontal bar: its rotated angle is read back from the second moments.
    bar = torch.zeros(600, 1, 41, 41)
    bar[:, :, 19:22, 4:37] = 1.0
    turned, _ = rotate_normal_images(bar.expand(-1, 3, -1, -1), _gen(8), 1.0)
    weight = turned[:, 0]
    yy, xx = torch.meshgrid(torch.arange(41.0) - 20, torch.arange(41.0) - 20, indexing="ij")
    total = weight.sum((1, 2))
    cyy, cxx = (weight * yy * yy).sum((1, 2)) / total, (weight * xx * xx).sum((1, 2)) / total
    cxy = (weight * xx * yy).sum((1, 2)) / total
    angle = torch.rad2deg(0.5 * torch.atan2(2 * cxy, cxx - cyy)).abs()  # 0..90 either way
    assert float(angle.max()) > 85.0 and float(angle.min()) < 5.0
    assert 0.4 < float((angle > 45).float().mean()) < 0.6  # uniform in |angle|


def test_normal_rotation_turns_a_cached_foreground_with_its_image() -> None:
    from kdsearch.synthesis.draem import rotate_normal_images

    images = torch.zeros(2, 3, 32, 32)
    images[:, :, 8:12, 4:28] = 1.0
    foreground = (images[:, :1] > 0.5)
    turned, turned_fg = rotate_normal_images(images, _gen(9), 1.0, foreground)
    assert turned_fg.dtype == torch.bool and turned_fg.shape == (2, 1, 32, 32)
    assert torch.equal(turned_fg, turned[:, :1] > 0.5)


def test_training_batches_carry_the_rotated_normal_images() -> None:
    from kdsearch.batches import TrainBatches
    from kdsearch.data import normalize

    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=_gen(10))
    bank = TextureBank.procedural(16, 2, 0)
    rotating = AnomalySynthesizer(SynthesisConfig(normal_rotation=1.0), textures=bank)
    batches = TrainBatches(images, 4, 0, rotating)
    indices = torch.randperm(8, generator=_gen(0))[:4]  # the first batch of seed 0's epoch
    anomaly_generator = torch.Generator().set_state(batches.anomaly_generator.get_state())
    batch = next(iter(batches))
    normal, anomalous, masks = rotating.with_normals(images[indices].float() / 255.0, anomaly_generator,
                                                     indices=indices)
    assert not torch.equal(normal, images[indices].float() / 255.0)
    assert torch.equal(batch["image"], normalize(normal))
    assert torch.equal(batch["anomalous"], normalize(anomalous)) and torch.equal(batch["anomaly_mask"], masks)

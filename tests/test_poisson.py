"""Tests of kdsearch.synthesis.poisson: the batched torch Poisson blend against OpenCV's seamlessClone."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.fft
import torch

from kdsearch.synthesis.poisson import _sine_basis, poisson_blend, quantize_like_opencv


def _smooth_image(rng: np.random.Generator, size: int, sigma: float, level: float) -> np.ndarray:
    """uint8 (size, size, 3): blurred noise stretched around ``level``, plus pixel noise."""
    base = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), sigma)
    image = (base - base.mean()) * 5.0 + level + rng.normal(0.0, 6.0, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _case(rng: np.random.Generator, size: int, round_mask: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(destination, source canvas, mask) as nsa_opencv.py builds them: a patch pasted at its place, the mask's border zeroed."""
    dest = _smooth_image(rng, size, 6.0, 128.0)
    patch_source = _smooth_image(rng, size, 4.0, rng.uniform(40.0, 220.0))
    h, w = rng.integers(6, int(size * 0.8), size=2)
    y0, x0 = int(rng.integers(1, size - h)), int(rng.integers(1, size - w))
    canvas = dest.copy()
    canvas[y0:y0 + h, x0:x0 + w] = patch_source[y0:y0 + h, x0:x0 + w]
    mask = np.zeros((size, size), np.uint8)
    mask[y0 + 1:y0 + h - 1, x0 + 1:x0 + w - 1] = 255
    if round_mask:  # as nsa_opencv.py's mask cut by a destination foreground
        yy, xx = np.mgrid[:size, :size]
        mask &= np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.35 * size) ** 2, 255, 0).astype(np.uint8)
    return dest, canvas, mask


def _opencv(dest: np.ndarray, canvas: np.ndarray, mask: np.ndarray, mixed: bool) -> np.ndarray:
    """seamlessClone as nsa_opencv.py calls it: full canvas, centre of the mask's bounding box (no shift)."""
    x, y, w, h = cv2.boundingRect(mask)
    return cv2.seamlessClone(canvas, dest, mask.copy(), (x + w // 2, y + h // 2), cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE)


def _chw(images: list[np.ndarray], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(dtype)


def _masks(masks: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks))[:, None] > 0


def test_sine_basis_is_the_dense_dst1_of_each_span():
    """Each embedded block is the orthonormal DST-I (checked against scipy's FFT-based one and the
    dense matrix), diagonalises the Dirichlet second difference with the returned eigenvalues, and
    leaves everything outside the span's interior zero."""
    length = 13
    offsets = torch.tensor([0, 2, 5, 0, 3, 0])
    sizes = torch.tensor([13, 7, 8, 3, 2, 0])  # full window, inner spans, one interior pixel, none, empty
    basis, eigen, valid = _sine_basis(offsets, sizes, length, torch.float64)
    rng = np.random.default_rng(0)
    for b in range(len(sizes)):
        n = max(int(sizes[b]) - 2, 0)
        block = slice(int(offsets[b]), int(offsets[b]) + n)  # window interior pixel p sits at row p - 1
        assert valid[b].sum() == n and bool(valid[b, block].all())
        outside = torch.ones(length - 2, dtype=torch.bool)
        outside[block] = False
        assert not basis[b][outside].any() and not basis[b][:, outside].any()
        if n == 0:
            continue
        dense = basis[b, block, block].numpy()
        i = np.arange(1, n + 1)
        assert np.allclose(dense, np.sqrt(2.0 / (n + 1)) * np.sin(np.pi * np.outer(i, i) / (n + 1)), atol=1e-12)
        x = rng.normal(size=n)
        assert np.allclose(dense @ x, scipy.fft.dst(x, type=1, norm="ortho"), atol=1e-12)
        second_difference = -2.0 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
        assert np.allclose(dense @ second_difference @ dense, np.diag(eigen[b, block].numpy()), atol=1e-12)
        assert np.allclose(dense @ dense, np.eye(n), atol=1e-12)


def test_float64_solution_solves_opencvs_discrete_poisson_problem():
    """In float64 the result solves, to rounding, the problem OpenCV's seamlessClone sets up: on the
    mask's bounding rectangle's interior the 5-point Laplacian equals the divergence (backward
    differences) of the guidance field built from forward differences, with the 7x7-eroded mask
    choosing source over destination gradients, and MIXED taking per channel the larger |gx - gy|."""
    rng = np.random.default_rng(1)
    for mixed in (False, True):
        dest, canvas, mask = _case(rng, 48)
        out = poisson_blend(_chw([dest], torch.float64), _chw([canvas], torch.float64), _masks([mask]), mixed)[0]
        out = out.permute(1, 2, 0).numpy()
        x, y, w, h = cv2.boundingRect(mask)
        eroded = cv2.erode((mask > 0).astype(np.uint8), np.ones((7, 7), np.uint8), borderValue=0)[..., None]
        d, s = dest.astype(np.float64), canvas.astype(np.float64)

        def forward(image: np.ndarray, axis: int) -> np.ndarray:
            return np.diff(image, axis=axis, append=np.take(image, [-1], axis=axis))

        dgx, dgy, sgx, sgy = forward(d, 1), forward(d, 0), forward(s, 1), forward(s, 0)
        use_source = (np.abs(sgx - sgy) > np.abs(dgx - dgy)) if mixed else np.ones_like(d, bool)
        gx = np.where(eroded & use_source, sgx, dgx)
        gy = np.where(eroded & use_source, sgy, dgy)
        inner = (slice(y + 1, y + h - 1), slice(x + 1, x + w - 1))
        divergence = (gx - np.roll(gx, 1, axis=1) + gy - np.roll(gy, 1, axis=0))[inner]
        laplacian = (np.roll(out, 1, 0) + np.roll(out, -1, 0) + np.roll(out, 1, 1) + np.roll(out, -1, 1) - 4 * out)[inner]
        assert np.abs(laplacian - divergence).max() < 1e-9
        assert np.array_equal(out[y:y + h, x], d[y:y + h, x]) and np.array_equal(out[y, x:x + w], d[y, x:x + w])


@pytest.mark.parametrize("mixed", [False, True], ids=["normal", "mixed"])
def test_matches_opencv_seamless_clone(mixed: bool):
    """24 random cases per mode (64x64 and 128x128, smooth content plus noise, rectangular masks with
    the one-pixel border zeroed as nsa_opencv.py does, every third cut by a round foreground).

    Tolerance: after :func:`quantize_like_opencv`, at most one grey level anywhere, on under 2% of a
    case's pixels, mean absolute difference under 0.02 per case and 0.005 over all (measured here:
    at most 0.01 per case, about 0.0005 overall). Not exact because both solve the same linear
    system in float32 by different routes (OpenCV: the full intensity through its FFT, eigenvalues
    2cos - 2 in float; here: the correction through dense sine matrices) and OpenCV truncates to
    uint8, so a solution within ~1e-3 of an integer can land on either side of it. Where the exact
    solution is an integer (a mask too thin to survive the 7x7 erosion gives back the destination),
    OpenCV's float error puts some pixels just below it and truncation takes a grey level off them:
    that case has the most differing pixels (1%)."""
    rng = np.random.default_rng(7 + mixed)
    cases = [_case(rng, (64, 128)[i % 2], round_mask=i % 3 == 0) for i in range(24)]
    cases = [case for case in cases if np.count_nonzero(case[2]) >= 50]  # nsa.py's smallest clone mask
    assert len(cases) >= 20
    means = []
    for size in (64, 128):  # one batch per image size
        group = [case for case in cases if case[0].shape[0] == size]
        dests, canvases, masks = zip(*group)
        ours = quantize_like_opencv(poisson_blend(_chw(dests), _chw(canvases), _masks(masks), mixed))
        for b, (dest, canvas, mask) in enumerate(group):
            reference = _opencv(dest, canvas, mask, mixed).astype(np.int16)
            diff = np.abs(ours[b].permute(1, 2, 0).numpy().astype(np.int16) - reference)
            assert diff.max() <= 1
            assert np.count_nonzero(diff) < 0.02 * diff.size
            assert diff.mean() < 0.02
            means.append(diff.mean())
    assert np.mean(means) < 0.005


def test_batch_equals_each_image_alone():
    """Rectangles of different sizes and places, an empty mask and per-image modes in one batch give
    what each image gives alone (float32 rounding apart: the sums run over different padding)."""
    rng = np.random.default_rng(3)
    cases = [_case(rng, 96) for _ in range(5)]
    dests, canvases, masks = (list(part) for part in zip(*cases))
    masks[2] = np.zeros_like(masks[2])
    mixed = torch.tensor([False, True, True, False, True])
    batched = poisson_blend(_chw(dests), _chw(canvases), _masks(masks), mixed)
    for b in range(len(cases)):
        alone = poisson_blend(_chw(dests[b:b + 1]), _chw(canvases[b:b + 1]), _masks(masks[b:b + 1]), bool(mixed[b]))
        assert torch.allclose(batched[b:b + 1], alone, rtol=0.0, atol=1e-3)
    assert torch.equal(batched[2], _chw(dests[2:3])[0])


def test_pixels_outside_the_rectangle_and_on_its_border_are_unchanged():
    """Only the bounding rectangle's interior changes, bit for bit; mask pixels on the image's outer
    frame are ignored (OpenCV clears that frame), so a mask touching the edge still blends inside."""
    rng = np.random.default_rng(4)
    dest = _chw([_smooth_image(rng, 64, 5.0, 120.0), _smooth_image(rng, 64, 5.0, 90.0)]) + 0.25  # non-integer values
    source = _chw([_smooth_image(rng, 64, 3.0, 200.0), _smooth_image(rng, 64, 3.0, 30.0)])
    mask = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    mask[0, 0, 10:30, 20:50] = True
    mask[1, 0, 0:25, 40:64] = True  # touches the top and right edges
    out = poisson_blend(dest, source, mask, mixed=torch.tensor([False, True]))
    for b, (top, bottom, left, right) in enumerate([(10, 30, 20, 50), (1, 25, 40, 63)]):
        interior = torch.zeros(64, 64, dtype=torch.bool)
        interior[top + 1:bottom - 1, left + 1:right - 1] = True
        assert torch.equal(out[b][:, ~interior], dest[b][:, ~interior])
        assert (out[b][:, interior] != dest[b][:, interior]).any()


def test_degenerate_masks_leave_images_unchanged():
    """An empty mask, one only on the image's frame, or a rectangle two pixels high has no interior to solve."""
    rng = np.random.default_rng(5)
    dest = _chw([_smooth_image(rng, 32, 4.0, 100.0) for _ in range(3)])
    source = _chw([_smooth_image(rng, 32, 4.0, 200.0) for _ in range(3)])
    mask = torch.zeros(3, 1, 32, 32, dtype=torch.bool)
    mask[1, 0, 0, :] = True
    mask[2, 0, 10:12, 5:25] = True
    assert torch.equal(poisson_blend(dest, source, mask, True), dest)


def test_quantize_truncates_like_opencv():
    """OpenCV clamps and truncates (its own cast, not saturate_cast's rounding)."""
    values = torch.tensor([-3.0, 0.99, 1.0, 254.6, 255.4, 300.0])
    assert quantize_like_opencv(values).tolist() == [0, 0, 1, 254, 255, 255]


def test_rejects_bad_arguments():
    images = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="one shape"):
        poisson_blend(images, torch.zeros(2, 3, 16, 15), torch.zeros(2, 1, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="float"):
        poisson_blend(images.to(torch.uint8), images.to(torch.uint8), torch.zeros(2, 1, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        poisson_blend(images, images, torch.zeros(2, 16, 16, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(6)
    cases = [_case(rng, 128) for _ in range(4)]
    dests, canvases, masks = (list(part) for part in zip(*cases))
    mixed = torch.tensor([False, True, False, True])
    cpu = poisson_blend(_chw(dests), _chw(canvases), _masks(masks), mixed)
    cuda = poisson_blend(_chw(dests).cuda(), _chw(canvases).cuda(), _masks(masks).cuda(), mixed.cuda())
    assert cuda.device.type == "cuda"
    assert torch.allclose(cuda.cpu(), cpu, rtol=0.0, atol=1e-2)

"""Tests for kdsearch.metrics against sklearn and against slow, literal reference loops."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from kdsearch import metrics
from kdsearch.metrics import (
    AU_PRO_PROTOCOLS,
    UndefinedMetricError,
    all_metrics,
    au_pro,
    image_auroc,
    pixel_ap,
    pixel_auroc,
)

TOL = 1e-6
EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


# ------------------------------------------------------------------ test data


def blob_data(seed: int, n: int = 6, size: int = 16, n_normal: int = 2, decimals: int | None = None):
    """Smooth random maps and blob-shaped masks; the first ``n_normal`` images are normal.

    Maps are correlated with the masks but noisy, like a half-trained model's output.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n_normal, n):
        field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=1.5)
        masks[i] = field > np.quantile(field, 0.85)
    noise = np.stack([ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0) for _ in range(n)])
    maps = noise + 1.5 * masks + 0.3 * rng.standard_normal((n, size, size))
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks


def reference_au_pro_mvtec(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """MVTec AU-PRO with one explicit loop over every distinct threshold."""
    masks = masks.astype(bool)
    regions = []
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        regions += [(i, labels == r) for r in range(1, count + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(np.mean([pred[i][region].mean() for i, region in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for j in range(1, len(xs)):
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
            continue
        if x0 < limit:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
        break
    return area / limit


def reference_au_pro_rd4ad(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The RD4AD protocol, literally: per anomalous image, 200 arange thresholds, sklearn auc."""
    values = []
    for amap, mask in zip(maps, masks.astype(bool)):
        if not mask.any():
            continue
        labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        low, high = amap.min(), amap.max()
        fprs, pros = [], []
        for th in np.arange(low, high, (high - low) / 200):
            pred = amap > th
            pros.append(statistics.mean(pred[labels == r].sum() / (labels == r).sum() for r in range(1, count + 1)))
            fprs.append((pred & ~mask).sum() / (~mask).sum())
        fprs, pros = np.array(fprs), np.array(pros)
        keep = fprs < limit
        values.append(auc(fprs[keep] / fprs[keep].max(), pros[keep]))
    return float(np.mean(values))


# ------------------------------------------------------------------ AUROC and AP


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_image_auroc_matches_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.4
    scores = rng.random(300) + 0.3 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # heavy ties
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=TOL)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_auroc_and_ap_match_sklearn(seed, decimals):
    maps, masks = blob_data(seed, decimals=decimals)
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_inputs_of_any_float_width(dtype):
    maps, masks = blob_data(3)
    t_maps = torch.tensor(maps, dtype=dtype)
    t_masks = torch.tensor(masks)
    seen = t_maps.to(torch.float64).numpy()  # the values the metric actually receives
    y = masks.ravel()
    assert pixel_auroc(t_maps, t_masks) == pytest.approx(roc_auc_score(y, seen.ravel()), abs=TOL)
    assert pixel_ap(t_maps, t_masks) == pytest.approx(average_precision_score(y, seen.ravel()), abs=TOL)
    assert au_pro(t_maps, t_masks) == pytest.approx(reference_au_pro_mvtec(seen, masks, 0.3), abs=TOL)
    scores = t_maps.amax(dim=(1, 2))
    labels = torch.tensor(masks.reshape(len(masks), -1).max(axis=1))
    expected = roc_auc_score(labels.numpy(), scores.to(torch.float64).numpy())
    assert image_auroc(scores, labels) == pytest.approx(expected, abs=TOL)


def test_perfect_and_inverted_scores():
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert image_auroc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert image_auroc(np.ones(4), labels) == 0.5


# ------------------------------------------------------------------ AU-PRO, MVTec


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("limit", [0.3, 1.0, 0.05])
def test_au_pro_mvtec_matches_reference_loop(seed, decimals, limit):
    maps, masks = blob_data(seed, decimals=decimals)
    expected = reference_au_pro_mvtec(maps, masks, limit)
    assert au_pro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=TOL)


# One 3x3 image: the anomalous pixels (0, 0), (1, 1), (1, 2) form ONE 8-connected region
# of area 3 ((0, 0) touches (1, 1) only diagonally); there are 6 normal pixels.
# Descending scores give the curve (0,0) (0,1/3) (1/6,1/3) (1/6,2/3) (1/6,1) (1/3,1) ... (1,1).
HAND_MASK = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]]])
HAND_MAP = np.array([[[0.9, 0.2, 0.1], [0.3, 0.5, 0.4], [0.1, 0.1, 0.6]]])


def test_au_pro_mvtec_hand_example_eight_connected():
    # limit 1: 1/6 * 1/3 + 5/6 * 1 = 8/9; two 4-connected regions would give 11/12.
    assert au_pro(HAND_MAP, HAND_MASK, fpr_limit=1.0) == pytest.approx(8 / 9, abs=1e-12)
    # limit 0.25: (1/18 + (1/4 - 1/6) * 1) / (1/4) = 5/9, interpolated at 0.25 on the y = 1 segment.
    assert au_pro(HAND_MAP, HAND_MASK, fpr_limit=0.25) == pytest.approx(5 / 9, abs=1e-12)
    assert au_pro(HAND_MAP, HAND_MASK, fpr_limit=1.0) == pytest.approx(
        reference_au_pro_mvtec(HAND_MAP, HAND_MASK, 1.0), abs=1e-12
    )


def test_au_pro_mvtec_ties_enter_together():
    # Region of 2 pixels; the 0.5 tie holds one anomalous and one normal pixel, so the
    # curve goes (0, 1/2) -> (1/2, 1) diagonally: 0.375 + 0.5 (not 1.0 or 0.75).
    maps = np.array([[[0.8, 0.5, 0.5, 0.2]]])
    masks = np.array([[[1, 1, 0, 0]]])
    assert au_pro(maps, masks, fpr_limit=1.0) == pytest.approx(0.875, abs=1e-12)


def test_au_pro_mvtec_counts_normal_images_in_fpr():
    maps = np.array([[[0.8, 0.5, 0.5, 0.2]], [[0.0, 0.0, 0.0, 0.0]]])
    masks = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    # Six normal pixels now: (0, 1/2) -> (1/6, 1) -> (1, 1) gives 1/8 + 5/6 = 23/24.
    assert au_pro(maps, masks, fpr_limit=1.0) == pytest.approx(23 / 24, abs=1e-12)


def test_only_mvtec_depends_on_normal_images():
    maps, masks = blob_data(7, n=5, n_normal=2)
    anomalous = slice(2, None)
    assert au_pro(maps, masks) != pytest.approx(au_pro(maps[anomalous], masks[anomalous]), abs=1e-4)
    assert au_pro(maps, masks, protocol="rd4ad") == pytest.approx(
        au_pro(maps[anomalous], masks[anomalous], protocol="rd4ad"), abs=1e-12
    )


def test_au_pro_regions_do_not_span_images():
    # Pixels at the same place in consecutive images are separate regions: with one
    # region per image, detecting only image 0's pixel gives PRO 1/2, not 1.
    maps = np.array([[[0.9, 0.1]], [[0.2, 0.1]]])
    masks = np.array([[[1, 0]], [[1, 0]]])
    # Curve: (0, 1/2) at 0.9, (0, 1) at 0.2, then (1, 1): area 1 at limit 1.
    assert au_pro(maps, masks, fpr_limit=1.0) == pytest.approx(1.0, abs=1e-12)
    assert au_pro(maps, masks, fpr_limit=1.0) == pytest.approx(reference_au_pro_mvtec(maps, masks, 1.0), abs=1e-12)


@pytest.mark.parametrize("protocol", AU_PRO_PROTOCOLS)
def test_au_pro_of_a_perfect_map_is_one(protocol):
    _, masks = blob_data(8, n=4, size=20, n_normal=1)
    rng = np.random.default_rng(8)
    maps = rng.random(masks.shape) + 2.0 * masks  # every anomalous pixel above every normal one
    value = au_pro(maps, masks, protocol=protocol)
    assert value == pytest.approx(1.0, abs=1e-9)
    assert value <= 1.0


# ------------------------------------------------------------------ AU-PRO, RD4AD


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("limit", [0.3, 0.5])
def test_au_pro_rd4ad_matches_reference_loop(seed, decimals, limit):
    maps, masks = blob_data(seed, n=5, decimals=decimals)
    expected = reference_au_pro_rd4ad(maps, masks, limit)
    assert au_pro(maps, masks, fpr_limit=limit, protocol="rd4ad") == pytest.approx(expected, abs=TOL)


def test_au_pro_rd4ad_keeps_the_201st_arange_threshold():
    maps, masks = blob_data(4, n=1, n_normal=0)
    maps = (maps - maps.min()) / (maps.max() - maps.min()) * 0.52  # range [0, 0.52]
    # Put the maximum on a normal pixel so the point before the extra threshold has
    # FPR > 0 and the extra point at (0, 0) adds area.
    normal_at = np.argwhere(masks[0] == 0)[0]
    maps[0, normal_at[0], normal_at[1]] = 0.52
    assert len(np.arange(maps.min(), maps.max(), (maps.max() - maps.min()) / 200)) == 201
    expected = reference_au_pro_rd4ad(maps, masks)
    assert au_pro(maps, masks, protocol="rd4ad") == pytest.approx(expected, abs=TOL)


def test_au_pro_rd4ad_fpr_limit_is_strict():
    # 10 normal pixels scored 0..9 make FPR hit exactly 3/10 == 0.3 for thresholds in [6, 7).
    maps = np.concatenate([np.arange(10.0), np.linspace(5.0, 19.0, 10)]).reshape(1, 4, 5)
    masks = np.concatenate([np.zeros(10), np.ones(10)]).reshape(1, 4, 5)
    expected = reference_au_pro_rd4ad(maps, masks, 0.3)
    assert au_pro(maps, masks, protocol="rd4ad") == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("seed", [5, 6])
def test_protocols_differ_and_lie_in_unit_interval(seed):
    maps, masks = blob_data(seed, n=8, size=24, n_normal=3)
    mvtec = au_pro(maps, masks, protocol="mvtec")
    rd4ad = au_pro(maps, masks, protocol="rd4ad")
    assert 0.0 <= mvtec <= 1.0 and 0.0 <= rd4ad <= 1.0
    assert abs(mvtec - rd4ad) > 1e-3


def test_au_pro_rd4ad_degenerate_image_is_undefined():
    maps = np.zeros((1, 4, 4))
    masks = np.zeros((1, 4, 4), dtype=int)
    masks[0, 1, 1] = 1
    with pytest.raises(UndefinedMetricError, match="constant"):
        au_pro(maps, masks, protocol="rd4ad")


# ------------------------------------------------------------------ errors


def test_unknown_protocol_lists_the_choices():
    maps, masks = blob_data(0)
    with pytest.raises(ValueError, match="mvtec, rd4ad"):
        au_pro(maps, masks, protocol="bogus")
    assert AU_PRO_PROTOCOLS == ("mvtec", "rd4ad")


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.5])
def test_bad_fpr_limit(limit):
    maps, masks = blob_data(0)
    with pytest.raises(ValueError, match="fpr_limit"):
        au_pro(maps, masks, fpr_limit=limit)


@pytest.mark.parametrize(
    "call",
    [
        lambda: image_auroc(np.zeros(4), np.array([0, 1, 0])),
        lambda: image_auroc(np.zeros((2, 2)), np.array([[0, 1], [0, 1]])),
        lambda: pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))),
        lambda: pixel_ap(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))),
        lambda: au_pro(np.zeros((4, 4)), np.zeros((4, 4))),
        lambda: au_pro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), protocol="rd4ad"),
        lambda: pixel_auroc(np.zeros((0, 4, 4)), np.zeros((0, 4, 4))),
        lambda: image_auroc(np.array([]), np.array([])),
        lambda: pixel_auroc(np.zeros((1, 2, 2)), np.array([[[0, 2], [1, 0]]])),
        lambda: au_pro(np.zeros((1, 2, 2)), np.array([[[0, 0.5], [1, 0]]])),
        lambda: image_auroc(np.array([0.1, np.nan]), np.array([0, 1])),
    ],
    ids=[
        "image-length",
        "image-ndim",
        "pixel-auroc-shape",
        "pixel-ap-shape",
        "au-pro-ndim",
        "rd4ad-shape",
        "empty-maps",
        "empty-scores",
        "mask-not-binary",
        "mask-fractional",
        "nan-score",
    ],
)
def test_impossible_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: image_auroc(np.array([0.1, 0.5, 0.3]), np.array([1, 1, 1])),
        lambda: image_auroc(np.array([0.1, 0.5, 0.3]), np.array([0, 0, 0])),
        lambda: pixel_auroc(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4))),
        lambda: pixel_ap(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4))),
        lambda: au_pro(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4))),
        lambda: au_pro(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4)), protocol="rd4ad"),
        lambda: au_pro(np.random.default_rng(0).random((2, 4, 4)), np.ones((2, 4, 4))),
    ],
    ids=["all-anomalous", "all-normal", "pixel-auroc", "pixel-ap", "mvtec", "rd4ad", "no-normal-pixel"],
)
def test_undefined_metric_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_inputs_are_not_modified():
    maps, masks = blob_data(1)
    maps_copy, masks_copy = maps.copy(), masks.copy()
    for protocol in AU_PRO_PROTOCOLS:
        au_pro(maps, masks, protocol=protocol)
    pixel_auroc(maps, masks)
    np.testing.assert_array_equal(maps, maps_copy)
    np.testing.assert_array_equal(masks, masks_copy)


# ------------------------------------------------------------------ all_metrics


def test_all_metrics_agrees_with_single_metrics():
    maps, masks = blob_data(2, n=6, n_normal=2)
    scores = maps.max(axis=(1, 2))
    labels = masks.reshape(6, -1).max(axis=1)
    result = all_metrics(scores, labels, maps, masks)
    assert set(result) == {"image_auroc", "pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad"}
    assert result["image_auroc"] == pytest.approx(image_auroc(scores, labels), abs=1e-12)
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(pixel_ap(maps, masks), abs=1e-12)
    assert result["au_pro"] == pytest.approx(au_pro(maps, masks), abs=1e-12)
    assert result["au_pro_rd4ad"] == pytest.approx(au_pro(maps, masks, protocol="rd4ad"), abs=1e-12)
    assert all(0.0 <= v <= 1.0 for v in result.values())


def test_all_metrics_gives_nan_for_undefined_metrics():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8))
    result = all_metrics(maps.max(axis=(1, 2)), np.zeros(3), maps, np.zeros((3, 8, 8)))
    assert all(math.isnan(v) for v in result.values())

    # Image labels with both classes but masks without anomalous pixels: only the image metric exists.
    result = all_metrics(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 0]), maps, np.zeros((3, 8, 8)))
    assert result["image_auroc"] == 1.0
    assert all(math.isnan(result[k]) for k in ("pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad"))


def test_all_metrics_still_raises_on_impossible_input():
    maps, masks = blob_data(0, n=4)
    with pytest.raises(ValueError, match="image scores"):
        all_metrics(np.zeros(3), np.array([0, 1, 1]), maps, masks)
    with pytest.raises(ValueError):
        all_metrics(np.zeros(4), np.array([0, 1, 1, 1]), maps, masks[:, :8])


def test_public_constants():
    assert metrics.DEFAULT_FPR_LIMIT == 0.3
    assert metrics.RD4AD_NUM_THRESHOLDS == 200


# ------------------------------------------------------------------ exact to 1e-9


def _tiny_regions(seed: int, n: int = 5, size: int = 12):
    """Single-pixel and two-pixel regions, with heavily tied scores (one decimal)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(1, n):
        for _ in range(3):
            y, x = rng.integers(0, size - 1, 2)
            masks[i, y, x : x + rng.integers(1, 3)] = 1
    maps = np.round(rng.random((n, size, size)) + 0.4 * masks, 1)
    return maps, masks


@pytest.mark.parametrize("data", ["ties", "tiny", "smooth"])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_pooled_metrics_equal_the_literal_references_to_1e_9(data, limit):
    maps, masks = {"ties": lambda: blob_data(4, decimals=0), "tiny": lambda: _tiny_regions(5),
                   "smooth": lambda: blob_data(6)}[data]()
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert au_pro(maps, masks, fpr_limit=limit) == pytest.approx(reference_au_pro_mvtec(maps, masks, limit), abs=1e-9)
    if limit == 0.3:
        assert au_pro(maps, masks, protocol="rd4ad") == pytest.approx(reference_au_pro_rd4ad(maps, masks), abs=1e-9)


def test_all_normal_set_gives_nan_pixel_metrics_and_a_real_image_auroc():
    maps = np.random.default_rng(0).random((4, 8, 8))
    out = all_metrics(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1]), maps, np.zeros((4, 8, 8)))
    assert out["image_auroc"] == 1.0
    assert all(math.isnan(out[k]) for k in ("pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad"))
    with pytest.raises(UndefinedMetricError):
        au_pro(maps, np.zeros((4, 8, 8)))

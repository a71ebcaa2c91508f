"""Anomaly-detection metrics: image AUROC, pixel AUROC, pixel AP and AU-PRO.

AU-PRO follows Bergmann et al., "The MVTec Anomaly Detection Dataset" (IJCV 2021):
PRO is the mean over ground-truth components of the fraction of each component
predicted anomalous, integrated over the false-positive rate up to 0.3 and
normalised. ``protocol="rd4ad"`` follows the public evaluation code of Deng & Li,
"Anomaly Detection via Reverse Distillation from One-Class Embedding" (CVPR 2022),
which computes the same idea per image with 200 evenly spaced thresholds; the two
give different numbers and papers mix them.

All functions are pure: they take numpy arrays or torch tensors, never change them,
and compute in float64 with integer counts, so half-precision inputs lose nothing
beyond their own rounding. Impossible input raises :class:`ValueError`; a metric
that is undefined for otherwise valid input (one class only, no anomalous region)
raises :class:`UndefinedMetricError`, a ``ValueError`` that :func:`all_metrics`
turns into NaN.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "AU_PRO_PROTOCOLS",
    "DEFAULT_FPR_LIMIT",
    "RD4AD_NUM_THRESHOLDS",
    "UndefinedMetricError",
    "all_metrics",
    "au_pro",
    "image_auroc",
    "pixel_ap",
    "pixel_auroc",
]

ArrayLike = np.ndarray | torch.Tensor

AU_PRO_PROTOCOLS: tuple[str, ...] = ("mvtec", "rd4ad")
"""Accepted ``protocol`` values of :func:`au_pro`."""

DEFAULT_FPR_LIMIT = 0.3
"""Integration limit on the false-positive rate used by both AU-PRO protocols."""

RD4AD_NUM_THRESHOLDS = 200
"""Thresholds per image in the RD4AD protocol; fixed by that code, not a tunable."""

# Ground-truth regions are 8-connected within an image and never span two images:
# the middle plane of a 3x3x3 structure links all 8 neighbours, the outer planes are empty.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


class UndefinedMetricError(ValueError):
    """The metric has no value for this (valid) input, e.g. only one class is present."""


# --------------------------------------------------------------------------- inputs


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16, and float16 sums would lose precision anyway.
        if x.is_floating_point():
            x = x.to(torch.float64)
        return x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    return arr


def _as_scores(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_binary(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must hold 0/1 values, got dtype {arr.dtype}")
    positive = arr == 1
    if not (positive | (arr == 0)).all():
        found = np.unique(arr[~(positive | (arr == 0))])[:5]
        raise ValueError(f"{name} must be binary (0/1); found other values such as {found.tolist()}")
    return positive


def _image_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores")
    y = _as_binary(labels, "labels")
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise ValueError(
            f"scores and labels must both have shape (N,); got {tuple(s.shape)} and {tuple(y.shape)}"
        )
    return s, y


def _pixel_inputs(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    m = _as_scores(maps, "maps")
    g = _as_binary(masks, "masks")
    if m.ndim != 3 or m.shape != g.shape:
        raise ValueError(
            f"maps and masks must both have shape (N, H, W); got {tuple(m.shape)} and {tuple(g.shape)}"
        )
    return m, g


def _check_fpr_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit!r}")
    return limit


def _require_both_classes(positive: np.ndarray, metric: str) -> tuple[int, int]:
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        present = "anomalous" if n_pos else "normal"
        raise UndefinedMetricError(f"{metric} is undefined: the ground truth holds only {present} entries")
    return n_pos, n_neg


# ------------------------------------------------------------------ sorted classes


@dataclass(frozen=True)
class _Split:
    """Scores sorted once per class, ascending.

    Every pooled metric here only needs, for some thresholds, how many scores of each
    class lie above them: two value sorts and binary searches give that without ranking
    all pixels together (a value sort is several times faster than an argsort, and only
    the anomalous pixels, a few per cent, need their order kept).

    Attributes:
        normal: scores of the negatives (normal pixels or images), ascending.
        anomalous: scores of the positives, ascending.
        anomalous_order: positions (among the positives, in input order) of ``anomalous``.
    """

    normal: np.ndarray
    anomalous: np.ndarray
    anomalous_order: np.ndarray


def _split(scores: np.ndarray, positive: np.ndarray) -> _Split:
    flat, hits = scores.ravel(), positive.ravel()
    anomalous = flat[hits]
    order = np.argsort(anomalous, kind="stable")
    return _Split(normal=np.sort(flat[~hits]), anomalous=anomalous[order], anomalous_order=order)


def _auroc_split(split: _Split, metric: str) -> float:
    n_pos, n_neg = split.anomalous.size, split.normal.size
    if n_pos == 0 or n_neg == 0:
        present = "anomalous" if n_pos else "normal"
        raise UndefinedMetricError(f"{metric} is undefined: the ground truth holds only {present} entries")
    # Mann-Whitney in integers: a positive above k negatives scores 2k, a tie scores 1 per tied negative.
    below = np.searchsorted(split.normal, split.anomalous, side="left")
    not_above = np.searchsorted(split.normal, split.anomalous, side="right")
    twice = int(np.sum(below, dtype=np.int64)) + int(np.sum(not_above, dtype=np.int64))
    return twice / (2 * n_pos * n_neg)


def _ap_split(split: _Split) -> float:
    n_pos, n_neg = split.anomalous.size, split.normal.size
    if n_pos == 0 or n_neg == 0:
        present = "anomalous" if n_pos else "normal"
        raise UndefinedMetricError(f"pixel AP is undefined: the ground truth holds only {present} entries")
    # Recall only grows at the positives' distinct scores; precision there counts every
    # score at or above them.
    values, first, counts = np.unique(split.anomalous, return_index=True, return_counts=True)
    tp = n_pos - first
    fp = n_neg - np.searchsorted(split.normal, values, side="left")
    return float(np.sum(counts * (tp / (tp + fp))) / n_pos)


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under a curve with non-decreasing ``x`` from x[0] to ``limit``.

    Requires ``x[-1] >= limit``; the curve value at ``limit`` is interpolated
    linearly between its neighbours when no point sits exactly there.
    """
    k = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    xs, ys = x[:k], y[:k]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) * 0.5)
    if k < x.size and xs[-1] < limit:
        step = (limit - x[k - 1]) / (x[k] - x[k - 1])
        y_at_limit = y[k - 1] + step * (y[k] - y[k - 1])
        area += 0.5 * (y[k - 1] + y_at_limit) * (limit - x[k - 1])
    return area


@dataclass(frozen=True)
class _Regions:
    labels: np.ndarray  # (N, H, W) int, 0 = normal, region ids unique across images
    count: int
    areas: np.ndarray  # areas[r] = pixels of region r; areas[0] = normal pixels


def _regions(masks: np.ndarray) -> _Regions:
    labels, count = ndimage.label(masks, structure=_REGION_STRUCTURE)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    return _Regions(labels=labels, count=int(count), areas=areas)


def _require_regions(regions: _Regions) -> None:
    if regions.count == 0:
        raise UndefinedMetricError("AU-PRO is undefined: the masks contain no anomalous region")
    if regions.areas[0] == 0:
        raise UndefinedMetricError("AU-PRO is undefined: the masks contain no normal pixel")


def _au_pro_mvtec(split: _Split, regions: _Regions, positive: np.ndarray, limit: float) -> float:
    """The MVTec AD curve (a point at every distinct score), integrated up to ``limit``.

    Only thresholds down to the one where the FPR reaches ``limit`` matter. Between two
    neighbouring distinct normal scores the FPR is flat, so the curve's area is the sum
    over distinct normal scores s (descending) of the FPR step there times the mean of
    the PRO just above s and at s; PRO at a threshold is the summed weight of the
    anomalous pixels at or above it, each weighing 1 / (its region's area × regions).
    """
    _require_regions(regions)
    normal = split.normal
    n_normal = normal.size
    # Distinct normal scores down to the FPR limit, ascending: the first and last position
    # of each in the sorted array count the normal pixels at-or-above and above it.
    start = max(0, int(math.floor(n_normal * (1.0 - limit))) - 1)
    start = int(np.searchsorted(normal, normal[start], side="left"))  # a tie group starts whole
    tail = normal[start:]
    new = np.flatnonzero(np.concatenate(([True], tail[1:] != tail[:-1])))
    thresholds = tail[new]
    fp_at = n_normal - (start + new)
    fp_over = n_normal - (start + np.append(new[1:], tail.size))
    # PRO at a threshold: the summed weight of the anomalous pixels at or above it. Each
    # pixel adds its weight to the highest threshold it passes; sums from the top spread it.
    weight = 1.0 / (regions.areas[1:] * float(regions.count))
    pixel_weights = weight[regions.labels.ravel()[positive.ravel()][split.anomalous_order] - 1]

    def pro(side: str) -> np.ndarray:
        highest = np.searchsorted(thresholds, split.anomalous, side=side) - 1
        passing = highest >= 0
        bins = np.bincount(highest[passing], weights=pixel_weights[passing], minlength=thresholds.size)
        return np.minimum(np.cumsum(bins[::-1])[::-1], 1.0)

    pro_at, pro_over = pro("right"), pro("left")
    # Curve points from the highest threshold down: just above s, then at s.
    x = np.concatenate(([0.0], np.stack((fp_over, fp_at), axis=1)[::-1].ravel() / n_normal, [1.0]))
    y = np.concatenate(([0.0], np.stack((pro_over, pro_at), axis=1)[::-1].ravel(), [1.0]))
    return _area_up_to(x, y, limit) / limit


def _au_pro_rd4ad_image(scores: np.ndarray, labels: np.ndarray, areas: np.ndarray, limit: float, index: int) -> float:
    anomalous = labels != 0
    normal_scores = np.sort(scores[~anomalous])
    if normal_scores.size == 0:
        raise UndefinedMetricError(f"RD4AD AU-PRO is undefined: image {index} has no normal pixel")
    low, high = scores.min(), scores.max()
    if high == low:
        raise UndefinedMetricError(f"RD4AD AU-PRO is undefined: the map of image {index} is constant")
    # np.arange itself, not a linspace: with float steps it sometimes yields 201
    # thresholds (the last one at or next to the maximum), and the protocol keeps that.
    thresholds = np.arange(low, high, (high - low) / RD4AD_NUM_THRESHOLDS)

    fpr = (normal_scores.size - np.searchsorted(normal_scores, thresholds, side="right")) / normal_scores.size

    region_ids = labels[anomalous]
    n_regions = np.unique(region_ids).size
    region_scores = scores[anomalous]
    order = np.argsort(region_scores)
    ranked = region_scores[order]
    weights = 1.0 / (areas[region_ids[order]] * float(n_regions))
    # above[k] = summed weight of the pixels ranked k and higher, i.e. those that
    # pass any threshold lying between ranked[k-1] and ranked[k].
    above = np.concatenate((np.cumsum(weights[::-1])[::-1], [0.0]))
    pro = above[np.searchsorted(ranked, thresholds, side="right")]

    keep = fpr < limit  # FPR falls as thresholds rise, so the kept points are a tail
    x, y = fpr[keep], pro[keep]
    if x.size < 2:
        raise UndefinedMetricError(
            f"RD4AD AU-PRO is undefined: image {index} has fewer than 2 thresholds with FPR < {limit}"
        )
    if x.max() == 0.0:
        raise UndefinedMetricError(
            f"RD4AD AU-PRO is undefined: every kept threshold of image {index} has FPR 0, so the "
            "normalisation by the largest kept FPR divides by zero"
        )
    x = x / x.max()
    # x is non-increasing; the area is taken with the orientation that makes it positive.
    return float(np.sum((x[:-1] - x[1:]) * (y[:-1] + y[1:])) * 0.5)


def _au_pro_rd4ad(maps: np.ndarray, regions: _Regions, limit: float) -> float:
    values = []
    for index in range(maps.shape[0]):
        labels = regions.labels[index].ravel()
        if not labels.any():
            continue  # normal images do not enter this protocol at all
        values.append(_au_pro_rd4ad_image(maps[index].ravel(), labels, regions.areas, limit, index))
    if not values:
        raise UndefinedMetricError("RD4AD AU-PRO is undefined: no image has an anomalous region")
    return float(np.mean(values))


# ------------------------------------------------------------------- public API


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of image-level anomaly scores.

    Ties count as half a correct ordering, as in ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: Anomaly scores of shape (N,), higher meaning more anomalous.
        labels: Ground truth of shape (N,), 1 for anomalous and 0 for normal.

    Returns:
        The AUROC as a fraction in [0, 1].

    Raises:
        ValueError: On mismatched or empty shapes, non-binary labels or non-finite scores.
        UndefinedMetricError: When only one class is present.
    """
    s, y = _image_inputs(scores, labels)
    return _auroc_split(_split(s, y), "image AUROC")


def pixel_auroc(maps: ArrayLike, masks: ArrayLike) -> float:
    """Area under the ROC curve over all pixels of all images pooled together.

    Args:
        maps: Anomaly maps of shape (N, H, W).
        masks: Binary ground-truth masks of shape (N, H, W), 1 marking anomalous pixels.

    Returns:
        The pixel AUROC as a fraction in [0, 1].

    Raises:
        ValueError: On mismatched or empty shapes, non-binary masks or non-finite maps.
        UndefinedMetricError: When the masks hold only normal or only anomalous pixels.
    """
    m, g = _pixel_inputs(maps, masks)
    _require_both_classes(g, "pixel AUROC")
    return _auroc_split(_split(m, g), "pixel AUROC")


def pixel_ap(maps: ArrayLike, masks: ArrayLike) -> float:
    """Average precision over all pixels pooled, as ``sklearn.metrics.average_precision_score``.

    AP is the sum over distinct thresholds of the recall gained there times the
    precision there; tied scores enter together.

    Args:
        maps: Anomaly maps of shape (N, H, W).
        masks: Binary ground-truth masks of shape (N, H, W), 1 marking anomalous pixels.

    Returns:
        The pixel AP as a fraction in [0, 1].

    Raises:
        ValueError: On mismatched or empty shapes, non-binary masks or non-finite maps.
        UndefinedMetricError: When the masks hold only normal or only anomalous pixels.
    """
    m, g = _pixel_inputs(maps, masks)
    _require_both_classes(g, "pixel AP")
    return _ap_split(_split(m, g))


def au_pro(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    protocol: str = "mvtec",
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    Ground-truth regions are the 8-connected components of each image's mask.

    ``protocol="mvtec"`` (the MVTec AD definition): one curve for the whole set, with a
    point at every distinct score ``t`` (prediction ``score >= t``); FPR counts false
    positives over the normal pixels of all images, normal images included; PRO is the
    mean overlap over all regions of all images. The curve runs from (0, 0) to (1, 1)
    and is integrated by trapezoids up to ``fpr_limit`` (interpolated there), then
    divided by ``fpr_limit``.

    ``protocol="rd4ad"`` (the RD4AD evaluation code): a separate curve for every image
    with an anomalous region, averaged over those images; normal images are skipped.
    Each curve uses ``np.arange(min, max, (max - min) / 200)`` of that image's scores as
    thresholds (prediction ``score > t``) and its own normal pixels for the FPR, keeps
    the points with ``FPR < fpr_limit``, divides their FPR by the largest kept FPR and
    integrates by trapezoids.

    Args:
        maps: Anomaly maps of shape (N, H, W).
        masks: Binary ground-truth masks of shape (N, H, W), 1 marking anomalous pixels.
        fpr_limit: Upper end of the false-positive-rate range, in (0, 1].
        protocol: One of :data:`AU_PRO_PROTOCOLS`.

    Returns:
        The AU-PRO as a fraction in [0, 1].

    Raises:
        ValueError: On mismatched or empty shapes, non-binary masks, non-finite maps,
            an out-of-range ``fpr_limit`` or an unknown protocol.
        UndefinedMetricError: When there is no anomalous region or no normal pixel, or
            (rd4ad) when an anomalous image's curve is degenerate: a constant map, fewer
            than two kept points, or only FPR-0 points (the original code crashes or
            returns NaN there).
    """
    if protocol not in AU_PRO_PROTOCOLS:
        raise ValueError(f"unknown AU-PRO protocol {protocol!r}; choose one of {', '.join(AU_PRO_PROTOCOLS)}")
    limit = _check_fpr_limit(fpr_limit)
    m, g = _pixel_inputs(maps, masks)
    regions = _regions(g)
    if protocol == "rd4ad":
        return _au_pro_rd4ad(m, regions, limit)
    _require_regions(regions)  # before the sort, which is the expensive part
    return _au_pro_mvtec(_split(m, g), regions, g, limit)


def _nan_if_undefined(compute: Callable[[], float]) -> float:
    try:
        return float(compute())
    except UndefinedMetricError:
        return math.nan


def all_metrics(
    image_scores: ArrayLike,
    image_labels: ArrayLike,
    maps: ArrayLike,
    masks: ArrayLike,
) -> dict[str, float]:
    """Every metric of a test set at once, sorting each class of pixels only once.

    Args:
        image_scores: Image anomaly scores of shape (N,).
        image_labels: Image ground truth of shape (N,), 1 for anomalous.
        maps: Anomaly maps of shape (N, H, W).
        masks: Binary ground-truth masks of shape (N, H, W).

    Returns:
        ``image_auroc``, ``pixel_auroc``, ``pixel_ap``, ``au_pro`` (MVTec definition,
        FPR limit 0.3) and ``au_pro_rd4ad`` (RD4AD protocol, FPR limit 0.3), each a
        fraction in [0, 1], or NaN where the metric is undefined for this set (for
        example no anomalous pixel).

    Raises:
        ValueError: On impossible input: mismatched or empty shapes, non-binary labels or
            masks, non-finite scores, or a different number of images and maps.
    """
    s, y = _image_inputs(image_scores, image_labels)
    m, g = _pixel_inputs(maps, masks)
    if s.shape[0] != m.shape[0]:
        raise ValueError(f"got {s.shape[0]} image scores but {m.shape[0]} maps")

    results = {"image_auroc": _nan_if_undefined(lambda: image_auroc(s, y))}
    n_pos = int(np.count_nonzero(g))
    if 0 < n_pos < g.size:
        split = _split(m, g)
        regions = _regions(g)
        results["pixel_auroc"] = _nan_if_undefined(lambda: _auroc_split(split, "pixel AUROC"))
        results["pixel_ap"] = _nan_if_undefined(lambda: _ap_split(split))
        results["au_pro"] = _nan_if_undefined(lambda: _au_pro_mvtec(split, regions, g, DEFAULT_FPR_LIMIT))
        results["au_pro_rd4ad"] = _nan_if_undefined(lambda: _au_pro_rd4ad(m, regions, DEFAULT_FPR_LIMIT))
    else:
        # With one pixel class there is no curve to draw, so skip the sort.
        for key in ("pixel_auroc", "pixel_ap", "au_pro", "au_pro_rd4ad"):
            results[key] = math.nan
    return results

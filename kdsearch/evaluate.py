"""Anomaly maps for a split, and its metrics.

Maps are computed batch by batch on the device, under the run's numerics (bf16 autocast
and channels-last on CUDA), and gathered on the CPU in float32 for the metrics of
:mod:`kdsearch.metrics`.
"""
from __future__ import annotations

import torch

from kdsearch.data import normalize
from kdsearch.methods.base import AnomalyMethod, MethodConfig
from kdsearch.metrics import all_metrics
from kdsearch.nn import gaussian_blur
from kdsearch.numerics import Numerics


@torch.no_grad()
def predict(method: AnomalyMethod, images: torch.Tensor, batch_size: int, numerics: Numerics,
            scoring: MethodConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (N, H, W) and image scores (N,) on the CPU, float32.

    Args:
        method: the trained method (put in eval mode here).
        images: uint8 (N, 3, H, W) or already-normalised float images.
        batch_size: images per forward pass.
        numerics: device, autocast and memory format to run with.
        scoring: scoring settings, a config of the method that differs from ``method.config``
            in inference fields (:meth:`AnomalyMethod.scoring_config`); its own when ``None``.
    """
    was_training = method.training
    method.eval()
    maps, scores = [], []
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(numerics.device, non_blocking=True)
            chunk = numerics.format(normalize(chunk) if chunk.dtype == torch.uint8 else chunk.float())
            with numerics.autocast():
                batch_maps = method.anomaly_map(chunk, scoring).float()
            scores.append(method.image_score(batch_maps, scoring).float().cpu())
            maps.append(batch_maps.cpu())
    finally:
        method.train(was_training)
    return torch.cat(maps), torch.cat(scores)


def evaluate(method: AnomalyMethod, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
             batch_size: int, numerics: Numerics, scoring: MethodConfig | None = None) -> dict[str, float]:
    """The metrics of one split: ``image_auroc, pixel_auroc, pixel_ap, au_pro, au_pro_rd4ad``,
    under ``scoring`` (as for :func:`predict`)."""
    maps, scores = predict(method, images, batch_size, numerics, scoring)
    return all_metrics(scores.numpy(), labels.cpu().numpy(), maps.numpy(), masks.cpu().numpy().astype(bool))


def mean_image_distance_scores(train_images: torch.Tensor, test_images: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """A naive reference detector: per-image max of the blurred |image − mean normal image|.

    Args:
        train_images: uint8 (N, 3, H, W) normal images.
        test_images: uint8 (M, 3, H, W) images to score.
        sigma: Gaussian smoothing of the channel-mean absolute difference, in pixels.

    Returns:
        (M,) float32 scores; a method that learns anything should beat their image AUROC.
    """
    mean_image = train_images.float().mean(0)
    difference = (test_images.float() - mean_image).abs().mean(1)
    return gaussian_blur(difference, sigma).flatten(1).amax(1)

"""Anomaly maps for a split, and its metrics.

Maps are computed batch by batch on the device (bf16 autocast on CUDA) and gathered on
the CPU in float32 for the metrics of :mod:`kdsearch.metrics`.
"""
from __future__ import annotations

import contextlib

import torch

from kdsearch.data import normalize
from kdsearch.methods.base import AnomalyMethod
from kdsearch.metrics import all_metrics
from kdsearch.nn import gaussian_blur


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(method: AnomalyMethod, images: torch.Tensor, batch_size: int, device: torch.device,
            channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (N, H, W) and image scores (N,) on the CPU, float32.

    Args:
        method: the trained method (put in eval mode here).
        images: uint8 (N, 3, H, W) or already-normalised float images.
        batch_size: images per forward pass.
        device: where to run.
        channels_last: feed channels-last inputs (CUDA).
    """
    was_training = method.training
    method.eval()
    maps, scores = [], []
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(device, non_blocking=True)
            chunk = normalize(chunk) if chunk.dtype == torch.uint8 else chunk.float()
            if channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            with autocast_context(device):
                batch_maps = method.anomaly_map(chunk).float()
            scores.append(method.image_score(batch_maps).float().cpu())
            maps.append(batch_maps.cpu())
    finally:
        method.train(was_training)
    return torch.cat(maps), torch.cat(scores)


def evaluate(method: AnomalyMethod, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
             batch_size: int, device: torch.device, channels_last: bool = False) -> dict[str, float]:
    """The metrics of one split: ``image_auroc, pixel_auroc, pixel_ap, au_pro, au_pro_rd4ad``."""
    maps, scores = predict(method, images, batch_size, device, channels_last)
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

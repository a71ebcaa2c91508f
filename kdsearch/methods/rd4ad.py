"""RD4AD: reverse distillation from a one-class embedding (Deng & Li, CVPR 2022).

Frozen teacher E (layers 1-3 of an ImageNet ResNet), trainable one-class bottleneck
embedding (OCBE) and reversed student decoder D. Loss: Σ_k (1 − cos(vec E_k, vec D_k))
(Eq. 2, flattened per image, as in the public code). Anomaly map: Σ_k of the bilinearly
upsampled per-pixel 1 − cos maps, Gaussian σ = 4; image score = max of the map.
Paper training: Adam lr 0.005, β = (0.5, 0.999), batch 16, 200 epochs, 256².
OCBE and decoder start as the authors' code starts them: Kaiming fan-out convs, BatchNorm
1/0, the upsampling transposed convs at PyTorch's default (:func:`~kdsearch.nn.resnet_init_`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdsearch.methods._registry import register_method
from kdsearch.methods.base import AnomalyMethod, Batch, MethodConfig, clean_teacher_features
from kdsearch.nn import (
    FrozenTeacher,
    OneClassBottleneck,
    ReverseDecoder,
    bottleneck_width_factor,
    cosine_distance_map,
    flattened_cosine_loss,
    gaussian_blur,
    residual_block_kind,
    stage_depths,
    upsample_maps,
)


@dataclass(frozen=True)
class RD4ADConfig(MethodConfig):
    """RD4AD's paper configuration."""

    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)

    def teacher_cache_input(self) -> str | None:
        return "alone"


class ReverseDistillationNetwork(nn.Module):
    """Teacher, OCBE and reversed decoder sized from the teacher's ``feature_info``."""

    def __init__(self, backbone: str, pretrained: str) -> None:
        super().__init__()
        self.teacher = FrozenTeacher(backbone, pretrained, out_indices=(1, 2, 3))
        encoder = self.teacher.encoder
        kind = residual_block_kind(encoder)
        width = bottleneck_width_factor(encoder)
        depths = stage_depths(encoder)
        # Standard ResNets repeat their first-stage depth in the last stage, which the
        # OCBE mirrors (RD4AD: 3 blocks for ResNet50-family, 2 for ResNet18).
        self.bottleneck = OneClassBottleneck(self.teacher.channels, self.teacher.reductions, depths[0], kind, width)
        self.decoder = ReverseDecoder(self.bottleneck.out_channels, self.teacher.channels, depths, kind, width)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        teacher_features = self.teacher(images)
        return teacher_features, self.decoder(self.bottleneck(teacher_features))


def fused_distance_map(
    teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int], sigma: float
) -> torch.Tensor:
    """Σ of upsampled per-level 1 − cos maps, then Gaussian smoothing: (B, H, W)."""
    maps = [cosine_distance_map(t.float(), s.float()) for t, s in zip(teacher, student)]
    return gaussian_blur(upsample_maps(maps, size).sum(dim=0), sigma)


@register_method("rd4ad")
class RD4AD(AnomalyMethod):
    """The RD4AD baseline."""

    config_class = RD4ADConfig

    def __init__(self, config: RD4ADConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        self.network = ReverseDistillationNetwork(config.backbone, config.pretrained)

    def cached_teacher(self) -> FrozenTeacher:
        return self.network.teacher

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        teacher_features = clean_teacher_features(batch, self.network.teacher)
        student_features = self.network.decoder(self.network.bottleneck(teacher_features))
        return {"loss": flattened_cosine_loss(teacher_features, student_features)}

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        teacher_features, student_features = self.network(images)
        return fused_distance_map(teacher_features, student_features, images.shape[-2:],
                                  self.scoring_config(scoring).gaussian_sigma)

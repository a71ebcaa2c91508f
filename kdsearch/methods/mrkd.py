"""MRKD: masked reverse knowledge distillation (Jiang, Cao & Shen, Knowledge-Based Systems 2023).

RD4AD (teacher E, one-class bottleneck B, reversed student decoder S) with two masking
strategies that turn reconstruction into restoration:

- ILM, image-level masking (Sec. 3.2, Eq. 1): a share α of the training images carries
  NSA anomalies; the teacher's features of the anomalous image go through B into S, and
  the output is supervised by the teacher's features of the normal image.
- FLM, feature-level masking (Sec. 3.3, Eqs. 2-3): each student feature map f_S^l has
  its pixels zeroed where a uniform draw R^l(h, w) < λ (one draw per pixel, shared by all
  channels), then a generation module G^l = conv3×3 → ReLU → conv3×3 restores f_G^l.
- Loss (Eq. 4): Σ_l (1 − cos(vec f_T,n^l, vec f_G^l)), the RD4AD loss.
- Map (Eq. 5): Σ over the chosen levels of the upsampled per-pixel 1 − cos(f_T^l, f_G^l),
  with FLM masking applied at test time too (Algorithm 1, "Perform only FLM");
  image score (Eq. 6): the maximum of the map.

Paper training: WRN50 teacher, batch 16, Adam lr 0.005, 200 epochs, 256², λ = 0.2.

Choices where the paper is silent or ambiguous (each a config field where tunable):

- α is the *per-image probability* of an NSA anomaly (``SynthesisConfig.probability``);
  the paper calls it "the proportion of synthetic abnormal samples in the training set".
  The paper's default is α = 1: Table 6's α = 1 column equals Table 5's ILM+FLM row and
  its α = 0 column equals the FLM-only row, so ``ilm=False`` and ``alpha=0`` are the same
  model and neither asks the loop for synthesis.
- Text and code disagree on the anomalies. The text (Sec. 3.2) describes NSA: patches
  of other normal images, rescaled and Poisson-blended, "replicated in foreground
  regions". The authors' ``main.py`` calls NSA's ``patch_ex`` with ``mode="swap"``,
  ``same=True``, ``resize=False``: a patch of the image itself, shifted, copied without
  blending, with per-category widths, patch counts and object masks. A ``paper`` run
  follows the code (``synthesis.nsa_mode: swap`` and the per-category table in
  ``mrkd.yaml``; :mod:`kdsearch.synthesis.nsa_swap`); ``synthesis.nsa_mode=auto`` is the
  text's reading, which ``quick`` and ``smoke`` keep. On capsule-like images the code's
  call labels about 1 % of the image, the text's reading 6-8 %.
- Where NSA pastes: ``ilm_foreground="threshold"`` is NSA's brightness rule (the code's
  ``skip_background``) on object categories and the whole image on texture categories
  (a texture has no background; :meth:`SynthesisConfig.for_category`). Unlike NSA's
  rule, a mask under 2 % or over 98 % of the image falls back to the whole image.
  ``"grabcut"`` is DMDD's foreground; ``"none"`` (the config default, and the ``quick``
  profile) pastes anywhere.
- Initialisation as the authors' code: Kaiming fan-out convs in the bottleneck, the
  decoder and the generation modules, BatchNorm 1/0 (:func:`~kdsearch.nn.resnet_init_`).
- λ masking is a Bernoulli draw per pixel (Eq. 2, as in the MGD code: ``rand > 1 − λ``),
  so the masked share equals λ in expectation, not exactly per map. At test time the
  draw uses the global torch generator, which the loop seeds per trial.
- Generation modules keep the channel count of their level and use 3×3 convolutions
  with padding 1, as the MGD code does; the paper only says "two convolution layers".
- The Table 7 score-map ablation (``score_maps``) changes only which levels enter the
  anomaly map; training always uses all three levels (the paper trains one model).
- The map is smoothed with a Gaussian σ = 4 as in the RD4AD code MRKD builds on
  (Eq. 5 does not mention it); Adam β = (0.5, 0.999) as in that code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods._registry import register_method
from kdsearch.methods.base import AnomalyMethod, Batch, MethodConfig, SynthesisConfig, clean_teacher_features
from kdsearch.methods.rd4ad import ReverseDistillationNetwork, fused_distance_map
from kdsearch.nn import FrozenTeacher, flattened_cosine_loss, resnet_init_


@dataclass(frozen=True)
class MRKDConfig(MethodConfig):
    """MRKD's paper configuration; every Table 5-8 / Fig. 11 switch is a field.

    Attributes:
        ilm: image-level masking (NSA anomalies into the bottleneck), Table 5.
        alpha: per-image probability of an NSA anomaly when ``ilm`` is on, Table 6.
        ilm_foreground: where NSA may paste patches: ``"none"``, ``"threshold"`` or ``"grabcut"``.
        flm: feature-level masking + generation modules, Table 5.
        mask_ratio: λ, the share of student feature pixels masked by FLM, Fig. 11.
        flm_at_test: mask student features at test time as well (the paper does); when off,
            the generation modules see the unmasked student features.
        score_maps: feature levels (1 = shallowest) summed into the anomaly map, Table 7.
    """

    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    ilm: bool = True
    alpha: float = 1.0
    ilm_foreground: Literal["none", "threshold", "grabcut"] = "none"
    flm: bool = True
    mask_ratio: float = 0.2
    flm_at_test: bool = True
    score_maps: tuple[int, ...] = (1, 2, 3)

    def validate(self, image_size: int) -> None:
        super().validate(image_size)
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"alpha is a proportion of training images in [0, 1], got {self.alpha}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise UserError(f"mask_ratio (λ) must be in [0, 1), got {self.mask_ratio}")
        if not self.score_maps or len(set(self.score_maps)) != len(self.score_maps) or not set(self.score_maps) <= {1, 2, 3}:
            raise UserError(f"score_maps must be distinct levels among 1, 2, 3, got {list(self.score_maps)}")

    def synthesis(self) -> SynthesisConfig | None:
        if not self.ilm or self.alpha == 0.0:
            return None
        return SynthesisConfig(kind="nsa", probability=self.alpha, foreground=self.ilm_foreground)

    def inference_fields(self) -> tuple[str, ...]:
        return (*super().inference_fields(), "score_maps", "flm_at_test")

    def teacher_cache_input(self) -> str | None:
        # teacher(normal) every step; teacher(anomalous) sees a new anomaly every epoch.
        return "alone"

    def category_inert_fields(self, kind: str | None) -> dict[str, str]:
        if kind == "texture":
            return {"ilm_foreground": "a texture has no background: NSA pastes anywhere on it"}
        return {}

    def training_spelling(self, identity: dict[str, object]) -> dict[str, object]:
        """α = 0 and ILM off train the same model: neither asks for synthesis, and the
        training step then feeds the normal image's features to the bottleneck."""
        if self.ilm and self.alpha > 0.0:
            return identity
        return {**{k: v for k, v in identity.items() if k not in ("alpha", "ilm_foreground")}, "ilm": False}

    def inert_fields(self) -> dict[str, str]:
        inert = super().inert_fields()
        if not self.flm:
            inert |= dict.fromkeys(("mask_ratio", "flm_at_test"), "flm is false (no feature masking)")
        if not self.ilm:
            inert |= dict.fromkeys(("alpha", "ilm_foreground"), "ilm is false (no NSA anomalies)")
        elif self.alpha == 0.0:
            inert["ilm_foreground"] = "alpha is 0 (no NSA anomalies)"
        return inert


def random_pixel_mask(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """FLM mask of Eq. 2: (B, 1, h, w), 0 where a uniform draw is below ``ratio``, else 1."""
    draws = torch.rand((features.shape[0], 1, *features.shape[-2:]), device=features.device)
    return (draws >= ratio).to(features.dtype)


class GenerationModule(nn.Module):
    """G of Eq. 3: conv3×3 → ReLU → conv3×3, keeping the level's channel count, initialised as the
    authors' decoder (Kaiming fan-out weights, PyTorch's default biases)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        resnet_init_(self)

    def forward(self, masked_features: torch.Tensor) -> torch.Tensor:
        return self.body(masked_features)


@register_method("mrkd")
class MRKD(AnomalyMethod):
    """RD4AD network plus ILM (batch synthesis) and FLM (masking + generation modules)."""

    config_class = MRKDConfig

    def __init__(self, config: MRKDConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        self.network = ReverseDistillationNetwork(config.backbone, config.pretrained)
        self.generators = nn.ModuleList(GenerationModule(c) for c in self.network.teacher.channels) if config.flm else None

    def restore(self, student_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """f_G^l = G^l(f_S^l ⊙ M^l) with FLM on; the student features unchanged otherwise."""
        if self.generators is None:
            return student_features
        return [g(f * random_pixel_mask(f, self.config.mask_ratio)) for g, f in zip(self.generators, student_features)]

    def cached_teacher(self) -> FrozenTeacher:
        return self.network.teacher

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        teacher_normal = clean_teacher_features(batch, self.network.teacher)
        # ILM: the bottleneck sees the anomalous image's teacher features, the loss the normal one's.
        teacher_input = self.network.teacher(batch["anomalous"]) if "anomalous" in batch else teacher_normal
        student = self.network.decoder(self.network.bottleneck(teacher_input))
        return {"loss": flattened_cosine_loss(teacher_normal, self.restore(student))}

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        cfg = self.scoring_config(scoring)
        teacher, student = self.network(images)
        if self.generators is not None and not cfg.flm_at_test:
            restored = [g(f) for g, f in zip(self.generators, student)]
        else:
            restored = self.restore(student)
        levels = [level - 1 for level in cfg.score_maps]
        return fused_distance_map([teacher[i] for i in levels], [restored[i] for i in levels],
                                  images.shape[-2:], cfg.gaussian_sigma)

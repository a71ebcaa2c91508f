"""DSKD: dual-student knowledge distillation (Yao & Gao, arXiv:2402.00448, 2024).

A frozen ImageNet ResNet18 teacher T, a trainable student encoder S_e of the same
architecture, a deep feature embedding (DFE) bottleneck and a reversed student decoder
S_d. Features of ``conv2_x..conv4_x`` are ℓ2-normalised per pixel (Eq. 3); each level's
map is M = λ·½‖F̂_a − F̂_b‖² + (1 − cos(F̂_a, F̂_b)) (Eqs. 4–6, λ = 0.1); each student's
loss is the mean over levels of the pixel mean of its map against T (Eq. 7). Inference
sums the upsampled T–S_d maps (Eq. 8), smooths them with a Gaussian of σ = 4 (Eq. 9)
and scores an image by the maximum (Eq. 10).
Paper training: Adam lr 1e-3, β = (0.5, 0.999), 200 epochs, 256² (batch size not given).

Ablation switches: ``structure`` DS / T-E / T-D / E-D (Table 7), ``dfe`` (Table 8),
``score_maps`` M1 / M2 / M3 / M1-3 (Table 9), ``lambda_l2`` (Eq. 6).

Ambiguities and the choices made here (no public code was found):

* DFE (Sec. 3.2, Fig. 4): F1 and F2 pass through two and one stride-2 3×3 conv blocks
  to F3's size, the three are concatenated and a stride-2 residual stage (1×1 conv
  shortcut) makes the embedding. The stride 2 is needed because S_d mirrors the
  encoder (each decoder stage upsamples ×2 and emits one compared level); this is
  RD4AD's OCBE, and is built with it. The text says "a residual block"; the default
  ``dfe_blocks = 2`` is what RD4AD's code (which Sec. 3.2 refers to) uses for ResNet18,
  and it reproduces Table 6's 6.17 G (as multiply-adds) at 256²: 6.16 GMACs, against
  5.86 GMACs with one block. ``dfe_blocks = 1`` gives the literal reading.
* DFE off (Table 8, "the output of S_e is directly downsampled"): the same residual
  block, fed with F3 only (no multi-scale fusion).
* The DFE reads the ℓ2-normalised encoder features (Algorithm 2, line 7).
* Normalisation: Eq. 3 as printed divides by the squared norm. The default
  ``feature_norm = "l2"`` divides by the norm (the usual ℓ2 normalisation, as in
  STPM); then ½‖F̂_a − F̂_b‖² equals 1 − cos in exact arithmetic, so λ only rescales M
  by (1 + λ) and keeps the ranking of pixels. It is not inert: the rescaled loss reaches
  Adam (whose ε is not scaled with it) and the rounding, so two values train different
  weights (two Adam steps at 64 px moved 189 of the 228 trained tensors), and rows
  that differ in λ do not share a training. ``"l2_squared"`` follows
  Eq. 3 literally, which makes the ℓ2 term depend on feature magnitudes: it is about
  1e-3 of the cosine term for ResNet18 features, so the paper's λ = 0.1 barely changes
  M, and the ``lambda`` axis (no table of the paper) runs this reading over 0-1000.
  The main configuration keeps ``l2``: Algorithm 1 and 2 say "ℓ2 normalization".
* Both students train jointly on ℓ_e + ℓ_d with one Adam; ℓ_d's gradient also reaches
  S_e through the DFE (Algorithm 1 updates θ_e and θ_d after computing both losses).
* S_e and S_d start from random weights (Algorithm 1, line 1): S_e as timm's (and
  torchvision's) ResNet starts, the DFE and S_d as RD4AD's code starts its OCBE and
  decoder (Kaiming fan-out convs, BatchNorm 1/0, transposed convs at PyTorch's default;
  :func:`~kdsearch.nn.resnet_init_`), the code Sec. 3.2 builds on.
* Table 7 structures, each trained from scratch: DS = T + S_e + DFE + S_d (losses T–S_e
  and T–S_d, maps T–S_d); T-E = T + S_e (STPM-like, loss and maps T–S_e); T-D = T + DFE
  + S_d with the DFE reading the teacher's features (RD4AD-like, loss and maps T–S_d);
  E-D = S_e + DFE + S_d with no teacher (loss and maps S_e–S_d, gradients into both).
  E-D can collapse: both networks train from scratch toward each other with no fixed
  target, so a constant feature map on both sides is a minimum of its loss. That is the
  row as the text describes it; kdsearch trains it as written and does not add the
  variant that would score the S_e–S_d pair of a trained DS model.
* Input normalisation: Sec. 4.1 says the resized images are "normalized by ℓ2 function";
  kdsearch feeds every method ImageNet mean/std-normalised images, as its ImageNet
  teacher expects (Eq. 3's ℓ2 normalisation applies to the features, below).
* Table 9 selects the levels summed at inference only (training uses all three);
  M1 is ``conv2_x`` (largest map), M3 ``conv4_x``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods._registry import register_method
from kdsearch.methods.base import AnomalyMethod, Batch, MethodConfig, clean_teacher_features
from kdsearch.nn import (
    FrozenTeacher,
    OneClassBottleneck,
    ReverseDecoder,
    bottleneck_width_factor,
    create_backbone,
    full_precision,
    gaussian_blur,
    residual_block_kind,
    stage_depths,
    upsample_maps,
)

#: ResNet ``conv2_x..conv4_x`` (timm levels 1..3), the levels the paper distils.
LEVELS = (1, 2, 3)
#: (teacher features, student features) of one teacher-student pair, one tensor per level.
_Pair = tuple[list[torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class DSKDConfig(MethodConfig):
    """DSKD's paper configuration; see the module docstring for each switch.

    Attributes:
        structure: ``ds`` (dual student), ``t_e``, ``t_d`` or ``e_d`` (Table 7).
        dfe: fuse all encoder levels in the bottleneck (True) or only the deepest (False).
        dfe_blocks: residual blocks in the DFE.
        score_maps: levels (1 = ``conv2_x`` … 3 = ``conv4_x``) summed into the anomaly map.
        lambda_l2: λ of Eq. 6.
        feature_norm: ``l2`` (divide by ‖F‖) or ``l2_squared`` (Eq. 3 as printed, ‖F‖²).
    """

    backbone: str = "resnet18"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    structure: Literal["ds", "t_e", "t_d", "e_d"] = "ds"
    dfe: bool = True
    dfe_blocks: int = 2
    score_maps: tuple[int, ...] = (1, 2, 3)
    lambda_l2: float = 0.1
    feature_norm: Literal["l2", "l2_squared"] = "l2"

    def validate(self, image_size: int) -> None:
        super().validate(image_size)
        levels = set(range(1, len(LEVELS) + 1))
        if not self.score_maps or len(set(self.score_maps)) != len(self.score_maps) or not set(self.score_maps) <= levels:
            raise UserError(f"score_maps must be distinct levels among 1..{len(LEVELS)}, got {list(self.score_maps)}")
        if self.lambda_l2 < 0:
            raise UserError(f"lambda_l2 must be >= 0, got {self.lambda_l2}")
        if self.dfe_blocks < 1:
            raise UserError(f"dfe_blocks must be >= 1, got {self.dfe_blocks}")
        if not self.dfe and self.structure == "t_e":
            raise UserError("dfe=false changes the bottleneck, which structure t_e does not have; use structure ds, t_d or e_d")

    def inference_fields(self) -> tuple[str, ...]:
        return (*super().inference_fields(), "score_maps")

    def teacher_cache_input(self) -> str | None:
        return None if self.structure == "e_d" else "alone"

    def inert_fields(self) -> dict[str, str]:
        inert = super().inert_fields()
        if self.structure == "t_e":
            inert |= dict.fromkeys(("dfe", "dfe_blocks"), "structure is t_e (no DFE bottleneck)")
        if self.structure == "e_d":
            inert["pretrained"] = "structure is e_d (no teacher)"
        return inert


def normalize_features(features: list[torch.Tensor], mode: str = "l2", eps: float = 1e-12) -> list[torch.Tensor]:
    """Per-pixel normalisation over channels (Eq. 3): by ‖F‖ (``l2``) or ‖F‖² (``l2_squared``)."""
    out = []
    for f in features:
        norm = f.float().norm(dim=1, keepdim=True)
        scale = norm if mode == "l2" else norm.pow(2)
        out.append(f.float() / scale.clamp_min(eps))
    return out


def distance_map(a: torch.Tensor, b: torch.Tensor, lambda_l2: float) -> torch.Tensor:
    """M = λ·½‖a − b‖² + (1 − cos(a, b)) per pixel (Eq. 6): (B, C, h, w) × 2 → (B, h, w)."""
    l2 = 0.5 * (a - b).pow(2).sum(dim=1)
    return lambda_l2 * l2 + 1.0 - F.cosine_similarity(a, b, dim=1)


def student_loss(reference: list[torch.Tensor], student: list[torch.Tensor], lambda_l2: float) -> torch.Tensor:
    """ℓ (Eq. 7): mean over levels of the pixel mean of M, averaged over the batch."""
    levels = [distance_map(r, s, lambda_l2).flatten(1).mean(dim=1) for r, s in zip(reference, student)]
    return torch.stack(levels).mean(dim=0).mean()


@register_method("dskd")
class DSKD(AnomalyMethod):
    """Teacher, student encoder, DFE bottleneck and reversed student decoder."""

    config_class = DSKDConfig

    def __init__(self, config: DSKDConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        cfg = config
        has_teacher = cfg.structure != "e_d"
        has_encoder = cfg.structure in ("ds", "t_e", "e_d")
        has_decoder = cfg.structure != "t_e"
        self.teacher = FrozenTeacher(cfg.backbone, cfg.pretrained, LEVELS) if has_teacher else None
        self.encoder = create_backbone(cfg.backbone, "none", LEVELS) if has_encoder else None
        reference = self.teacher.encoder if self.teacher is not None else self.encoder
        channels = list(reference.feature_info.channels())
        reductions = list(reference.feature_info.reduction())
        self.embedding: nn.Module | None = None
        self.decoder: nn.Module | None = None
        if has_decoder:
            kind, width = residual_block_kind(reference), bottleneck_width_factor(reference)
            depths = stage_depths(reference)
            fused = slice(None) if cfg.dfe else slice(-1, None)
            self.embedding = OneClassBottleneck(channels[fused], reductions[fused], cfg.dfe_blocks, kind, width)
            self.decoder = ReverseDecoder(self.embedding.out_channels, channels, depths, kind, width)

    def cached_teacher(self) -> FrozenTeacher | None:
        return self.teacher

    def _pairs(self, images: torch.Tensor, batch: Batch | None = None) -> tuple[list[_Pair], _Pair]:
        """(pairs whose maps are trained, the pair whose maps score) of normalised features;
        the teacher's features of ``images`` from ``batch`` (the training batch of
        ``images``) when it carries them."""
        mode = self.config.feature_norm
        teacher = None
        if self.teacher is not None:
            features = clean_teacher_features(batch, self.teacher) if batch is not None else self.teacher(images)
            teacher = normalize_features(features, mode)
        encoder = normalize_features(self.encoder(images), mode) if self.encoder is not None else None
        decoder = None
        if self.decoder is not None:
            source = encoder if encoder is not None else teacher
            fused = source if self.config.dfe else source[-1:]
            decoder = normalize_features(self.decoder(self.embedding(fused)), mode)
        structure = self.config.structure
        if structure == "ds":
            return [(teacher, encoder), (teacher, decoder)], (teacher, decoder)
        if structure == "t_e":
            return [(teacher, encoder)], (teacher, encoder)
        if structure == "t_d":
            return [(teacher, decoder)], (teacher, decoder)
        return [(encoder, decoder)], (encoder, decoder)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        trained, _ = self._pairs(batch["image"], batch)
        names = {"ds": ("loss_e", "loss_d"), "t_e": ("loss_e",), "t_d": ("loss_d",), "e_d": ("loss_ed",)}[self.config.structure]
        out = {name: student_loss(a, b, self.config.lambda_l2) for name, (a, b) in zip(names, trained)}
        out["loss"] = sum(out.values())
        return out

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        cfg = self.scoring_config(scoring)
        _, (reference, student) = self._pairs(images)
        with full_precision(images.device):  # the decoder's bf16 features, compared in fp32
            maps = [distance_map(reference[i - 1].float(), student[i - 1].float(), cfg.lambda_l2)
                    for i in cfg.score_maps]
        return gaussian_blur(upsample_maps(maps, images.shape[-2:]).sum(dim=0), cfg.gaussian_sigma)

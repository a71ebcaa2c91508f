"""ADPS: asymmetric distillation post-segmentation (Xing, Tang, Tang & Li, IEEE TNNLS; arXiv:2210.10495).

A frozen ImageNet teacher sees the whole image; a student of the same architecture
sees the image cut into k×k non-overlapping patches (Sec. III-A). The weighted mask
block (WMB) turns their disagreement into a coarse mask, W_i = 1 − cos(T_i, S_i)
(Eq. 1, written as the paper's 1 − W_i), and re-weights the teacher: C_i = W_i · T_i
(Eq. 2). The post-segmentation module (PSM) decodes C_1..C_n with UNet up-blocks
(Eqs. 3–5) into a two-class softmax mask (Eq. 6). Training uses DRAEM anomalies; the
loss is L = L_d + λ·L_s (Eq. 9), with L_d the cosine distillation loss whose target is
flipped on anomalous pixels (Eq. 7) and L_s the focal loss (Eq. 8).
Paper training: 256², k = 8, Adam lr 1e-4, batch 32, 300 epochs, lr × 0.2 at epochs
240 and 270, λ = 1.

Ablation switches (each a config field, a table row is a set of values):
``patch_k`` (Fig. 6), ``asym_stage`` (Table V, k = 4), ``structure`` (Table IV),
``fusion`` (Table VI), ``mask_measure`` + ``distill_loss`` (Table VII).

Ambiguities and the choices made here (the paper publishes no code):

* Levels: WRN50 ``layer1..layer3`` (strides 4, 8, 16), as RD4AD and the other papers
  of this project; ``out_indices`` changes them.
* Asymmetric stages (Table V): ``asym_stage = s`` cuts the input into patches and
  keeps the student's first ``s + 1`` feature stages patch-local; the features are put
  back in place after stage ``s`` and the deeper stages run on the whole map. Cutting
  the reassembled stage-j features into the same k×k grid is exactly the patch-local
  computation, so "also inside stage 1/2" means "patch-local one/two stages deeper".
  The default (stage 0) makes the stem and ``layer1`` patch-local. Sec. III-A's
  description (k² forward passes of the student, one per patch, every level S_i^j from
  its own patch) is ``asym_stage = 2`` with the three default levels; Table V's baseline
  row, used by Tables IV-VI, is stage 0. Every returned
  level S_i is the reassembled map. A patch must tile exactly through the
  patch-local stages: ``image_size / k`` must be a multiple of the stride of stage
  ``asym_stage + 1`` (4 for ``layer1``), otherwise a :class:`UserError`.
* Student: same architecture as the teacher, randomly initialised (STPM convention;
  the paper does not say).
* Distillation target flip (Eq. 7): Y is the DRAEM mask area-averaged to each level's
  resolution (a soft label on patch borders; the loss is linear in Y). Losses are
  per-pixel means, summed over levels. For ``distill_loss = mse`` the flipped term is
  Y·exp(−MSE) (bounded, decreasing in the distance), since maximising a raw MSE has no
  minimum; ``both`` adds the cosine and MSE terms. The MSE is the channel mean of
  (T − S)² on raw features, so it differs from the cosine (on unit vectors it would be
  1 − cos again). W_i for ``mask_measure`` uses the same measures; ``both`` adds them.
* Table VII's body is missing from the text: its rows are read as W_i and L_d using
  the same measure (the paper's consistency premise): Cosine, MSE, Cosine+MSE.
* Gradients of the focal loss reach the student through W_i (end-to-end training).
* PSM: up-blocks with skips from the deepest level to the shallowest (transposed conv
  to the skip's width, concat, two conv3×3-BN-ReLU), then skip-free up-blocks halving
  the width (minimum 16) until input resolution, a 3×3 conv to two classes, softmax.
* Table VI: Method (1) is C_i = |T_i − S_i|; Method (2) is a 3×3 conv of
  concat(T_i, S_i) back to the teacher's width (no BN/ReLU: "a 3×3 convolution").
* Table IV: W/O PW trains only L_d and scores with Σ_i upsampled W_i (σ-smoothed, as
  RD4AD); W/O T feeds C_i = S_i to the PSM (focal loss only); W/O S feeds C_i = T_i and
  only the PSM trains.
* Anomaly map of PSM variants: the anomaly-class probability at input resolution, not
  smoothed; image score = max of its Gaussian-smoothed (σ) copy, as DRAEM smooths its
  mask before the max. Anomalies are synthesised on half the images (DRAEM's rate).
* Focal loss: τ = 2 (Lin et al.), no α weighting, pixel mean; Adam betas (0.9, 0.999)
  (the paper names Adam only).
* Initialisation (the text is silent, no code is published): the student is a timm
  ResNet, which starts as torchvision's (Kaiming fan-out convs, BatchNorm 1/0, no zeroed
  residual branch). The PSM is UNet up-blocks and keeps PyTorch's default init, as UNet
  implementations do; so do Table VI's fusion convs. Measured on ``quick`` synthetic
  stone (seed 0, before DRAEM's code-faithful synthesis): pixel AUROC 0.59 with the
  default, 0.51 with RD4AD's fan-out init of the PSM.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods._registry import register_method
from kdsearch.methods.base import AnomalyMethod, Batch, MethodConfig, SynthesisConfig
from kdsearch.nn import FrozenTeacher, conv_bn_relu, create_backbone, full_precision, gaussian_blur, upsample_maps
from kdsearch.nn.patches import StagedFeatures, patchify, unpatchify

Measure = Literal["cosine", "mse", "both"]


@dataclass(frozen=True)
class ADPSConfig(MethodConfig):
    """ADPS's paper configuration; see the module docstring for each switch.

    Attributes:
        out_indices: teacher/student feature levels (1 = ``layer1``).
        patch_k: the student sees k×k patches (k = 1: the symmetric baseline).
        asym_stage: last student stage that stays patch-local (0 = the input split only).
        structure: ``full`` (ADPS), ``wo_pw`` (no PSM, no WMB), ``wo_t`` (no teacher),
            ``wo_s`` (no student).
        fusion: how C_i is made: ``wmb`` (W_i · T_i), ``abs_diff`` (|T − S|), ``concat``.
        mask_measure: W_i from ``cosine`` (1 − cos), ``mse`` or ``both``.
        distill_loss: L_d from ``cosine``, ``mse`` or ``both``.
        focal_weight: λ of Eq. 9.
        focal_gamma: τ of Eq. 8.
        anomaly_probability: share of training images given a DRAEM anomaly.
        texture_root: DTD-style texture folder; ``None`` uses the built-in procedural bank.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # epochs 240 and 270 of 300
    lr_gamma: float = 0.2
    out_indices: tuple[int, ...] = (1, 2, 3)
    patch_k: int = 8
    asym_stage: int = 0
    structure: Literal["full", "wo_pw", "wo_t", "wo_s"] = "full"
    fusion: Literal["wmb", "abs_diff", "concat"] = "wmb"
    mask_measure: Measure = "cosine"
    distill_loss: Measure = "cosine"
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    anomaly_probability: float = 0.5
    texture_root: str | None = None

    def validate(self, image_size: int) -> None:
        super().validate(image_size)
        if not self.out_indices or list(self.out_indices) != sorted(set(self.out_indices)) or self.out_indices[0] < 1:
            raise UserError(f"out_indices must be increasing feature levels >= 1, got {list(self.out_indices)}")
        if self.patch_k < 1:
            raise UserError(f"patch_k must be >= 1, got {self.patch_k}")
        if image_size % self.patch_k:
            raise UserError(
                f"patch_k={self.patch_k} does not divide image_size={image_size}; "
                "choose a k that divides the image size (the paper uses 1, 2, 4, 8, 16 at 256 px)")
        if not 0 <= self.asym_stage < len(self.out_indices):
            raise UserError(f"asym_stage must be in 0..{len(self.out_indices) - 1} (one per student stage), got {self.asym_stage}")
        if self.focal_weight < 0 or self.focal_gamma < 0:
            raise UserError(f"focal_weight and focal_gamma must be >= 0, got {self.focal_weight}, {self.focal_gamma}")
        if not 0.0 < self.anomaly_probability <= 1.0:
            raise UserError(f"anomaly_probability must be in (0, 1], got {self.anomaly_probability}")
        if self.structure != "full" and self.fusion != "wmb":
            raise UserError(f"fusion={self.fusion!r} needs teacher, student and PSM (structure full), got structure {self.structure!r}")

    def synthesis(self) -> SynthesisConfig:
        return SynthesisConfig("draem", probability=self.anomaly_probability, texture_root=self.texture_root)

    def inert_fields(self) -> dict[str, str]:
        inert = super().inert_fields()
        if self.structure in ("wo_t", "wo_s"):
            why = f"structure is {self.structure} (no teacher-student pair, so no W_i and no L_d)"
            inert |= dict.fromkeys(("mask_measure", "distill_loss"), why)
        elif self.structure == "full" and self.fusion != "wmb":
            inert["mask_measure"] = f"fusion is {self.fusion} (no WMB, so no W_i)"
        if self.structure == "wo_s":
            inert |= dict.fromkeys(("patch_k", "asym_stage"), "structure is wo_s (no student)")
        elif self.patch_k == 1:
            inert["asym_stage"] = "patch_k is 1 (one patch: every student stage sees the whole image)"
        if self.structure == "wo_t":
            inert["pretrained"] = "structure is wo_t (no teacher)"
        if self.structure == "wo_pw":
            inert |= dict.fromkeys(("focal_weight", "focal_gamma"), "structure is wo_pw (no PSM, no focal loss)")
        return inert

    @property
    def uses_teacher(self) -> bool:
        return self.structure != "wo_t"

    @property
    def uses_student(self) -> bool:
        return self.structure != "wo_s"

    @property
    def uses_psm(self) -> bool:
        return self.structure != "wo_pw"


# ----------------------------------------------------------------------------- measures and losses

def pixel_distance(teacher: torch.Tensor, student: torch.Tensor, measure: str) -> torch.Tensor:
    """Per-pixel distance (B, h, w): ``cosine`` = 1 − cos, ``mse`` = channel mean of (T − S)², ``both`` = sum."""
    t, s = teacher.float(), student.float()
    out = t.new_zeros(t.shape[0], *t.shape[2:])
    if measure in ("cosine", "both"):
        out = out + 1.0 - F.cosine_similarity(t, s, dim=1)
    if measure in ("mse", "both"):
        out = out + (t - s).pow(2).mean(dim=1)
    return out


def weighted_mask_block(teacher: torch.Tensor, student: torch.Tensor, measure: str = "cosine") -> tuple[torch.Tensor, torch.Tensor]:
    """WMB (Eqs. 1–2): coarse mask W (B, h, w) and C = W · T (B, C, h, w)."""
    weight = pixel_distance(teacher, student, measure)
    return weight, weight.unsqueeze(1).to(teacher.dtype) * teacher


def level_target(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Synthetic-anomaly mask (B, 1, H, W) area-averaged to a feature level: (B, h, w) in [0, 1]."""
    return F.adaptive_avg_pool2d(mask.float(), size).squeeze(1)


def flipped_distillation_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor], mask: torch.Tensor, measure: str = "cosine"
) -> torch.Tensor:
    """L_d (Eq. 7): match on normal pixels, push apart on synthetic-anomaly pixels.

    Cosine: (1 − Y)(1 − cos) + Y·cos; MSE: (1 − Y)·MSE + Y·exp(−MSE); both: their sum.
    Pixel mean per level, summed over levels.
    """
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student):
        y = level_target(mask, t.shape[-2:])
        t32, s32 = t.float(), s.float()
        per_pixel = torch.zeros_like(y)
        if measure in ("cosine", "both"):
            cos = F.cosine_similarity(t32, s32, dim=1)
            per_pixel = per_pixel + (1.0 - y) * (1.0 - cos) + y * cos
        if measure in ("mse", "both"):
            mse = (t32 - s32).pow(2).mean(dim=1)
            per_pixel = per_pixel + (1.0 - y) * mse + y * torch.exp(-mse)
        total = total + per_pixel.mean()
    return total


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss L_s (Eq. 8) of two-class logits (B, 2, H, W) against a {0, 1} mask, pixel mean.

    −(1 − p)^τ log p on anomalous pixels, −p^τ log(1 − p) on normal ones, p = softmax(logits)[:, 1].
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    log_p, log_not_p = log_probs[:, 1], log_probs[:, 0]
    p = log_p.exp()
    y = target.float().reshape(p.shape)
    loss = -y * (1.0 - p).pow(gamma) * log_p - (1.0 - y) * p.pow(gamma) * log_not_p
    return loss.mean()


# ----------------------------------------------------------------------------- modules

class UpBlock(nn.Module):
    """PSM up-block (Eqs. 3–5): 2× transposed conv, concat a skip, two conv3×3-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.convs = nn.Sequential(conv_bn_relu(out_channels + skip_channels, out_channels), conv_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class PostSegmentationModule(nn.Module):
    """PSM: UNet up-blocks over C_1..C_n, then to input resolution; returns two-class logits.

    Args:
        channels: widths of C_1..C_n, shallow to deep.
        reductions: their strides; consecutive levels must differ by 2× and the shallowest
            must be a power of two.
    """

    def __init__(self, channels: list[int], reductions: list[int]) -> None:
        super().__init__()
        for shallow, deep in zip(reductions, reductions[1:]):
            if deep != 2 * shallow:
                raise ValueError(f"the PSM needs levels that halve resolution step by step, got strides {reductions}")
        stride = reductions[0]
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"the shallowest level's stride must be a power of two, got {stride}")
        self.skip_blocks = nn.ModuleList()
        width = channels[-1]
        for level in reversed(range(len(channels) - 1)):
            self.skip_blocks.append(UpBlock(width, channels[level], channels[level]))
            width = channels[level]
        self.tail_blocks = nn.ModuleList()
        while stride > 1:
            out = max(width // 2, 16)
            self.tail_blocks.append(UpBlock(width, out))
            width, stride = out, stride // 2
        self.head = nn.Conv2d(width, 2, 3, padding=1)

    def forward(self, weighted: list[torch.Tensor]) -> torch.Tensor:
        x = weighted[-1]
        for block, skip in zip(self.skip_blocks, reversed(weighted[:-1])):
            x = block(x, skip)
        for block in self.tail_blocks:
            x = block(x)
        return self.head(x)


class PatchStudent(nn.Module):
    """The ADPS student: a trainable backbone whose first stages see k×k image patches.

    Args:
        backbone: timm model name.
        out_indices: feature levels to return.
        patch_k: grid size k.
        asym_stage: last stage (0-based) computed patch by patch.
    """

    def __init__(self, backbone: str, out_indices: tuple[int, ...], patch_k: int, asym_stage: int) -> None:
        super().__init__()
        self.network = StagedFeatures(create_backbone(backbone, "none", out_indices))
        self.patch_k = patch_k
        self.asym_stage = asym_stage

    @property
    def channels(self) -> list[int]:
        return self.network.channels

    @property
    def reductions(self) -> list[int]:
        return self.network.reductions

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        k = self.patch_k
        x = patchify(images, k)
        features = []
        for index, stage in enumerate(self.network.stages):
            x = stage(x)
            if index < self.asym_stage:
                features.append(unpatchify(x, k))
            else:
                if index == self.asym_stage:
                    x = unpatchify(x, k)  # deeper stages see the whole reassembled map
                features.append(x)
        return features


@register_method("adps")
class ADPS(AnomalyMethod):
    """Asymmetric distillation + weighted mask block + post-segmentation module."""

    config_class = ADPSConfig

    def __init__(self, config: ADPSConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        cfg = config
        self.teacher = FrozenTeacher(cfg.backbone, cfg.pretrained, cfg.out_indices) if cfg.uses_teacher else None
        self.student = PatchStudent(cfg.backbone, cfg.out_indices, cfg.patch_k, cfg.asym_stage) if cfg.uses_student else None
        source = self.teacher if self.teacher is not None else self.student
        channels, reductions = list(source.channels), list(source.reductions)
        if self.student is not None:
            patch = image_size // cfg.patch_k
            stride = reductions[cfg.asym_stage]
            if patch % stride:
                raise UserError(
                    f"patch_k={cfg.patch_k} gives {patch}-px patches, but the patch-local student stages up to "
                    f"asym_stage={cfg.asym_stage} have stride {stride}; use a patch size that is a multiple of {stride} "
                    f"(a smaller k, a lower asym_stage or a larger image_size)")
        self.fuse = (nn.ModuleList(nn.Conv2d(2 * c, c, 3, padding=1) for c in channels)
                     if cfg.fusion == "concat" and cfg.structure == "full" else None)
        self.psm = PostSegmentationModule(channels, reductions) if cfg.uses_psm else None

    def _features(self, images: torch.Tensor) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        teacher = self.teacher(images) if self.teacher is not None else None
        student = self.student(images) if self.student is not None else None
        return teacher, student

    def _psm_inputs(self, teacher: list[torch.Tensor] | None, student: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """C_1..C_n for the PSM according to ``structure`` and ``fusion``."""
        cfg = self.config
        if teacher is None:
            return student
        if student is None:
            return teacher
        if cfg.fusion == "abs_diff":
            return [(t - s).abs() for t, s in zip(teacher, student)]
        if cfg.fusion == "concat":
            # In the fp32 map (autocast off) bf16 features meet fp32 weights: the conv takes the
            # weights' dtype (under autocast the cast is undone exactly: bf16 → fp32 → bf16).
            return [conv(torch.cat([t, s], dim=1).to(conv.weight.dtype)) for conv, t, s in zip(self.fuse, teacher, student)]
        return [weighted_mask_block(t, s, cfg.mask_measure)[1] for t, s in zip(teacher, student)]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        images, mask = batch["anomalous"], batch["anomaly_mask"]
        teacher, student = self._features(images)
        out: dict[str, torch.Tensor] = {}
        loss = images.new_zeros((), dtype=torch.float32)
        if teacher is not None and student is not None:
            out["distill"] = flipped_distillation_loss(teacher, student, mask, cfg.distill_loss)
            loss = loss + out["distill"]
        if self.psm is not None:
            logits = self.psm(self._psm_inputs(teacher, student))
            out["focal"] = focal_loss(logits, mask, cfg.focal_gamma)
            loss = loss + cfg.focal_weight * out["focal"]
        out["loss"] = loss
        return out

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        cfg = self.scoring_config(scoring)
        teacher, student = self._features(images)
        if self.psm is None:
            distances = [pixel_distance(t, s, cfg.mask_measure) for t, s in zip(teacher, student)]
            return gaussian_blur(upsample_maps(distances, images.shape[-2:]).sum(dim=0), cfg.gaussian_sigma)
        with full_precision(images.device):  # bf16 logits would tie neighbouring pixels
            logits = self.psm([x.float() for x in self._psm_inputs(teacher, student)])
        return torch.softmax(logits.float(), dim=1)[:, 1]

    def image_score(self, anomaly_map: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        if self.psm is None:
            return anomaly_map.flatten(1).amax(dim=1)
        return gaussian_blur(anomaly_map, self.scoring_config(scoring).gaussian_sigma).flatten(1).amax(dim=1)

"""DMDD: dual-modeling decouple distillation (Liu, Wang, Leng & Zhang, ACM MM 2024).

- Decoupled student-teacher network (Sec. 3.2): teacher and student are the first four
  stages of the same ResNet (WRN50 in the paper) with the same initial weights. After
  each student stage a 1×1 conv doubles the channels; the halves are the normality and
  abnormality features, and the normality half feeds the next stage.
- Pyramid modeling network (PMN, Sec. 3.2, Fig. 4): the normality pyramid is refined
  top-down (inner path: the better-decoupled deep levels guide shallow ones) then
  bottom-up (outer path); the abnormality pyramid bottom-up (inner) then top-down (outer).
- NGM (Eqs. 1-2): per-pixel 1 − cos between the teacher's features of the *normal* image
  and the normality features of the normal and the anomalous image, averaged over
  pixels and the four levels, the two terms summed.
- AIM (Eqs. 3-4): L1 between the 1 − cos map of teacher and abnormality features of an
  image and its ground-truth mask downsampled to the level, for the normal image (mask
  0) and the anomalous one, averaged over pixels and levels, the two terms summed.
- Multi-perception segmentation network (MSN, Sec. 3.4): the eight 1 − cos maps (four per
  branch), pyramid upsampling (PU: a top-down path over the NGM maps and a bottom-up one
  over the AIM maps, then bilinear upsampling to the input size), the multi-perception
  mechanism (MM: channel attention, spatial attention and a learned global attention
  parameter weighting every channel at every pixel), a 1×1 compression and a sigmoid.
  Image score S = mean of the 100 largest pixels of M; loss (Eq. 5)
  BCE(M, M_gt) + BCE(S, max M_gt). The MSN is trained after each epoch with the
  student frozen, on foreground-aware DRAEM anomalies (FAS: Perlin mask ∩ GrabCut
  foreground, DTD-style textures).

Paper training: Adam lr 0.005, 100-400 epochs, 256², no augmentation besides synthesis.

Choices where the paper is silent or ambiguous (each a config field where tunable):

- "First 4 stages" = ``layer1``-``layer4`` (strides 4-32); the stem runs before stage 1.
  The student copies the teacher's weights, pretrained or random, so both start equal.
- The 1×1 split conv starts as two stacked identities, so at initialisation both halves
  equal the stage output and the student equals the teacher.
- PMN links are residual: top-down ``P_i = X_i + conv1×1(up(P_{i+1}))``, bottom-up
  ``P_i = X_i + conv3×3/2(P_{i-1})`` (FPN/PANet style, Fig. 4 is not in the text),
  zero-initialised so each path starts as the identity. The PMN refines the pyramid
  after the student has run; the unrefined normality half is what feeds the next stage.
- Table 4 trains one branch with its own loss ("Normality Branch with NGM distillation",
  "Abnormality Branch with AIM distillation"): here the decoupled student is kept and
  the other branch's loss, PMN and maps are dropped (``normality_branch`` /
  ``abnormality_branch``). Its rows equal Table 5's "w/o MSN" row in the last line, so
  Table 4 is evaluated with the plain sum of maps (the pmn axis fixes ``msn: false``).
- Synthesis: DRAEM (Perlin noise + textures, opacity β) for every image of the batch
  (the input is always a normal–anomalous pair). Sec. 3.1 feeds "a normal-anomalous
  image pair (I^n, I^n_a)" to the whole network, and I^n_a is what FAS (GrabCut
  foreground, Sec. 3.4.1) produces; a single training loader, as in DeSTSeg's code, gives
  both phases the same synthesis. So one FAS synthesis serves the distillation and the
  MSN (``msn_synthesis: shared``, the default): the MSN phase iterates the distillation's
  batches, and Table 5's "-FAS" row is full-image synthesis for both phases. The
  alternative reading, from FAS being introduced inside the MSN's section, is
  ``msn_synthesis: own``: the distillation draws full-image anomalies in every row and the
  MSN phase its own, FAS or full-image by ``fas``, from a stream of its own, so "-FAS"
  changes the MSN's anomalies only. Without the MSN, ``shared`` keeps FAS by ``fas`` for
  the distillation, and ``own`` makes ``fas`` change nothing. On texture categories the
  foreground is the whole image (a texture has no background), so FAS and ``fas=False``
  differ on object categories only. Textures: DTD through ``texture_root``
  (``--textures``), else the built-in procedural bank.
- AIM's mask is downsampled by area averaging, so boundary cells get fractional targets.
- Without the MSN the map is the plain sum of the upsampled maps (Table 5 "w/o MSN"),
  smoothed with a Gaussian σ = 4 as in RD4AD; the MSN's map is used as it comes. Both
  score images by the top-100 mean so the MSN rows differ only in the map.
- PU links are 3×3 convs on one channel (top-down: upsample then conv; bottom-up:
  stride-2 conv), residual and zero-initialised. MM: channel attention as CBAM (average
  and max pooled through a shared two-layer MLP, reduction ``msn_attention_reduction``),
  spatial attention as CBAM (channel mean and max, ``msn_spatial_kernel`` conv), and the
  global attention parameter a (channels, H, W) tensor multiplied in, initialised to 1.
  ``mm=False`` keeps only the compression.
- MSN initialisation (the text is silent): the compression starts as the channel mean
  with bias logit(``msn_prior``) = logit(0.01), the prior-probability initialisation of
  rare-positive heads (RetinaNet). Why the bias matters: the inputs are non-negative
  1 − cos maps, so with bias 0 the untrained head predicts p >= 0.5 on every pixel while
  1-3 % are positive. BCE under Adam then pushes every compression weight down (Adam
  moves each by about the learning rate per step, whatever the gradient's size), the
  weights act as a surrogate bias, cross zero after about 25 steps, and the head ranks
  pixels upside down, a state it does not leave. Measured:

  * on maps whose positives are known (``tests/test_learned_heads.py``), the compression
    alone fell from pixel AUROC 0.999 to 0.001 by step 50 with bias 0, and stays at 0.999
    over 300 steps with the prior bias;
  * on ``quick`` (fp32, seeds 0 and 1, the MSN drawing its own anomalies), the MSN's pixel
    AUROC with bias 0 was weave 0.53/0.48 and washer 0.54/0.20; with the prior bias
    0.72/0.65 and 0.83/0.86, against the summed maps' (``msn: false``) 0.68/0.62 and
    0.71/0.56. With one shared synthesis (the default) 0.75/0.48 and 0.82/0.85 against
    0.68/0.62 and 0.73/0.58, weave seed 1 at chance; with DRAEM's synthesis as its code
    runs it (colour spaces, equalize, channel order, bilinear textures, Perlin-region
    labels: every anomaly the MSN sees changed) 0.72/0.69 and 0.82/0.85 against
    0.68/0.61 and 0.73/0.58, above the summed maps on every seed. Which of those changes
    moved weave seed 1 was not isolated;
  * standardising the input maps (per map, or all together, by running statistics) also
    keeps the toy's ranking, with PU and MM too, but lowered ``quick`` washer to
    0.56/0.53 (per map) and 0.73/0.52 (together): not adopted.

  On the toy the whole head (PU and MM) still ranks below maps that are already perfect
  (0.75 against 0.998 after 150 steps; PU alone 0.82-0.86, MM alone 0.97-0.99): the
  learned PU links mix the coarse levels into the fine ones. On the built-in data it
  ranks above the summed maps (above), which ``tests/test_learned_heads.py`` checks (slow).
- Initialisation (the text is silent): the student copies the teacher; the split convs,
  PMN and PU links and the compression start as stated above (identities, zeros, the
  channel mean at the prior), so training starts from the teacher's own maps; CBAM's attention convs
  start as ResNet convs (Kaiming fan-out, :func:`~kdsearch.nn.resnet_init_`), the
  ResNet-family convention of CBAM's and RD4AD's code.
- MSN optimiser: Adam with ``msn_lr`` (default the paper's 0.005), one pass over the
  training batches per epoch after the distillation pass (a second training phase), on
  the normal and anomalous image of each pair; teacher and student in eval mode, as at
  test time. Like every phase it runs under the trial's autocast (its BCE loss in fp32 outside it), the divergence check
  and DDP (gradients averaged across ranks). Adam β for the student are PyTorch's defaults (the paper names none).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods._registry import register_method
from kdsearch.methods.base import AnomalyMethod, Batch, MethodConfig, SynthesisConfig, TrainingPhase
from kdsearch.nn import (
    FrozenTeacher,
    cosine_distance_map,
    create_backbone,
    full_precision,
    gaussian_blur,
    resnet_init_,
    top_k_mean,
    upsample_maps,
)

# Stages 1-4 of a ResNet: the decoupled pyramid of the paper.
STAGES = (1, 2, 3, 4)


@dataclass(frozen=True)
class DMDDConfig(MethodConfig):
    """DMDD's paper configuration; every Table 4 / Table 5 switch is a field.

    Attributes:
        normality_branch: train the normality branch with NGM and use its maps.
        abnormality_branch: train the abnormality branch with AIM and use its maps.
        normality_inner: PMN top-down (inner) path of the normality branch.
        normality_outer: PMN bottom-up (outer) path of the normality branch.
        abnormality_inner: PMN bottom-up (inner) path of the abnormality branch.
        abnormality_outer: PMN top-down (outer) path of the abnormality branch.
        msn: fuse the maps with the multi-perception segmentation network (else plain sum).
        fas: foreground-aware anomaly synthesis (GrabCut) instead of full-image synthesis,
            for both phases' anomalies (``msn_synthesis: shared``) or for the MSN's only
            (``own``).
        msn_synthesis: ``shared`` (the default): one synthesis serves the distillation and
            the MSN; ``own``: the MSN phase draws its own anomalies, the distillation
            full-image ones.
        pu: pyramid upsampling inside the MSN.
        mm: multi-perception mechanism (channel + spatial + global attention) inside the MSN.
        msn_lr: Adam learning rate of the MSN.
        msn_prior: the anomalous-pixel probability the untrained MSN predicts everywhere:
            its compression's bias starts at logit(msn_prior).
        msn_attention_reduction: channel-attention MLP reduction.
        msn_spatial_kernel: spatial-attention conv kernel size.
        score_top_k: pixels averaged into the image score.
        texture_root: DTD-style texture folder for the DRAEM anomalies (FAS builds on DRAEM,
            whose textures are DTD); ``None`` uses the built-in procedural bank.
    """

    lr: float = 0.005
    betas: tuple[float, float] = (0.9, 0.999)
    normality_branch: bool = True
    abnormality_branch: bool = True
    normality_inner: bool = True
    normality_outer: bool = True
    abnormality_inner: bool = True
    abnormality_outer: bool = True
    msn: bool = True
    fas: bool = True
    msn_synthesis: str = "shared"
    pu: bool = True
    mm: bool = True
    msn_lr: float = 0.005
    msn_prior: float = 0.01
    msn_attention_reduction: int = 2
    msn_spatial_kernel: int = 7
    score_top_k: int = 100
    texture_root: str | None = None

    def validate(self, image_size: int) -> None:
        super().validate(image_size)
        if not (self.normality_branch or self.abnormality_branch):
            raise UserError("DMDD needs at least one of normality_branch and abnormality_branch")
        if not 1 <= self.score_top_k <= image_size * image_size:
            raise UserError(
                f"score_top_k must be in [1, {image_size * image_size}] at image_size {image_size}, got {self.score_top_k}")
        if self.msn_synthesis not in ("own", "shared"):
            raise UserError(f"msn_synthesis must be own or shared, got {self.msn_synthesis!r}")
        if not 0.0 < self.msn_prior < 0.5:
            raise UserError(f"msn_prior must be in (0, 0.5): anomalous pixels are the rare class, got {self.msn_prior}")
        if self.msn_lr <= 0:
            raise UserError(f"msn_lr must be positive, got {self.msn_lr}")
        if self.msn_attention_reduction < 1:
            raise UserError(f"msn_attention_reduction must be >= 1, got {self.msn_attention_reduction}")
        if self.msn_spatial_kernel < 1 or self.msn_spatial_kernel % 2 == 0:
            raise UserError(f"msn_spatial_kernel must be a positive odd number, got {self.msn_spatial_kernel}")

    def synthesis(self) -> SynthesisConfig:
        shared_fas = self.fas and self.msn_synthesis == "shared"
        return SynthesisConfig(kind="draem", probability=1.0, foreground="grabcut" if shared_fas else "none",
                               texture_root=self.texture_root)

    def phase_synthesis(self) -> dict[str, dict[str, Any]]:
        if not self.msn or self.msn_synthesis == "shared":
            return {}
        return {"msn": {"foreground": "grabcut" if self.fas else "none"}}

    def category_inert_fields(self, kind: str | None) -> dict[str, str]:
        if kind != "texture":
            return {}
        inert = {"fas": "a texture has no background: FAS covers the whole image, as full-image synthesis"}
        if not self.msn:
            inert["msn_synthesis"] = ("a texture has no background and msn is false: both readings draw the same "
                                      "full-image anomalies for the distillation")
        return inert

    def training_spelling(self, identity: dict[str, object]) -> dict[str, object]:
        """Without the MSN only the distillation's foreground counts: FAS when ``fas`` with
        ``msn_synthesis: shared``, else full-image. Both fields are spelled as that one
        ``fas`` (a texture category has dropped both already)."""
        if self.msn or not ({"fas", "msn_synthesis"} & identity.keys()):
            return identity
        rest = {k: v for k, v in identity.items() if k not in ("fas", "msn_synthesis")}
        return {**rest, "fas": self.fas and self.msn_synthesis == "shared"}

    def teacher_cache_input(self) -> str | None:
        # The teacher sees cat[normal, anomalous]: the normal half is the clean image.
        return "first_half"

    def inference_fields(self) -> tuple[str, ...]:
        # With the MSN the top-k mean is also in its training loss (Eq. 5).
        return super().inference_fields() + (() if self.msn else ("score_top_k",))

    def inert_fields(self) -> dict[str, str]:
        inert = super().inert_fields()
        if not self.msn:
            inert |= dict.fromkeys(("pu", "mm", "msn_lr", "msn_prior", "msn_attention_reduction", "msn_spatial_kernel"),
                                   "msn is false (the maps are summed)")
            # msn_synthesis still decides whether FAS shapes the distillation's anomalies.
            if self.msn_synthesis == "own":
                inert["fas"] = "msn_synthesis is own and msn is false (FAS shapes only the MSN's anomalies)"
            elif not self.fas:
                inert["msn_synthesis"] = "fas is false (without the MSN both readings draw full-image anomalies)"
        elif not self.mm:
            inert |= dict.fromkeys(("msn_attention_reduction", "msn_spatial_kernel"), "mm is false (no attention)")
        if self.msn:
            inert["gaussian_sigma"] = "msn is true (the MSN's map is used as it is, not smoothed)"
        if not self.normality_branch:
            inert |= dict.fromkeys(("normality_inner", "normality_outer"), "normality_branch is false")
        if not self.abnormality_branch:
            inert |= dict.fromkeys(("abnormality_inner", "abnormality_outer"), "abnormality_branch is false")
        return inert


# ----------------------------------------------------------------------------- student


class DecoupledStudent(nn.Module):
    """A trainable copy of the teacher whose stages emit normality and abnormality halves.

    Args:
        teacher: the frozen teacher; the student copies its architecture and weights.
        backbone: timm name of the teacher.
    """

    def __init__(self, teacher: FrozenTeacher, backbone: str) -> None:
        super().__init__()
        self.encoder = create_backbone(backbone, "none", out_indices=STAGES)
        self.encoder.load_state_dict(teacher.encoder.state_dict())
        self.encoder.requires_grad_(True)
        self.stage_names: list[str] = list(self.encoder.feature_info.module_name())
        self.splits = nn.ModuleList()
        for channels in teacher.channels:
            split = nn.Conv2d(channels, 2 * channels, 1)
            with torch.no_grad():
                eye = torch.eye(channels).view(channels, channels, 1, 1)
                split.weight.copy_(torch.cat([eye, eye]))
                split.bias.zero_()
            self.splits.append(split)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Initial (normality, abnormality) features, one per stage, shallow to deep."""
        normality, abnormality = [], []
        x = images
        for name, module in self.encoder.items():
            x = module(x)
            if name in self.stage_names:
                n, a = self.splits[len(normality)](x).chunk(2, dim=1)
                normality.append(n)
                abnormality.append(a)
                x = n
                if len(normality) == len(self.stage_names):
                    break
        return normality, abnormality


class PyramidPath(nn.Module):
    """One residual fusion pass over a feature pyramid, ``"top_down"`` or ``"bottom_up"``.

    Args:
        channels: channels per level, shallow to deep.
        direction: ``"top_down"`` (deep guides shallow) or ``"bottom_up"``.
    """

    def __init__(self, channels: list[int], direction: str) -> None:
        super().__init__()
        if direction not in ("top_down", "bottom_up"):
            raise ValueError(f"direction must be 'top_down' or 'bottom_up', got {direction!r}")
        self.direction = direction
        if direction == "top_down":
            links = [nn.Conv2d(channels[i + 1], channels[i], 1) for i in range(len(channels) - 1)]
        else:
            links = [nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1) for i in range(len(channels) - 1)]
        for link in links:
            # Zero links make the path start as the identity on the student's pyramid.
            nn.init.zeros_(link.weight)
            nn.init.zeros_(link.bias)
        self.links = nn.ModuleList(links)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = list(features)
        if self.direction == "top_down":
            for i in reversed(range(len(out) - 1)):
                guide = F.interpolate(self.links[i](out[i + 1]), size=out[i].shape[-2:], mode="bilinear", align_corners=False)
                out[i] = features[i] + guide
        else:
            for i in range(1, len(out)):
                guide = self.links[i - 1](out[i - 1])
                if guide.shape[-2:] != out[i].shape[-2:]:
                    guide = F.interpolate(guide, size=out[i].shape[-2:], mode="bilinear", align_corners=False)
                out[i] = features[i] + guide
        return out


def pyramid_modeling(channels: list[int], first: str, inner: bool, outer: bool) -> nn.Sequential:
    """A branch's PMN: the inner path in direction ``first``, then the opposite outer path."""
    second = "bottom_up" if first == "top_down" else "top_down"
    paths = ([PyramidPath(channels, first)] if inner else []) + ([PyramidPath(channels, second)] if outer else [])
    return nn.Sequential(*paths)


# ----------------------------------------------------------------------------- MSN


class ChannelAttention(nn.Module):
    """CBAM channel attention: shared MLP on average- and max-pooled channels, sigmoid."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = resnet_init_(nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 1, 1) weights in (0, 1)."""
        return torch.sigmoid(self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: conv over the channel mean and max, sigmoid."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = resnet_init_(nn.Conv2d(2, 1, kernel, padding=kernel // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) weights in (0, 1)."""
        return torch.sigmoid(self.conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)))


class PyramidUpsampling(nn.Module):
    """PU: residual fusion across the four maps of one branch, then upsampling to the input.

    Args:
        levels: maps per branch.
        direction: ``"top_down"`` (NGM maps) or ``"bottom_up"`` (AIM maps).
    """

    def __init__(self, levels: int, direction: str) -> None:
        super().__init__()
        self.direction = direction
        stride = 1 if direction == "top_down" else 2
        self.links = nn.ModuleList(nn.Conv2d(1, 1, 3, stride=stride, padding=1) for _ in range(levels - 1))
        for link in self.links:
            nn.init.zeros_(link.weight)
            nn.init.zeros_(link.bias)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        out = list(maps)
        if self.direction == "top_down":
            for i in reversed(range(len(out) - 1)):
                up = F.interpolate(out[i + 1], size=out[i].shape[-2:], mode="bilinear", align_corners=False)
                out[i] = maps[i] + self.links[i](up)
        else:
            for i in range(1, len(out)):
                down = self.links[i - 1](out[i - 1])
                if down.shape[-2:] != out[i].shape[-2:]:
                    down = F.interpolate(down, size=out[i].shape[-2:], mode="bilinear", align_corners=False)
                out[i] = maps[i] + down
        return out


class MultiPerceptionSegmentationNetwork(nn.Module):
    """MSN head: (PU) → upsample → concat → (MM) → 1×1 compression → sigmoid.

    Args:
        branches: pyramid direction of each active branch's maps, in input order
            (``"top_down"`` for NGM maps, ``"bottom_up"`` for AIM maps).
        levels: maps per branch.
        image_size: side of the input images (the global attention parameter's size).
        pu: use pyramid upsampling.
        mm: use the multi-perception mechanism.
        reduction: channel-attention reduction.
        spatial_kernel: spatial-attention kernel size.
        prior: anomalous-pixel probability of the untrained head (its initial bias is the logit).
    """

    def __init__(self, branches: list[str], levels: int, image_size: int, pu: bool, mm: bool,
                 reduction: int = 2, spatial_kernel: int = 7, prior: float = 0.01) -> None:
        super().__init__()
        self.levels = levels
        self.image_size = image_size
        channels = levels * len(branches)
        self.channels = channels
        self.pyramids = nn.ModuleList(PyramidUpsampling(levels, d) for d in branches) if pu else None
        if mm:
            self.channel_attention: nn.Module | None = ChannelAttention(channels, reduction)
            self.spatial_attention: nn.Module | None = SpatialAttention(spatial_kernel)
            self.global_attention: nn.Parameter | None = nn.Parameter(torch.ones(channels, image_size, image_size))
        else:
            self.channel_attention = self.spatial_attention = self.global_attention = None
        self.compress = nn.Conv2d(channels, 1, 1)
        with torch.no_grad():
            # Start as the channel mean, so an untrained head ranks pixels like the plain sum, and
            # at the prior: a zero bias would predict p >= 0.5 on all-positive maps (see the
            # module docstring for how that inverts the ranking).
            self.compress.weight.fill_(1.0 / channels)
            self.compress.bias.fill_(math.log(prior / (1.0 - prior)))

    def fuse(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(B, C, H, W) input of the attention: per-branch PU, then bilinear upsampling."""
        groups = [maps[i : i + self.levels] for i in range(0, len(maps), self.levels)]
        if self.pyramids is not None:
            groups = [pyramid(group) for pyramid, group in zip(self.pyramids, groups)]
        flat = [m for group in groups for m in group]
        return torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in flat], dim=1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Segmentation probabilities (B, 1, H, W) from ``channels`` maps of shape (B, 1, h_i, w_i)."""
        if len(maps) != self.channels:
            raise ValueError(f"MSN expects {self.channels} maps, got {len(maps)}")
        x = self.fuse(maps, (self.image_size, self.image_size))
        if self.channel_attention is not None:
            x = x * self.channel_attention(x)
            x = x * self.spatial_attention(x)
            x = x * self.global_attention
        return torch.sigmoid(self.compress(x))


def segmentation_loss(probabilities: torch.Tensor, masks: torch.Tensor, top_k: int) -> torch.Tensor:
    """Eq. 5: BCE(M, M_gt) + BCE(S, max M_gt) with S the mean of the top-k pixels of M.

    Computed in fp32 outside autocast: CUDA autocast refuses ``binary_cross_entropy``
    (it raises on the first step), and the head's output is a probability, not a logit.
    """
    with torch.autocast(probabilities.device.type, enabled=False):
        probabilities = probabilities.float().clamp(1e-6, 1.0 - 1e-6)
        scores = top_k_mean(probabilities.squeeze(1), top_k)
        labels = masks.flatten(1).amax(dim=1).float()
        return F.binary_cross_entropy(probabilities, masks.float()) + F.binary_cross_entropy(scores, labels)


# ----------------------------------------------------------------------------- method


@register_method("dmdd")
class DMDD(AnomalyMethod):
    """Decoupled student-teacher network with NGM/AIM distillation and the MSN head."""

    config_class = DMDDConfig

    def __init__(self, config: DMDDConfig, image_size: int) -> None:
        super().__init__(config, image_size)
        self.teacher = FrozenTeacher(config.backbone, config.pretrained, out_indices=STAGES)
        reductions = self.teacher.reductions
        for shallow, deep in zip(reductions, reductions[1:]):
            if deep != 2 * shallow:
                raise UserError(
                    f"DMDD's pyramid needs stages that halve resolution step by step, {config.backbone} has strides {reductions}")
        self.student = DecoupledStudent(self.teacher, config.backbone)
        channels = self.teacher.channels
        self.normality_pmn = (pyramid_modeling(channels, "top_down", config.normality_inner, config.normality_outer)
                              if config.normality_branch else None)
        self.abnormality_pmn = (pyramid_modeling(channels, "bottom_up", config.abnormality_inner, config.abnormality_outer)
                                if config.abnormality_branch else None)
        branches = (["top_down"] if config.normality_branch else []) + (["bottom_up"] if config.abnormality_branch else [])
        self.msn = (MultiPerceptionSegmentationNetwork(branches, len(STAGES), image_size, config.pu, config.mm,
                                                       config.msn_attention_reduction, config.msn_spatial_kernel,
                                                       config.msn_prior)
                    if config.msn else None)

    # -- training phases

    def cached_teacher(self) -> FrozenTeacher:
        return self.teacher

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student, split convs and PMN; the MSN has its own optimiser."""
        return (p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("msn."))

    def training_phases(self, epochs: int) -> list[TrainingPhase]:
        """The distillation step, then (with the MSN) one pass training the MSN alone."""
        phases = super().training_phases(epochs)
        if self.msn is not None:
            optimizer = torch.optim.Adam(self.msn.parameters(), lr=self.config.msn_lr)
            phases.append(TrainingPhase("msn", self.msn, self._msn_step, optimizer))
        return phases

    # -- features and maps

    def branch_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """PMN-refined (normality, abnormality) pyramids; ``None`` for a branch that is off."""
        normality, abnormality = self.student(images)
        return (self.normality_pmn(normality) if self.normality_pmn is not None else None,
                self.abnormality_pmn(abnormality) if self.abnormality_pmn is not None else None)

    def distance_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The per-level 1 − cos maps (B, 1, h_i, w_i): NGM maps first, then AIM maps."""
        teacher = self.teacher(images)
        normality, abnormality = self.branch_features(images)
        maps = []
        for branch in (normality, abnormality):
            if branch is not None:
                maps += [cosine_distance_map(t.float(), s.float()).unsqueeze(1) for t, s in zip(teacher, branch)]
        return maps

    # -- training

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        normal, anomalous = batch["image"], batch["anomalous"]
        n = len(normal)
        # One pass over the pair keeps the student's batch statistics shared by both images.
        cached = batch.get("teacher_image")
        teacher = (self.teacher(torch.cat([normal, anomalous])) if cached is None
                   else [torch.cat([c, a]) for c, a in zip(cached, self.teacher(anomalous))])
        normality, abnormality = self.branch_features(torch.cat([normal, anomalous]))
        losses: dict[str, torch.Tensor] = {}
        if normality is not None:
            # NGM: both images are pulled toward the teacher's view of the *normal* image.
            terms = [cosine_distance_map(t[:n].float().repeat(2, 1, 1, 1), s.float()) for t, s in zip(teacher, normality)]
            losses["ngm"] = torch.stack([d[:n].mean() + d[n:].mean() for d in terms]).mean()
        if abnormality is not None:
            masks = torch.cat([torch.zeros_like(batch["anomaly_mask"]), batch["anomaly_mask"]]).float()
            terms = []
            for t, s in zip(teacher, abnormality):
                target = F.interpolate(masks, size=t.shape[-2:], mode="area").squeeze(1)
                error = (cosine_distance_map(t.float(), s.float()) - target).abs()
                terms.append(error[:n].mean() + error[n:].mean())
            losses["aim"] = torch.stack(terms).mean()
        losses["loss"] = sum(losses.values())
        return losses

    def _msn_step(self, msn: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """The MSN's segmentation loss on the pair's maps; the student is frozen here."""
        images = torch.cat([batch["image"], batch["anomalous"]])
        masks = torch.cat([torch.zeros_like(batch["anomaly_mask"]), batch["anomaly_mask"]])
        with torch.no_grad():
            maps = self.distance_maps(images)
        return {"loss": segmentation_loss(msn(maps), masks, self.config.score_top_k)}

    # -- inference

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        cfg = self.scoring_config(scoring)
        maps = self.distance_maps(images)
        if self.msn is not None:
            with full_precision(images.device):  # a bf16 sigmoid would tie neighbouring pixels
                return self.msn(maps).squeeze(1).float()
        summed = upsample_maps([m.squeeze(1) for m in maps], images.shape[-2:]).sum(dim=0)
        return gaussian_blur(summed, cfg.gaussian_sigma)

    def image_score(self, anomaly_map: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        """Mean of the ``score_top_k`` (100) largest pixels of each map."""
        return top_k_mean(anomaly_map, self.scoring_config(scoring).score_top_k)

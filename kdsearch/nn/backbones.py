"""timm backbones as multi-scale feature extractors, with offline-safe weight loading.

``pretrained`` is one of ``"none"`` (random init), ``"auto"`` (ImageNet weights through
timm: the local Hugging Face cache first, the hub only when it answers) or a path to a
local state-dict file (``.pth``/``.bin``/``.safetensors``, torchvision or timm key names).
A run that needs weights it cannot reach fails at once with a :class:`UserError` naming
the file to provide, instead of timm's minute of retries.
"""
from __future__ import annotations

import functools
import hashlib
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from kdsearch.errors import UserError

# The papers use torchvision's ImageNet weights; timm publishes the same tensors
# under the ``tv_in1k`` tag.
DEFAULT_PRETRAINED_TAG = "tv_in1k"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    import huggingface_hub

    host = urlparse(huggingface_hub.constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _cached_weight_file(hf_hub_id: str) -> str | None:
    import huggingface_hub

    for filename in _WEIGHT_FILES:
        found = huggingface_hub.try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str):
            return found
    return None


def weights_fingerprint(path: str | Path) -> str:
    """Identity of a weights file's contents, not of its path: ``weights:<sha256 prefix>``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise _missing_weights_file(file)
    return f"weights:{_file_sha256(str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns)[:16]}"


def _missing_weights_file(path: Path) -> UserError:
    return UserError(f"weights file {path} does not exist; pass --pretrained PATH (a sweep: --set pretrained=PATH) "
                     "to an existing state-dict file, --pretrained auto for ImageNet weights, or --pretrained none")


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Planning keys every trial of a sweep; an unchanged file is read once.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_weights(model_name: str, pretrained: str) -> tuple[bool, dict]:
    """Return ``(pretrained, pretrained_cfg_overlay)`` arguments for ``timm.create_model``."""
    if pretrained == "none":
        return False, {}
    if pretrained != "auto":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise _missing_weights_file(path)
        return True, {"file": str(path)}
    cfg = timm.models.get_pretrained_cfg(model_name)
    hf_hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hf_hub_id:
        cached = _cached_weight_file(hf_hub_id)
        if cached:
            return True, {"file": cached}
    if _hub_reachable():
        return True, {}
    where = f"hub id {hf_hub_id}" if hf_hub_id else "timm"
    url = getattr(cfg, "url", None) if cfg is not None else None
    raise UserError(
        f"ImageNet weights for {model_name} are not cached and the model hub cannot be reached; "
        f"download them ({where}{', or ' + url if url else ''}) and pass --pretrained PATH "
        "(a sweep: --set pretrained=PATH), or train from random init with --pretrained none"
    )


def timm_model_name(backbone: str, pretrained: str) -> str:
    """The timm name to build: the torchvision-weights tag is added for ``auto``."""
    if pretrained == "auto" and "." not in backbone:
        tagged = f"{backbone}.{DEFAULT_PRETRAINED_TAG}"
        if timm.models.get_pretrained_cfg(tagged) is not None:
            return tagged
    return backbone


def _backbone_and_weights(backbone: str, pretrained: str) -> tuple[str, tuple[bool, dict]]:
    if backbone not in timm.list_models() and timm.models.get_pretrained_cfg(backbone) is None:
        raise UserError(f"unknown backbone {backbone!r}; use a timm model name such as resnet18, resnet50 or wide_resnet50_2")
    name = timm_model_name(backbone, pretrained)
    return name, _resolve_weights(name, pretrained)


def check_backbone(backbone: str, pretrained: str = "none") -> None:
    """Refuse now what :func:`create_backbone` would refuse, without building the model: an
    unknown backbone, a weights file that does not exist, ImageNet weights (``auto``) neither
    cached nor reachable (a 3-second probe of the hub, no download).

    Raises:
        UserError: as :func:`create_backbone`.
    """
    _backbone_and_weights(backbone, pretrained)


def create_backbone(
    backbone: str,
    pretrained: str = "none",
    out_indices: tuple[int, ...] = (1, 2, 3),
) -> nn.Module:
    """Build a timm ``features_only`` backbone returning the stages in ``out_indices``.

    Args:
        backbone: timm model name, e.g. ``"wide_resnet50_2"``.
        pretrained: ``"none"``, ``"auto"`` or a local weights path.
        out_indices: feature levels to return (1 = stride 4 ... 4 = stride 32 for ResNets).

    Returns:
        The timm feature extractor; ``feature_info.channels()``/``reduction()`` give sizes.
    """
    name, (use_weights, overlay) = _backbone_and_weights(backbone, pretrained)
    # timm zero-initialises the last norm of every residual branch; without trained
    # weights that leaves each block an identity and a random teacher with almost no
    # features, so random-init teachers keep their branches live.
    init_kwargs = {} if use_weights else {"zero_init_last": False}
    try:
        try:
            return timm.create_model(
                name, pretrained=use_weights, features_only=True, out_indices=out_indices,
                pretrained_cfg_overlay=overlay or None, **init_kwargs,
            )
        except TypeError:  # a family without residual branches to keep live
            return timm.create_model(
                name, pretrained=use_weights, features_only=True, out_indices=out_indices,
                pretrained_cfg_overlay=overlay or None,
            )
    except (RuntimeError, KeyError, ValueError) as exc:
        if pretrained not in ("none", "auto"):
            raise UserError(f"could not load weights from {pretrained} into {backbone}: {exc}") from exc
        raise


def stage_depths(backbone: nn.Module) -> list[int]:
    """Number of residual blocks in each ``layerN`` stage a ResNet feature extractor holds."""
    return [len(module) for name, module in backbone.named_children() if name.startswith("layer")]


def residual_block_kind(backbone: nn.Module) -> str:
    """``"bottleneck"`` or ``"basic"``: the residual block type of a ResNet-family backbone."""
    first_stage = next(m for n, m in backbone.named_children() if n.startswith("layer"))
    return "bottleneck" if hasattr(first_stage[0], "conv3") else "basic"


def bottleneck_width_factor(backbone: nn.Module) -> float:
    """Inner width of a bottleneck block relative to a plain ResNet (2.0 for wide ResNets)."""
    if residual_block_kind(backbone) != "bottleneck":
        return 1.0
    first_block = next(m for n, m in backbone.named_children() if n.startswith("layer"))[0]
    return first_block.conv1.out_channels / (first_block.conv3.out_channels / 4)


class FrozenTeacher(nn.Module):
    """A timm feature extractor that stays in eval mode and never receives gradients."""

    def __init__(self, backbone: str, pretrained: str = "none", out_indices: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.encoder = create_backbone(backbone, pretrained, out_indices)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.channels: list[int] = list(self.encoder.feature_info.channels())
        self.reductions: list[int] = list(self.encoder.feature_info.reduction())

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # BatchNorm statistics of the teacher are part of what the student learns to match.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(images))

"""The interface every anomaly-detection method implements (see DESIGN.md, "A method").

A method is a ``torch.nn.Module`` built from its config dataclass. It receives tensors
already on the device and knows nothing about files, Ray or the training loop.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.synthesis import SynthesisConfig

Batch = dict[str, torch.Tensor]


@dataclass
class MethodConfig:
    """Fields every method shares. Subclasses set the paper's defaults.

    ``lr_milestones`` are fractions of the epoch budget, so a short profile decays the
    learning rate at the same relative points as the paper's schedule.
    """

    backbone: str = "wide_resnet50_2"
    pretrained: str = "none"
    lr: float = 5e-3
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.1
    gaussian_sigma: float = 4.0

    def validate(self, image_size: int) -> None:
        """Raise :class:`UserError` on values that cannot work at ``image_size``."""
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if not all(0.0 < m < 1.0 for m in self.lr_milestones):
            raise UserError(f"lr_milestones are fractions of the epoch budget in (0, 1), got {list(self.lr_milestones)}")
        if self.gaussian_sigma < 0:
            raise UserError(f"gaussian_sigma must be >= 0, got {self.gaussian_sigma}")
        if image_size % 32:
            raise UserError(f"image_size must be a multiple of 32 for ResNet feature pyramids, got {image_size}")

    def inert_fields(self) -> dict[str, str]:
        """Fields this configuration ignores, each with the setting that makes it inert.

        Setting one of them on purpose would look like an ablation and change nothing, so
        planning refuses it (see :func:`kdsearch.methods.check_explicit_settings`).
        """
        return {}


class AnomalyMethod(nn.Module):
    """Base class: training step, anomaly map, image score and optional epoch hook."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: DDP must tolerate parameters a training step does not touch (e.g. a head trained in on_epoch_end).
    has_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: MethodConfig, image_size: int) -> None:
        super().__init__()
        config.validate(image_size)
        self.config = config
        self.image_size = image_size

    def synthesis(self) -> SynthesisConfig | None:
        """Synthetic anomalies the batch must carry (``anomalous``, ``anomaly_mask``), or ``None``."""
        return None

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses of one batch; ``loss`` is optimised, the other entries are logged."""
        raise NotImplementedError

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) anomaly maps at input resolution; higher is more anomalous."""
        raise NotImplementedError

    def image_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """(B,) image scores from anomaly maps; the maximum unless a paper says otherwise."""
        return anomaly_map.flatten(1).amax(dim=1)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the frozen teachers: rebuilt from the config, never trained."""
        from kdsearch.nn import FrozenTeacher

        return tuple(f"{name}." for name, module in self.named_modules() if isinstance(module, FrozenTeacher))

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint needs: everything but the frozen teachers (a WRN50 teacher
        is two thirds of the weights, and rebuilding it from weights or seed is exact)."""
        frozen = self.frozen_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}

    def frozen_fingerprint(self) -> float:
        """A checksum of the frozen teachers' weights: a rebuilt teacher must give the same."""
        frozen = self.frozen_prefixes()
        return float(sum(v.double().sum() for k, v in self.state_dict().items()
                         if k.startswith(frozen) and v.is_floating_point()))

    def load_trained_state_dict(self, state: dict[str, torch.Tensor], frozen_fingerprint: float | None = None) -> None:
        """Load :meth:`trained_state_dict` output (a full state dict loads as well).

        Raises:
            UserError: the state does not fit, or the rebuilt teacher differs from the
                one the state was trained against (its fingerprint, when given).
        """
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = self.frozen_prefixes()
        missing = [k for k in missing if not k.startswith(frozen)]
        if missing or unexpected:
            raise UserError(f"the checkpoint does not fit this model (missing {missing[:5]}, unexpected "
                            f"{unexpected[:5]}); resume with the settings it was trained with")
        if frozen_fingerprint is not None and self.frozen_fingerprint() != frozen_fingerprint:
            raise UserError("the rebuilt frozen teacher differs from the one this checkpoint was trained with "
                               "(other weights or seed); resume with the trial's own settings")

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the main optimiser updates."""
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizer(self, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Adam with the config's lr/betas, step decay at ``lr_milestones`` of ``epochs``."""
        cfg = self.config
        optimizer = torch.optim.Adam(self.trainable_parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        if not cfg.lr_milestones:
            return optimizer, None
        milestones = sorted({max(1, round(m * epochs)) for m in cfg.lr_milestones})
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_gamma)

    def on_epoch_end(self, epoch: int, batches: Callable[[], Iterable[Batch]]) -> dict[str, float]:
        """Hook after each training epoch; ``batches()`` yields a fresh pass of training batches."""
        return {}

    def extra_state_for_checkpoint(self) -> dict:
        """Optimiser states of heads trained in ``on_epoch_end`` (saved with the checkpoint)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state_for_checkpoint` returned."""


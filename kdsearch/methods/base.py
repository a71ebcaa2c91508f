"""The interface every anomaly-detection method implements (see DESIGN.md, "A method").

A method is a ``torch.nn.Module`` built from its config dataclass. It receives tensors
already on the device and knows nothing about files, Ray or the training loop.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypedDict

import torch
from torch import nn

from kdsearch.errors import UserError
from kdsearch.synthesis import SynthesisConfig

class Batch(TypedDict, total=False):
    """One training batch, on the device. ``image`` always; the other two when the method's
    config asks for synthetic anomalies (:meth:`MethodConfig.synthesis`)."""

    image: torch.Tensor  # (B, 3, H, W) normalised normal images
    anomalous: torch.Tensor  # (B, 3, H, W) the same images with synthetic anomalies, normalised
    anomaly_mask: torch.Tensor  # (B, 1, H, W) float {0, 1}: exactly where each image changed
    # The frozen teacher's features of ``image`` (AnomalyMethod.cached_teacher), when the
    # loop's teacher cache serves them (kdsearch.teacher_cache); the step computes them otherwise.
    teacher_image: list[torch.Tensor]
    index: tuple[int, ...]  # positions of the images in the training split; the loop removes it


def clean_teacher_features(batch: Batch, teacher: nn.Module) -> list[torch.Tensor]:
    """The teacher's features of ``batch["image"]``: the cache's when the batch carries them."""
    cached = batch.get("teacher_image")
    return cached if cached is not None else teacher(batch["image"])

#: A phase's losses for one batch, given the module it trains (wrapped in DDP or compiled
#: by the loop when asked); ``loss`` is optimised, the other entries are logged.
PhaseStep = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


@dataclass
class TrainingPhase:
    """One optimiser's pass over the training batches, every epoch, in the phases' order.

    The loop (:mod:`kdsearch.loop`) runs every phase the same way: the method in eval mode
    except ``module`` in train mode, autocast, the divergence check, DDP over ``module``
    (gradients of the parameters the optimiser holds, averaged across ranks), and the
    optimiser's and scheduler's states in the checkpoint.

    Attributes:
        name: ``"main"`` for the method's training step; another phase's logged losses are
            prefixed with its name (``msn`` → ``msn_loss``).
        module: what the phase trains (DDP wraps it).
        step: the phase's losses for one batch.
        optimizer: updates the phase's parameters (and only those).
        scheduler: steps once per epoch, if any.
    """

    name: str
    module: nn.Module
    step: PhaseStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


def _call(module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    return module(batch)


@dataclass(frozen=True)
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

    def synthesis(self) -> SynthesisConfig | None:
        """Synthetic anomalies the batches must carry (``anomalous``, ``anomaly_mask``), or ``None``.

        The kind, foreground, probability and textures follow from the method's fields;
        the rest is the trial's ``synthesis`` section (see :class:`kdsearch.trial.Trial`).
        """
        return None

    def phase_synthesis(self) -> dict[str, dict[str, Any]]:
        """Training phases that draw anomalies of their own: ``{phase name: the
        :class:`SynthesisConfig` fields that differ from :meth:`synthesis`'s}``. Such a
        phase iterates its own seeded batches; the others share the main phase's."""
        return {}

    def inert_fields(self) -> dict[str, str]:
        """Fields this configuration ignores, each with the setting that makes it inert.

        Setting one of them on purpose would look like an ablation and change nothing, so
        planning refuses it (see :func:`kdsearch.trial.check_explicit_settings`).
        Subclasses add theirs to this base set.
        """
        if not self.lr_milestones:
            return {"lr_gamma": "lr_milestones is empty (the learning rate never decays)"}
        return {}

    def teacher_cache_input(self) -> str | None:
        """How the training step's frozen teacher sees the clean image ``batch["image"]``:
        ``"alone"`` (a call on it alone), ``"first_half"`` (a call on ``cat[image,
        anomalous]``), or ``None`` (no frozen teacher sees it: nothing to cache). The
        method's :meth:`AnomalyMethod.cached_teacher` is that teacher."""
        return None

    def category_inert_fields(self, kind: str | None) -> dict[str, str]:
        """Fields a category of ``kind`` (``texture``, ``object``, unknown) makes inert,
        with the reason: rows that differ only there train the same model on it."""
        return {}

    def inference_fields(self) -> tuple[str, ...]:
        """Fields that act only when a trained model scores images, never on its training.

        Rows of a sweep that differ only in these share one training, evaluated once per
        variant (``tests/test_training_identity.py`` proves the training steps bit-identical
        whatever their values).
        """
        return ("gaussian_sigma",)

    def training_spelling(self, identity: dict[str, object]) -> dict[str, object]:
        """``identity`` (this config's fields that decide the trained weights) in the one
        spelling shared by every configuration that trains identically; by default as it is."""
        return identity


class AnomalyMethod(nn.Module):
    """Base class: training phases, anomaly map and image score.

    A module's :attr:`config` is the one it was built with, for its life: a trained model
    scored under other scoring settings gets them as an argument (``scoring`` of
    :meth:`anomaly_map` and :meth:`image_score`), never as a new config.
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig, image_size: int) -> None:
        super().__init__()
        config.validate(image_size)
        self._config = config
        self.image_size = image_size

    @property
    def config(self) -> MethodConfig:
        """The config the module was built (and trained) with; read-only."""
        return self._config

    def scoring_config(self, scoring: MethodConfig | None = None) -> MethodConfig:
        """The settings :meth:`anomaly_map` and :meth:`image_score` read: :attr:`config`,
        with the inference fields (:meth:`MethodConfig.inference_fields`) of ``scoring``
        when given. Every other field, whatever ``scoring`` says, is the trained model's.

        Raises:
            TypeError: ``scoring`` is another method's config.
            UserError: its inference fields cannot work at this image size.
        """
        config = self._config
        if scoring is None or scoring is config:
            return config
        if type(scoring) is not type(config):
            raise TypeError(f"scoring settings of {type(config).__name__} expected, got {type(scoring).__name__}")
        merged = replace(config, **{name: getattr(scoring, name) for name in config.inference_fields()})
        if merged == config:
            return config
        merged.validate(self.image_size)
        return merged

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses of one batch; ``loss`` is optimised, the other entries are logged."""
        raise NotImplementedError

    def anomaly_map(self, images: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        """(B, H, W) anomaly maps at input resolution; higher is more anomalous.

        ``scoring``: the scoring settings (a config of this method that differs from
        :attr:`config` in inference fields); :attr:`config`'s when ``None``. Read them
        through :meth:`scoring_config`.
        """
        raise NotImplementedError

    def image_score(self, anomaly_map: torch.Tensor, scoring: MethodConfig | None = None) -> torch.Tensor:
        """(B,) image scores from anomaly maps; the maximum unless a paper says otherwise.
        ``scoring`` as for :meth:`anomaly_map`."""
        return anomaly_map.flatten(1).amax(dim=1)

    def cached_teacher(self) -> nn.Module | None:
        """The frozen teacher whose features of the clean image the step takes from
        ``batch["teacher_image"]`` when given (:meth:`MethodConfig.teacher_cache_input`)."""
        return None

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
        """Parameters the main phase's optimiser updates."""
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizer(self, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Adam with the config's lr/betas, step decay at ``lr_milestones`` of ``epochs``."""
        cfg = self.config
        optimizer = torch.optim.Adam(self.trainable_parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        if not cfg.lr_milestones:
            return optimizer, None
        milestones = sorted({max(1, round(m * epochs)) for m in cfg.lr_milestones})
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_gamma)

    def training_phases(self, epochs: int) -> list[TrainingPhase]:
        """The phases of one epoch, in order; call it once the method is on its device.

        One phase by default: :meth:`training_step` with :meth:`configure_optimizer`. A
        method that trains a part with its own optimiser on its own pass (DMDD's
        segmentation head) adds a phase after it.
        """
        optimizer, scheduler = self.configure_optimizer(epochs)
        return [TrainingPhase("main", self, _call, optimizer, scheduler)]


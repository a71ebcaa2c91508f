"""One object the training loop calls per batch: kind, foreground mode, probability, sources.

ADPS uses DRAEM anomalies; DMDD uses DRAEM anomalies restricted to a GrabCut foreground
(FAS on) or over the full image (FAS off, its Table 5 ablation); MRKD uses NSA with
proportion α of anomalous images. Each is a :class:`SynthesisConfig`; the loop builds an
:class:`AnomalySynthesizer`, calls :meth:`~AnomalySynthesizer.prepare` once per category
with the normal training images, then calls the synthesizer on every batch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from kdsearch.errors import UserError
from kdsearch.synthesis._common import DEFAULT_CHANGE_TOLERANCE, check_images
from kdsearch.synthesis.draem import draem_synthesize, rotate_normal_images
from kdsearch.synthesis.foreground import grabcut_foreground, object_foreground_threshold
from kdsearch.synthesis.nsa import NSA_BLENDS, NSA_MODES, nsa_synthesize
from kdsearch.synthesis.nsa_swap import nsa_swap_synthesize
from kdsearch.synthesis.textures import TextureBank

__all__ = ["SynthesisConfig", "AnomalySynthesizer", "SYNTHESIS_KINDS", "FOREGROUND_MODES", "method_synthesis_fields",
           "inert_synthesis_fields"]

SYNTHESIS_KINDS = ("draem", "nsa")
FOREGROUND_MODES = ("none", "grabcut", "threshold")


@dataclass(frozen=True)
class SynthesisConfig:
    """Everything that shapes the synthetic anomalies; defaults follow the papers' sources.

    A method's config chooses ``kind``, ``foreground``, ``probability`` and
    ``texture_root`` from its own fields (see :func:`method_synthesis_fields`); the other
    fields are the ``synthesis`` section of a trial's settings
    (``--set synthesis.perlin_threshold=0.3``).

    Attributes:
        kind: "draem" (ADPS, DMDD) or "nsa" (MRKD).
        foreground: "none" (full image), "grabcut" (DMDD's FAS) or "threshold" (NSA's
            brightness rule, see :func:`object_foreground_threshold`).
        probability: share of images in a batch that get an anomaly.
        texture_root: DTD-style folder for DRAEM textures; None = built-in procedural bank.
        texture_count: size of the procedural bank.
        texture_seed: seed of the procedural bank.
        texture_max_images: cap on images loaded from ``texture_root``.
        beta_range: DRAEM opacity range: [0, 0.8) as DRAEM's code draws it (its paper's
            text says [0.1, 1.0]; ``--set synthesis.beta_range=[0.1,1.0]`` gives that reading).
        perlin_threshold: DRAEM Perlin threshold.
        perlin_min_scale: smallest Perlin exponent.
        perlin_max_scale: exclusive largest Perlin exponent.
        nsa_mode: how NSA pastes: "auto", "normal", "mixed", "random" (Poisson-blended
            patches of other training images, rescaled: the NSA paper's method and MRKD's
            text) or "swap" (a patch of the image itself, shifted, copied as it is: MRKD's
            official call of NSA's ``patch_ex``, :mod:`~kdsearch.synthesis.nsa_swap`).
        nsa_num_patches: NSA (always, at most) patches per image.
        nsa_half_width_bounds: ((min, max) vertical, (min, max) horizontal) patch half-widths
            as shares of the side (NSA's ``width_bounds_pct``).
        nsa_min_object_fraction: least object share of a cut, with a foreground (``min_object_pct``).
        nsa_min_overlap_fraction: least share of a patch landing on the foreground (``min_overlap_pct``).
        nsa_blend: who solves NSA's Poisson blends: "opencv" (per image on the CPU's
            cores), "torch" (batched on the training device) or "auto" (torch on CUDA,
            OpenCV on a CPU); the two agree to one grey level on under 1 % of pixels.
        grabcut_iterations: GrabCut iterations.
        grabcut_margin: GrabCut rectangle inset, share of each side.
        threshold_background: background brightness for "threshold" (None: estimate).
        threshold_level: brightness difference for "threshold".
        change_tolerance: an NSA pixel is labelled anomalous above this mean absolute
            change (DRAEM's label is its Perlin region, as DRAEM's code has it).
        normal_rotation: share of training images rotated by -90..90° before synthesis,
            each both the normal sample and the one the anomaly goes into (DRAEM's
            loader rotates 0.3 of them; 0 rotates none and draws nothing).
    """

    kind: str = "draem"
    foreground: str = "none"
    probability: float = 1.0
    texture_root: str | None = None
    texture_count: int = 32
    texture_seed: int = 0
    texture_max_images: int | None = None
    beta_range: tuple[float, float] = (0.0, 0.8)
    perlin_threshold: float = 0.5
    perlin_min_scale: int = 0
    perlin_max_scale: int = 6
    nsa_mode: str = "auto"
    nsa_num_patches: tuple[int, int] = (1, 4)
    nsa_half_width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.4), (0.03, 0.4))
    nsa_min_object_fraction: float = 0.5
    nsa_min_overlap_fraction: float = 0.25
    nsa_blend: str = "auto"
    grabcut_iterations: int = 3
    grabcut_margin: float = 0.05
    threshold_background: float | None = None
    threshold_level: float = 0.1
    change_tolerance: float = DEFAULT_CHANGE_TOLERANCE
    normal_rotation: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SYNTHESIS_KINDS:
            raise UserError(f"synthesis kind must be one of {', '.join(SYNTHESIS_KINDS)}, got {self.kind!r}")
        if self.foreground not in FOREGROUND_MODES:
            raise UserError(f"foreground mode must be one of {', '.join(FOREGROUND_MODES)}, got {self.foreground!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise UserError(f"anomaly probability must be in [0, 1], got {self.probability}")
        if self.nsa_mode not in NSA_MODES:
            raise UserError(f"nsa_mode must be one of {', '.join(NSA_MODES)}, got {self.nsa_mode!r}")
        if self.nsa_blend not in NSA_BLENDS:
            raise UserError(f"nsa_blend must be one of {', '.join(NSA_BLENDS)}, got {self.nsa_blend!r}")
        # YAML and JSON give lists; the functions expect tuples. Frozen: set once, here.
        object.__setattr__(self, "beta_range", tuple(self.beta_range))
        object.__setattr__(self, "nsa_num_patches", tuple(self.nsa_num_patches))
        object.__setattr__(self, "nsa_half_width_bounds",
                           tuple(tuple(float(v) for v in pair) for pair in self.nsa_half_width_bounds))
        bounds = self.nsa_half_width_bounds
        low, high = self.beta_range
        checks = [
            (self.texture_count >= 1, f"texture_count must be >= 1, got {self.texture_count}"),
            (self.texture_max_images is None or self.texture_max_images >= 1,
             f"texture_max_images must be >= 1 (or unset: every image), got {self.texture_max_images}"),
            (0.0 <= low <= high <= 1.0, f"beta_range must be [low, high] with 0 <= low <= high <= 1, got {list(self.beta_range)}"),
            (0.0 < self.perlin_threshold < 1.0, f"perlin_threshold must be in (0, 1), got {self.perlin_threshold}"),
            (0 <= self.perlin_min_scale < self.perlin_max_scale,
             f"perlin scales need 0 <= perlin_min_scale < perlin_max_scale (exclusive), got "
             f"{self.perlin_min_scale} and {self.perlin_max_scale}"),
            (1 <= self.nsa_num_patches[0] <= self.nsa_num_patches[1],
             f"nsa_num_patches must be [fewest, most] with 1 <= fewest <= most, got {list(self.nsa_num_patches)}"),
            (len(bounds) == 2 and all(len(pair) == 2 and 0.0 < pair[0] <= pair[1] < 0.5 for pair in bounds),
             f"nsa_half_width_bounds must be [[min, max], [min, max]] shares with 0 < min <= max < 0.5, got "
             f"{[list(pair) for pair in bounds]}"),
            (0.0 <= self.nsa_min_object_fraction < 1.0,
             f"nsa_min_object_fraction must be in [0, 1), got {self.nsa_min_object_fraction}"),
            (0.0 <= self.nsa_min_overlap_fraction < 1.0,
             f"nsa_min_overlap_fraction must be in [0, 1), got {self.nsa_min_overlap_fraction}"),
            (self.grabcut_iterations >= 1, f"grabcut_iterations must be >= 1, got {self.grabcut_iterations}"),
            (0.0 <= self.grabcut_margin < 0.5, f"grabcut_margin must be in [0, 0.5), got {self.grabcut_margin}"),
            (self.threshold_background is None or 0.0 <= self.threshold_background <= 1.0,
             f"threshold_background must be in [0, 1] (or unset: estimated), got {self.threshold_background}"),
            (self.threshold_level > 0.0, f"threshold_level must be > 0, got {self.threshold_level}"),
            (self.change_tolerance >= 0.0, f"change_tolerance must be >= 0, got {self.change_tolerance}"),
            (0.0 <= self.normal_rotation <= 1.0, f"normal_rotation must be in [0, 1], got {self.normal_rotation}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"synthesis.{message}")

    def for_category(self, kind: str | None) -> SynthesisConfig:
        """This config for a category of ``kind`` (``"texture"``, ``"object"`` or unknown).

        A foreground keeps anomalies on the object of an object category (DMDD's FAS,
        MRKD's NSA "in foreground regions"). A texture has no background: there the
        foreground is the whole image, as in NSA's own code, since GrabCut or a brightness
        rule would cut it arbitrarily (GrabCut keeps 19-52 % of five of the eight
        procedural textures).
        """
        if kind == "texture" and self.foreground != "none":
            return dataclasses.replace(self, foreground="none")
        return self


def method_synthesis_fields() -> tuple[str, ...]:
    """The fields a method's config decides (they are its ablation axes), never set directly."""
    return ("kind", "foreground", "probability", "texture_root")


def inert_synthesis_fields(config: SynthesisConfig) -> dict[str, str]:
    """Fields ``config`` ignores, each with the setting that makes it inert."""
    inert: dict[str, str] = {}
    if config.kind == "draem":
        inert |= dict.fromkeys(("nsa_mode", "nsa_num_patches", "nsa_blend", "nsa_half_width_bounds",
                                "nsa_min_object_fraction", "nsa_min_overlap_fraction"),
                               "the anomalies are DRAEM's, not NSA's")
        inert["change_tolerance"] = "the anomalies are DRAEM's, labelled by their Perlin region as DRAEM's code does"
        if config.texture_root is None:
            inert["texture_max_images"] = "no texture folder is given (the procedural bank is used)"
        else:
            inert |= dict.fromkeys(("texture_count", "texture_seed"), "a texture folder is given")
    else:
        inert |= dict.fromkeys(("texture_count", "texture_seed", "texture_max_images", "beta_range",
                                "perlin_threshold", "perlin_min_scale", "perlin_max_scale"),
                               "the anomalies are NSA's, not DRAEM's")
        if config.nsa_mode == "swap":
            inert["nsa_blend"] = "nsa_mode is 'swap' (patches are copied, nothing is blended)"
        if config.foreground == "none":
            inert["nsa_min_object_fraction"] = "the foreground is 'none' (every cut is on the object)"
            inert["nsa_min_overlap_fraction"] = "the foreground is 'none' (every destination is on the object)"
    if config.foreground != "grabcut":
        inert |= dict.fromkeys(("grabcut_iterations", "grabcut_margin"), f"the foreground is {config.foreground!r}")
    if config.foreground != "threshold":
        inert |= dict.fromkeys(("threshold_background", "threshold_level"), f"the foreground is {config.foreground!r}")
    return inert


class AnomalySynthesizer:
    """Makes (anomalous images, masks) for a batch, reproducibly from a seed.

    Typical use in a training loop::

        synth = AnomalySynthesizer(SynthesisConfig(kind="draem", foreground="grabcut"))
        synth.prepare(train_images_uint8)                 # once per category
        anomalous, masks = synth(batch01, seed, indices=batch_indices)
        normal, anomalous, masks = synth.with_normals(batch01, seed, indices=batch_indices)

    With ``normal_rotation`` > 0 some images are rotated first (DRAEM's loader);
    :meth:`with_normals` returns those normal images too, as training pairs them.

    ``indices`` are the batch images' positions in the tensor given to :meth:`prepare`;
    they select cached foregrounds and keep NSA from pasting an image into itself.

    Args:
        config: what to synthesise.
        textures: a texture bank to use instead of the one the config describes.
    """

    def __init__(self, config: SynthesisConfig | None = None, *, textures: TextureBank | None = None) -> None:
        self.config = config or SynthesisConfig()
        self._textures = textures
        self._foreground: torch.Tensor | None = None
        self._sources: torch.Tensor | None = None

    # ------------------------------------------------------------------ preparation
    def foreground_of(self, images: torch.Tensor) -> torch.Tensor | None:
        """Foreground masks (B, 1, H, W) of ``images`` under the configured mode (None for "none")."""
        cfg = self.config
        if cfg.foreground == "grabcut":
            return grabcut_foreground(images, iterations=cfg.grabcut_iterations, margin=cfg.grabcut_margin)
        if cfg.foreground == "threshold":
            return object_foreground_threshold(images, background=cfg.threshold_background,
                                               threshold=cfg.threshold_level)
        return None

    def precompute_foreground(self, images: torch.Tensor) -> torch.Tensor | None:
        """Compute and cache the foreground of a category's training images.

        GrabCut costs tens to hundreds of milliseconds per image, so it runs once here
        (on all CPU cores) instead of in every batch.

        Args:
            images: (N, 3, H, W) uint8 or float in [0, 1], any device.

        Returns:
            (N, 1, H, W) float {0, 1} masks on the images' device, or None when the
            mode is "none".
        """
        foreground = self.foreground_of(images)
        # Cached as bool on CPU: an eighth of the float size to hold and to move per batch.
        self._foreground = None if foreground is None else foreground.cpu().bool()
        return foreground

    def set_sources(self, images: torch.Tensor) -> None:
        """Keep a category's normal images (uint8 or float, (N, 3, H, W)) as NSA patch sources."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"sources must have shape (N, 3, H, W), got {tuple(images.shape)}")
        # Channels-last, so a picked uint8 source is already an OpenCV (H, W, 3) image: no copy per patch.
        self._sources = images.detach().cpu().contiguous(memory_format=torch.channels_last)

    def prepare(self, images: torch.Tensor) -> None:
        """Everything per category: cached foregrounds and, for NSA, the patch sources."""
        self.precompute_foreground(images)
        if self.config.kind == "nsa":
            self.set_sources(images)

    def textures(self, size: tuple[int, int], device: torch.device | str) -> TextureBank:
        """The DRAEM texture bank, built on first use at the images' size and kept on their device."""
        cfg = self.config
        if self._textures is None:
            side = max(size)
            if cfg.texture_root is not None:
                self._textures = TextureBank.from_directory(cfg.texture_root, side, device, cfg.texture_max_images)
            else:
                self._textures = TextureBank.procedural(side, cfg.texture_count, cfg.texture_seed, device)
        self._textures = self._textures.to(device)
        return self._textures

    # ------------------------------------------------------------------ per batch
    def __call__(self, images: torch.Tensor, generator: int | torch.Generator, *,
                 indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Synthesise anomalies for one batch: :meth:`with_normals` without the normal images."""
        _, anomalous, masks = self.with_normals(images, generator, indices=indices)
        return anomalous, masks

    def with_normals(self, images: torch.Tensor, generator: int | torch.Generator, *,
                     indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Synthesise anomalies for one batch, and return the normal images they start from.

        Args:
            images: float (B, 3, H, W) in [0, 1] (not normalised), on the training device.
            generator: an int seed, or a torch generator. An int seeds a CPU generator
                (and, for NSA, a numpy generator), so a seed gives the same anomalies on
                every device; a torch generator also seeds NSA's numpy generator from one
                draw.
            indices: (B,) positions of the images in the tensor given to :meth:`prepare`.
                Without cached foregrounds they are computed for this batch (slow for
                GrabCut); without NSA sources the batch itself is the source pool.

        Returns:
            ``(normal, anomalous, masks)``: float (B, 3, H, W), (B, 3, H, W) and float
            {0, 1} (B, 1, H, W) on the images' device; ``normal`` is ``images`` with the
            ``normal_rotation`` share rotated (``images`` itself at 0), ``anomalous`` is
            made from it, and ``masks[b]`` is where image b's anomaly lies (DRAEM: its
            Perlin region; NSA swap: the label of MRKD's code, median-filtered, see
            :mod:`~kdsearch.synthesis.nsa_swap`).
        """
        batch, height, width = check_images(images)
        cfg = self.config
        if isinstance(generator, torch.Generator):
            torch_gen = generator
            numpy_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        else:
            torch_gen = torch.Generator().manual_seed(int(generator))
            numpy_seed = int(generator)
        index_list = None if indices is None else torch.as_tensor(indices).long().cpu()
        if index_list is not None and index_list.numel() != batch:
            raise ValueError(f"indices must have {batch} entries, got {index_list.numel()}")

        foreground = None
        cached = cfg.foreground != "none" and self._foreground is not None and index_list is not None
        if cached:
            # Left on the CPU: NSA draws its patches there, and DRAEM moves it itself.
            foreground = self._foreground[index_list]
        # DRAEM's loader rotates the normal image before it synthesises (a cached foreground
        # turns with it); drawn from the same stream, first, and not at all at 0.
        images, foreground = rotate_normal_images(images, torch_gen, cfg.normal_rotation, foreground)
        if cached and foreground is not None:
            foreground = foreground.cpu()
        if cfg.foreground != "none" and not cached:
            foreground = self.foreground_of(images)
        normal = images

        if cfg.kind == "draem":
            return normal, *draem_synthesize(
                images, self.textures((height, width), images.device), torch_gen, foreground=foreground,
                anomaly_probability=cfg.probability, beta_range=cfg.beta_range, threshold=cfg.perlin_threshold,
                min_scale=cfg.perlin_min_scale, max_scale=cfg.perlin_max_scale)

        rng = np.random.default_rng(numpy_seed)
        if cfg.nsa_mode == "swap":
            return normal, *nsa_swap_synthesize(
                images, rng, foreground=foreground, anomaly_probability=cfg.probability, num_patches=cfg.nsa_num_patches,
                half_width_bounds=cfg.nsa_half_width_bounds, min_object_fraction=cfg.nsa_min_object_fraction,
                min_overlap_fraction=cfg.nsa_min_overlap_fraction, change_tolerance=cfg.change_tolerance)
        if self._sources is not None and index_list is not None:
            sources, image_indices = self._sources, index_list
            source_foreground = self._foreground
        else:
            # No category pool: the other images of the batch are the sources, as the
            # batch holds normal images of the same category.
            sources, image_indices = images, torch.arange(batch)
            source_foreground = foreground
        return normal, *nsa_synthesize(
            images, sources, rng, foreground=foreground, source_foreground=source_foreground,
            image_indices=image_indices, anomaly_probability=cfg.probability, num_patches=cfg.nsa_num_patches,
            mode=cfg.nsa_mode, half_width_bounds=cfg.nsa_half_width_bounds,
            min_object_fraction=cfg.nsa_min_object_fraction, min_overlap_fraction=cfg.nsa_min_overlap_fraction,
            change_tolerance=cfg.change_tolerance, blend=cfg.nsa_blend)

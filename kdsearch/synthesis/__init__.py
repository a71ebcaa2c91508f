"""Anomaly synthesis: DRAEM (Perlin mask + texture), NSA (blended or swapped patches), foregrounds.

Images entering synthesis are float (B, 3, H, W) in [0, 1], not normalised, on any
device; masks come back as float {0, 1} (B, 1, H, W) on the same device: NSA's equal the
set of changed pixels exactly, DRAEM's are its Perlin region, as DRAEM's code labels it.
Randomness comes only from an explicit
``torch.Generator`` (torch code) or ``numpy.random.Generator`` (OpenCV code).
"""
from kdsearch.synthesis.augment import random_color_augment
from kdsearch.synthesis.draem import draem_synthesize
from kdsearch.synthesis.foreground import grabcut_foreground, object_foreground_threshold
from kdsearch.synthesis.nsa import NSA_MODES, nsa_synthesize
from kdsearch.synthesis.nsa_swap import nsa_swap_synthesize
from kdsearch.synthesis.perlin import perlin_masks, perlin_noise
from kdsearch.synthesis.synthesizer import (
    FOREGROUND_MODES,
    SYNTHESIS_KINDS,
    AnomalySynthesizer,
    SynthesisConfig,
    inert_synthesis_fields,
    method_synthesis_fields,
)
from kdsearch.synthesis.textures import TextureBank

__all__ = [
    "AnomalySynthesizer",
    "FOREGROUND_MODES",
    "NSA_MODES",
    "SYNTHESIS_KINDS",
    "SynthesisConfig",
    "TextureBank",
    "draem_synthesize",
    "grabcut_foreground",
    "inert_synthesis_fields",
    "method_synthesis_fields",
    "nsa_swap_synthesize",
    "nsa_synthesize",
    "object_foreground_threshold",
    "perlin_masks",
    "perlin_noise",
    "random_color_augment",
]

"""Painted defects (scratch, hole, contamination, discolouration) on any normal image.

The built-in dataset's defect painters (:mod:`kdsearch.data.synthetic_defects`), applied
to a given image instead of a rendered scene. No method trains on this family (they train
on DRAEM or NSA anomalies), so validation anomalies drawn from it do not reward a method,
or a synthesis setting, for finding its own training anomalies.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from kdsearch.data.synthetic_defects import PAINTERS
from kdsearch.data.synthetic_scenes import SIZE, Scene

__all__ = ["paint_defects"]

_FULL = np.ones((SIZE, SIZE), dtype=bool)
#: A hole shows what lies under the surface: the image itself, darkened.
_HOLE_DEPTH = 0.3


def _scene_of(image255: np.ndarray) -> Scene:
    """``image255`` (float32 H×W×3 at the painters' size) as an unlit, noise-free scene whose
    whole frame is surface: a painter then changes it exactly inside its region."""
    return Scene(base=image255, gain=np.ones((SIZE, SIZE, 1), np.float32), noise=np.zeros_like(image255),
                 support=_FULL, body=_FULL, backdrop=image255 * _HOLE_DEPTH)


def paint_defects(images01: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One painted defect on each image, the four kinds in turn.

    Args:
        images01: (N, 3, H, W) float images in [0, 1].
        generator: seeds every draw, so the same generator state gives the same defects.

    Returns:
        ``(anomalous01, masks)``: the painted images, equal to the input outside the mask,
        and (N, 1, H, W) float masks in {0, 1}, each with at least one pixel.
    """
    n, _, height, width = images01.shape
    kinds = list(PAINTERS)
    out, masks = images01.clone(), torch.zeros((n, 1, height, width), dtype=images01.dtype)
    for index in range(n):
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        image = images01[index].permute(1, 2, 0).cpu().numpy().astype(np.float32) * 255.0
        # The painters draw at their native size; the change is brought back to the image's.
        native = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) if image.shape[:2] != (SIZE, SIZE) \
            else image
        painted, region = PAINTERS[kinds[index % len(kinds)]](_scene_of(native), rng)
        change = cv2.resize(painted - native, (width, height), interpolation=cv2.INTER_AREA)
        cover = cv2.resize(region.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        mask = cover >= 0.5
        if not mask.any():  # a scratch thinner than a pixel at this size: keep its densest one
            mask.flat[int(cover.argmax())] = True
        shift = torch.from_numpy(change * mask[..., None] / 255.0).permute(2, 0, 1).to(images01)
        out[index] = (images01[index] + shift).clamp_(0.0, 1.0)  # + 0 outside the mask: those pixels stay exact
        masks[index, 0] = torch.from_numpy(mask)
    return out, masks

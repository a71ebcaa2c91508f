"""CutPaste-style anomalies (Li et al., CVPR 2021), batched on the images' device.

A rectangle ("patch") or a thin rotated bar ("scar") of another image of the batch is
pasted, colour-jittered, at a random place. No method of this project trains on these
(ADPS and DMDD train on DRAEM, MRKD on Poisson-blended NSA patches), which is why the
validation split uses them: a selection metric must not reward a method for detecting
its own training anomalies.

Sizes follow CutPaste at 256²: patch area 2-15 % of the image with aspect ratio 0.3-3.3;
scar 2-16 px wide, 10-25 px long, rotated by ±45°; all scaled with the image side.
"""
from __future__ import annotations

import math

import torch

from kdsearch.synthesis._common import DEFAULT_CHANGE_TOLERANCE, check_images, finalize_exact, randint, uniform

__all__ = ["cutpaste_synthesize"]


def cutpaste_synthesize(images: torch.Tensor, generator: torch.Generator, *, scar_share: float = 0.5,
                        jitter: float = 0.1,
                        change_tolerance: float = DEFAULT_CHANGE_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a jittered patch or scar of another image of the batch into every image.

    Args:
        images: float (B, 3, H, W) in [0, 1], B >= 2 (sources are the other images), any device.
        generator: source of randomness (a CPU generator gives the same result on every device).
        scar_share: probability that an image gets a scar rather than a patch.
        jitter: brightness and contrast jitter of the pasted pixels (CutPaste: 0.1).
        change_tolerance: a pixel counts as changed above this mean absolute change.

    Returns:
        ``(anomalous, masks)``: float (B, 3, H, W) and float {0, 1} (B, 1, H, W), the
        mask exactly the changed pixels.

    Raises:
        ValueError: fewer than two images, or not a float batch.
    """
    batch, height, width = check_images(images)
    if batch < 2:
        raise ValueError("cutpaste_synthesize needs at least 2 images (each pastes from another)")
    device = images.device
    scale = min(height, width) / 256.0
    scar = uniform((batch,), generator, device) < scar_share
    # Patch: area and aspect ratio; scar: width and length (CutPaste's ranges at 256²).
    area = uniform((batch,), generator, device, 0.02, 0.15) * height * width
    aspect = torch.exp(uniform((batch,), generator, device, math.log(0.3), math.log(1 / 0.3)))
    patch_h, patch_w = (area * aspect).sqrt(), (area / aspect).sqrt()
    scar_w = uniform((batch,), generator, device, 2.0, 16.0) * scale
    scar_l = uniform((batch,), generator, device, 10.0, 25.0) * scale
    half_h = torch.where(scar, scar_l, patch_h.clamp(max=height - 2)) / 2
    half_w = torch.where(scar, scar_w.clamp(min=1.0), patch_w.clamp(max=width - 2)) / 2
    angle = torch.where(scar, uniform((batch,), generator, device, -math.pi / 4, math.pi / 4),
                        torch.zeros(batch, device=device))
    reach = torch.maximum(half_h, half_w)
    target_y = uniform((batch,), generator, device) * (height - 2 * reach).clamp(min=0) + reach
    target_x = uniform((batch,), generator, device) * (width - 2 * reach).clamp(min=0) + reach
    source_y = uniform((batch,), generator, device) * (height - 2 * reach).clamp(min=0) + reach
    source_x = uniform((batch,), generator, device) * (width - 2 * reach).clamp(min=0) + reach
    source = (torch.arange(batch, device=device) + 1 + randint(batch - 1, (batch,), generator, device)) % batch
    brightness = uniform((batch, 3), generator, device, -jitter, jitter)
    contrast = uniform((batch, 3), generator, device, 1 - jitter, 1 + jitter)

    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
    dy, dx = ys - target_y.view(-1, 1, 1), xs - target_x.view(-1, 1, 1)
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    along, across = cos * dy + sin * dx, -sin * dy + cos * dx
    region = (along.abs() <= half_h.view(-1, 1, 1)) & (across.abs() <= half_w.view(-1, 1, 1))
    # The pasted pixels keep their layout: a translation from the source position.
    rows = (dy + source_y.view(-1, 1, 1)).round().long().clamp(0, height - 1).expand(batch, height, width)
    cols = (dx + source_x.view(-1, 1, 1)).round().long().clamp(0, width - 1).expand(batch, height, width)
    pasted = images[source.view(-1, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
    mean = pasted.mean(dim=(2, 3), keepdim=True)
    pasted = ((pasted - mean) * contrast.view(-1, 3, 1, 1) + mean + brightness.view(-1, 3, 1, 1)).clamp(0.0, 1.0)
    edited = torch.where(region.unsqueeze(1), pasted, images)
    return finalize_exact(images, edited, region.unsqueeze(1), change_tolerance)

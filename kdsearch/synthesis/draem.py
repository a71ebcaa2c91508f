"""DRAEM anomaly synthesis (Zavrtanik et al., ICCV 2021, Eq. 1), batched on the images' device.

I_a = (1 - M) ⊙ I + (1 - β)(M ⊙ A) + β(M ⊙ I), with M a thresholded Perlin mask, A a
colour-augmented texture and β an opacity drawn per image. ADPS trains on these; DMDD's
foreground-aware synthesis (FAS) is the same with M restricted to a GrabCut foreground.

Where the DRAEM paper and its authors' code (``augment_image`` in ``data_loader.py``)
differ, the code is followed: β from [0, 0.8) (the paper says [0.1, 1.0], kept as
``beta_range=(0.1, 1.0)``), the noise image rotated with zero-filled corners, an empty
mask leaving the image normal, and the label being the thresholded Perlin region itself,
also where the blend leaves a pixel as it was. The code also rotates 30 % of the *normal*
training images by -90..90° before synthesis (``transform_image``);
:func:`rotate_normal_images` does that, for the share a caller sets (``synthesis.normal_rotation``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsearch.synthesis._common import as_mask, check_images, finalize_exact, rotate_about_centre, uniform
from kdsearch.synthesis.perlin import perlin_masks
from kdsearch.synthesis.textures import TextureBank

__all__ = ["draem_synthesize", "rotate_normal_images", "NORMAL_ROTATION_DEGREES"]

#: DRAEM's rotation of normal training images: ``iaa.Affine(rotate=(-90, 90))``, in degrees.
NORMAL_ROTATION_DEGREES = 90.0


def rotate_normal_images(images: torch.Tensor, generator: torch.Generator, probability: float,
                         foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate each image with ``probability`` by an angle uniform in -90..90°, as DRAEM's loader does.

    DRAEM's ``transform_image`` rotates a normal training image when a uniform draw exceeds
    0.7 (30 % of them) with imgaug's ``Affine`` defaults: about the centre, bilinear, corners
    filled with 0, the result stored as uint8. That image is both the normal sample and the
    one the anomaly is blended into. Here the others come back bit for bit; rotated images
    are rounded to the 8-bit grid. A ``foreground`` (B, 1, H, W) is rotated alike (bilinear,
    then > 0.5), so a cached GrabCut mask follows its image.

    Draws (from ``generator``, on its device): one uniform per image, then one angle per
    image; none at ``probability`` 0, so a caller that never rotates keeps its stream.

    Returns:
        ``(images, foreground)``, same shapes, dtypes and devices (foreground None if not given).

    Raises:
        ValueError: ``probability`` outside [0, 1].
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    if probability == 0.0:
        return images, foreground
    batch = images.shape[0]
    device = images.device
    selected = uniform((batch,), generator, device) < probability
    degrees = uniform((batch,), generator, device, -NORMAL_ROTATION_DEGREES, NORMAL_ROTATION_DEGREES)
    rows = selected.nonzero().squeeze(1)
    if rows.numel() == 0:
        return images, foreground
    turned = rotate_about_centre(images[rows], degrees[rows])
    images = images.index_copy(0, rows, (turned * 255.0).round().div(255.0).clamp(0.0, 1.0).to(images.dtype))
    if foreground is not None:
        mask = foreground.to(device=device)
        mask = mask.unsqueeze(1) if mask.ndim == 3 else mask
        turned_mask = rotate_about_centre(mask[rows].float(), degrees[rows]) > 0.5
        foreground = mask.index_copy(0, rows, turned_mask.to(mask.dtype))
    return images, foreground


def draem_synthesize(images: torch.Tensor, textures: TextureBank, generator: torch.Generator, *,
                     foreground: torch.Tensor | None = None, anomaly_probability: float = 1.0,
                     beta_range: tuple[float, float] = (0.0, 0.8), threshold: float = 0.5,
                     min_scale: int = 0, max_scale: int = 6, foreground_retries: int = 4,
                     change_tolerance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend Perlin-shaped patches of texture into a batch of images.

    Each image is made anomalous with probability ``anomaly_probability`` (DRAEM's code
    uses 0.5; the caller sets it); the others come back unchanged with an empty mask.
    β is uniform in ``beta_range`` per image: DRAEM's code draws from [0, 0.8) (the
    default), its paper states [0.1, 1.0]. An image whose Perlin mask is empty stays
    normal, as in DRAEM's code.

    With ``foreground`` the mask is M ⊙ foreground (DMDD's FAS). Small objects often
    miss a random Perlin blob, which would silently lower the share of anomalous images
    when FAS is on; so an image whose restricted mask is empty although its foreground
    is not gets a fresh Perlin mask, up to ``foreground_retries`` times (DMDD publishes
    no code; this keeps FAS's anomaly rate near full-image synthesis's). An image whose
    mask is still empty (or whose foreground is empty) stays unchanged with an empty mask.

    Labels: the returned mask is M, as DRAEM's code labels it, also where the blend
    leaves a pixel (nearly) as it was (β near 1, or texture equal to the image there);
    pixels outside M are never touched. With ``change_tolerance`` set, the mask is
    instead exactly the set of pixels that differ: a pixel inside M whose mean absolute
    change over channels is at most ``change_tolerance`` is restored to its input value
    and left out, so ``mask == (anomalous != images).any(1)``.

    All randomness comes from ``generator`` and the number of draws does not depend on
    the data path, so a fixed seed reproduces the batch exactly.

    Args:
        images: float (B, 3, H, W) in [0, 1] (not normalised), any device.
        textures: texture source; its samples are moved to the images' device and
            resized to (H, W) if the bank's size differs (bilinear without antialiasing,
            as ``cv2.resize``'s default that DRAEM's code uses).
        generator: source of randomness (any device; a CPU generator gives the same
            anomalies on every device).
        foreground: optional (B, 1, H, W) or (B, H, W) mask, non-zero = foreground.
        anomaly_probability: chance that an image gets an anomaly.
        beta_range: opacity range (low, high) of the original image inside the mask.
        threshold: Perlin threshold (DRAEM: 0.5).
        min_scale: smallest Perlin exponent (DRAEM: 0).
        max_scale: exclusive largest Perlin exponent (DRAEM: 6).
        foreground_retries: fresh masks for images whose mask misses the foreground.
        change_tolerance: None (DRAEM's code: the mask is M), or exact labels: a pixel
            counts as changed above this mean absolute change.

    Returns:
        ``(anomalous, masks)``: float (B, 3, H, W) in [0, 1] and float {0, 1}
        (B, 1, H, W), on the images' device and in their dtype.

    Raises:
        ValueError: bad shapes or parameter ranges.
    """
    batch, height, width = check_images(images)
    if not 0.0 <= anomaly_probability <= 1.0:
        raise ValueError(f"anomaly_probability must be in [0, 1], got {anomaly_probability}")
    if not 0.0 <= beta_range[0] <= beta_range[1] <= 1.0:
        raise ValueError(f"beta_range must satisfy 0 <= low <= high <= 1, got {beta_range}")
    if change_tolerance is not None and change_tolerance < 0.0:
        raise ValueError(f"change_tolerance must be >= 0, got {change_tolerance}")
    device = images.device
    dtype = images.dtype

    # Drawn first, so which images get anomalies depends on the seed only, not on how
    # many Perlin redraws the data needed.
    selected = uniform((batch,), generator, device) < anomaly_probability
    region = perlin_masks(batch, (height, width), generator, device, threshold, min_scale, max_scale) > 0
    if foreground is not None:
        fg = as_mask(foreground, batch, height, width, device, "foreground")
        region &= fg
        has_foreground = fg.flatten(1).any(dim=1)
        for _ in range(foreground_retries):
            missed = has_foreground & ~region.flatten(1).any(dim=1)
            if not bool(missed.any()):
                break
            rows = missed.nonzero().squeeze(1)
            fresh = perlin_masks(int(rows.numel()), (height, width), generator, device, threshold,
                                 min_scale, max_scale) > 0
            region[rows] = fresh & fg[rows]

    region &= selected.view(batch, 1, 1, 1)

    # Sampling runs where the bank lives (keep it on the images' device for speed: the
    # colour operations are the costliest part); only the sampled batch moves.
    source = textures.sample(batch, generator).to(device=device, dtype=dtype)
    if source.shape[-2:] != (height, width):
        source = F.interpolate(source, size=(height, width), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    beta = uniform((batch, 1, 1, 1), generator, device, beta_range[0], beta_range[1]).to(dtype)
    # Inside the mask Eq. 1 reduces to I + (1 - β)(A - I); outside it is I, by construction.
    blended = images + (1.0 - beta) * (source - images)
    if change_tolerance is not None:
        return finalize_exact(images, blended, region, change_tolerance)
    return torch.where(region, blended, images), region.to(dtype)

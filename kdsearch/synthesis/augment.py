"""Batched colour augmentations of texture sources: DRAEM's imgaug set, in torch.

DRAEM's public training code (``augment_image`` in ``data_loader.py``, imgaug 0.4.0) draws
3 distinct augmenters out of 10 for each anomaly source image and applies them in the
drawn order: gamma contrast (0.5-2.0, per channel), ``MultiplyAndAddToBrightness`` (per
image one of six colour spaces, YCrCb, HSV, HLS, Lab, Luv or YUV, is drawn; its brightness
channel, Y, V, L, L, L or Y, is multiplied by 0.8-1.2 and shifted by -30..30 grey levels,
in a random order, the other channels kept), PIL sharpness (factor 0-2),
``AddToHueAndSaturation((-50, 50), per_channel=True)`` (hue and saturation each shifted
by their own value on imgaug's ±255 scale: ±70.6° of hue, ±50 grey levels of HSV
saturation), solarize (p=0.5, threshold 32-128), posterize (1-8 bits), invert, PIL
autocontrast (a cut-off of 0-20 % at each end of each channel's histogram), equalize
(imgaug's own numpy histogram equalisation, which its ``pillike.Equalize`` runs on images
of 4,096 values and more; PIL's below), and an affine rotation of -45..45 degrees with
zero fill. Here the same ten run as torch ops on a whole batch on its own device, each
image with its own 3 operations, order and parameters. They follow imgaug's and PIL's
formulas on float values in [0, 1]; imgaug's rounding to uint8 between operations is not
repeated (the brightness operation stores its colour space as OpenCV's uint8 does).

DRAEM reads its textures with ``cv2.imread``, so the augmenters, written for RGB, see BGR
arrays: the brightness operation weighs the channels the other way round (Y weighs blue
by 0.299 and red by 0.114). :func:`random_color_augment` does the same by default
(``channel_order="bgr"``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdsearch.synthesis import colorspace
from kdsearch.synthesis._common import uniform

__all__ = ["random_color_augment", "NUM_COLOR_OPS", "CHANNEL_ORDERS"]

NUM_COLOR_OPS = 10
#: What the augmenters see: "bgr" (DRAEM's code: cv2.imread arrays given to RGB augmenters) or "rgb".
CHANNEL_ORDERS = ("bgr", "rgb")
# imgaug's pillike.equalize hands an image of fewer values (H x W x C) than this to PIL,
# and equalizes larger ones with its own numpy code.
_EQUALIZE_USE_PIL_BELOW = 64 * 64

# PIL's ImageFilter.SMOOTH kernel, the blur that ImageEnhance.Sharpness blends against.
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def _gamma(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return x.clamp_min(0.0) ** p["gamma"].view(-1, 3, 1, 1)


def _multiply_uint8(channel: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # imgaug's Multiply on uint8: a float32 table of level x factor, clipped, cast (truncated).
    return (channel * factor).clamp(0.0, 255.0).floor()


def _add_uint8(channel: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # imgaug's Add on uint8: the value rounded to an integer, the sum clipped.
    return (channel + value.round()).clamp(0.0, 255.0)


def _brightness(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    # imgaug's MultiplyAndAddToBrightness: per image a colour space, its brightness channel
    # multiplied and shifted (in the drawn order) as uint8, and the image converted back.
    out = torch.empty_like(x)
    rgb = x * 255.0
    for k, space in enumerate(colorspace.BRIGHTNESS_SPACES):
        rows = (p["space"] == k).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        channels = colorspace.encode_uint8(rgb[rows], space)
        index = colorspace.BRIGHTNESS_CHANNEL[space]
        level = channels[:, index]
        mul, add = p["mul"][rows].view(-1, 1, 1), p["add"][rows].view(-1, 1, 1)
        mul_then_add = _add_uint8(_multiply_uint8(level, mul), add)
        add_then_mul = _multiply_uint8(_add_uint8(level, add), mul)
        changed = torch.where(p["mul_first"][rows].view(-1, 1, 1), mul_then_add, add_then_mul)
        channels = torch.cat((channels[:, :index], changed.unsqueeze(1), channels[:, index + 1:]), dim=1)
        out[rows] = colorspace.decode_uint8(channels, space).to(x.dtype) / 255.0
    return out


def _sharpness(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    kernel = _SMOOTH.to(x.device, x.dtype).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    # PIL's enhancement formula: factor 0 gives the blurred image, 1 the original.
    return torch.lerp(blurred, x, p["sharp"].view(-1, 1, 1, 1))


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in turns [0, 1), saturation and value in [0, 1] (OpenCV's definition, in floats)."""
    value, argmax = x.max(dim=1)
    chroma = value - x.min(dim=1).values
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    r, g, b = x.unbind(dim=1)
    safe = chroma.clamp_min(1e-12)
    hue = torch.where(argmax == 0, (g - b) / safe, torch.where(argmax == 1, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue)).remainder(1.0)
    return hue, saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # The standard piecewise-linear inverse: channel n is V - V S clamp(min(k, 4 - k), 0, 1).
    k = (torch.stack((hue, hue, hue), dim=1) * 6.0 + torch.tensor([5.0, 3.0, 1.0], device=hue.device,
                                                                  dtype=hue.dtype).view(1, 3, 1, 1)).remainder(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * ramp)


def _hue_saturation(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    hue, saturation, value = _rgb_to_hsv(x.clamp(0.0, 1.0))
    hue = (hue + p["hue"].view(-1, 1, 1)).remainder(1.0)
    saturation = (saturation + p["sat"].view(-1, 1, 1)).clamp(0.0, 1.0)
    return _hsv_to_rgb(hue, saturation, value)


def _solarize(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    # imgaug's Solarize(0.5, ...) inverts above the threshold for half of the images.
    active = p["solarize_on"].view(-1, 1, 1, 1)
    above = x >= p["solarize_threshold"].view(-1, 1, 1, 1)
    return torch.where(active & above, 1.0 - x, x)


def _posterize(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    step = (2.0 ** (8 - p["bits"])).view(-1, 1, 1, 1)
    return torch.floor(torch.round(x.clamp(0.0, 1.0) * 255.0) / step) * step / 255.0


def _invert(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    return 1.0 - x


def _channel_histograms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grey levels (B*C, H*W) as long, their 256-bin histograms (B*C, 256))."""
    batch, channels = x.shape[:2]
    levels = torch.round(x.clamp(0.0, 1.0) * 255.0).long().reshape(batch * channels, -1)
    hist = torch.zeros(batch * channels, 256, device=x.device, dtype=torch.float32)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float32))
    return levels, hist


def _apply_lut(x: torch.Tensor, levels: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    return (lut.gather(1, levels) / 255.0).to(x.dtype).view(x.shape)


def _autocontrast(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    # PIL's ImageOps.autocontrast per channel: drop ``cutoff`` % of the pixels at each end
    # of the histogram, stretch what is left to 0-255 (a flat channel stays as it is).
    levels, hist = _channel_histograms(x)
    pixels = levels.shape[1]
    cut = torch.floor(p["cutoff"].repeat_interleave(x.shape[1]).float() * pixels / 100.0).view(-1, 1)
    below = hist.cumsum(dim=1)
    above = hist.flip(1).cumsum(dim=1).flip(1)
    index = torch.arange(256, device=x.device, dtype=torch.float32).expand_as(hist)
    low = torch.where(below > cut, index, torch.full_like(index, 256.0)).amin(dim=1, keepdim=True)
    high = torch.where(above > cut, index, torch.full_like(index, -1.0)).amax(dim=1, keepdim=True)
    # float64, as PIL computes its table in Python floats (float32 moves some levels by one).
    low, high, index = low.double(), high.double(), index.double()
    # A true division: ``255.0 / tensor`` multiplies by a reciprocal, one ulp off PIL's.
    scale = torch.full_like(low, 255.0).div((high - low).clamp_min(1.0))
    stretched = torch.floor(index * scale + -low * scale).clamp(0.0, 255.0)
    lut = torch.where(high > low, stretched, index).float()
    return _apply_lut(x, levels, lut)


def _equalize(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    # Per channel, level i maps to (step // 2 + pixels below i) // step, clipped at 255;
    # one used level, or a step of 0, leaves the channel unchanged. The step is where
    # imgaug's numpy code and PIL differ: imgaug's is (pixels - count of level 255) // 255,
    # PIL's (pixels - count of the brightest *used* level) // 255, so on an image without
    # pure white imgaug's step is larger and its levels darker. imgaug 0.4.0 runs its own
    # code on images of 4,096 values (H x W x 3) and more, PIL below.
    levels, hist = _channel_histograms(x)
    pixels = float(levels.shape[1])
    index = torch.arange(256, device=x.device).expand(hist.shape[0], 256)
    if levels.shape[1] * x.shape[1] >= _EQUALIZE_USE_PIL_BELOW:
        last = hist[:, 255:]
    else:
        brightest = torch.where(hist > 0, index, torch.zeros_like(index)).amax(dim=1, keepdim=True)
        last = hist.gather(1, brightest)
    step = torch.floor((pixels - last) / 255.0)
    below = hist.cumsum(dim=1) - hist
    lut = torch.floor((torch.floor(step / 2.0) + below) / step.clamp_min(1.0)).clamp(0.0, 255.0)
    lut = torch.where((step > 0) & ((hist > 0).sum(dim=1, keepdim=True) > 1), lut, index.float())
    return _apply_lut(x, levels, lut)


def _rotate(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    angle = p["rotate"]
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack((torch.stack((cos, -sin, zero), 1), torch.stack((sin, cos, zero), 1)), 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # Zero fill outside the rotated source, as imgaug's Affine default (constant 0) does.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_OPS = (_gamma, _brightness, _sharpness, _hue_saturation, _solarize, _posterize, _invert,
        _autocontrast, _equalize, _rotate)


def random_color_augment(images: torch.Tensor, generator: torch.Generator, num_ops: int = 3,
                         channel_order: str = "bgr") -> torch.Tensor:
    """Apply ``num_ops`` distinct random colour operations (of DRAEM's ten) to each image.

    Each image draws its operations and their order (DRAEM's ``np.random.choice(10, 3,
    replace=False)`` fed to a sequential augmenter) and its own parameters. Every
    parameter is drawn for every image whether used or not, so the number of draws from
    ``generator`` depends only on the batch size and results are reproducible.

    Args:
        images: float RGB (B, 3, H, W) in [0, 1], any device.
        generator: source of randomness (any device).
        num_ops: operations per image, 0 to 10 (DRAEM: 3).
        channel_order: the order the operations see the channels in: "bgr" as DRAEM's
            code feeds them (OpenCV's reading order; the images come back in RGB), or
            "rgb" as imgaug's augmenters expect. Only the brightness operation's colour
            spaces tell the two apart.

    Returns:
        float RGB (B, 3, H, W) in [0, 1] on the images' device.

    Raises:
        ValueError: ``num_ops`` outside [0, 10], or an unknown ``channel_order``.
    """
    if not 0 <= num_ops <= NUM_COLOR_OPS:
        raise ValueError(f"num_ops must be in [0, {NUM_COLOR_OPS}], got {num_ops}")
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
    batch = images.shape[0]
    device = images.device
    order = uniform((batch, NUM_COLOR_OPS), generator, device).argsort(dim=1)[:, :num_ops]
    spaces = len(colorspace.BRIGHTNESS_SPACES)
    params = {
        "gamma": uniform((batch, 3), generator, device, 0.5, 2.0),
        # imgaug picks the brightness colour space per image, and Sequential(random_order=True)
        # runs its Multiply and Add in either order.
        "space": torch.floor(uniform((batch,), generator, device, 0.0, spaces)).clamp(0, spaces - 1).long(),
        "mul_first": uniform((batch,), generator, device) < 0.5,
        "mul": uniform((batch,), generator, device, 0.8, 1.2),
        "add": uniform((batch,), generator, device, -30.0, 30.0),
        "sharp": uniform((batch,), generator, device, 0.0, 2.0),
        # imgaug maps its ±255 hue scale onto OpenCV's whole 180-unit circle: ±50 is ±50/255
        # of a turn (±70.6°), in turns here.
        "hue": uniform((batch,), generator, device, -50.0, 50.0) / 255.0,
        "sat": uniform((batch,), generator, device, -50.0, 50.0) / 255.0,
        "solarize_on": uniform((batch,), generator, device) < 0.5,
        "solarize_threshold": uniform((batch,), generator, device, 32.0 / 255.0, 128.0 / 255.0),
        "bits": torch.floor(uniform((batch,), generator, device, 1.0, 9.0)).clamp(1.0, 8.0),
        "cutoff": torch.floor(uniform((batch,), generator, device, 0.0, 21.0)).clamp(0.0, 20.0),
        "rotate": uniform((batch,), generator, device, -45.0, 45.0) * (math.pi / 180.0),
    }
    flip = channel_order == "bgr"
    out = images.flip(1) if flip else images
    for position in range(num_ops):
        for k, op in enumerate(_OPS):
            rows = (order[:, position] == k).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            # Running each op on its own rows only keeps the cost near num_ops passes rather
            # than ten; index_copy keeps the batch order.
            sub = {name: value[rows] for name, value in params.items()}
            out = out.index_copy(0, rows, op(out[rows], sub).clamp(0.0, 1.0))
    return out.flip(1) if flip else out

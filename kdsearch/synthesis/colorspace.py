"""OpenCV's 8-bit colour spaces in torch, for imgaug's ``MultiplyAndAddToBrightness``.

imgaug 0.4.0 changes brightness by converting a uint8 RGB image with ``cv2.cvtColor`` to
one of six spaces, editing one channel and converting back. Here each space's 8-bit
encoding follows the formulas OpenCV documents for ``cvtColor`` (values in 0-255, batched
(B, 3, H, W) tensors, any device): the caller rounds and clamps to uint8 where OpenCV
stores a uint8 image. OpenCV computes some of these in fixed point or through lookup
tables, so single values may differ from it by one grey level (:func:`encode_uint8` and
:func:`decode_uint8` store as it does: rounded, except Luv's L and HSV to RGB, which it
truncates).

- ``YCrCb``: Y = 0.299 R + 0.587 G + 0.114 B, Cr = 0.713 (R - Y) + 128, Cb = 0.564 (B - Y) + 128.
- ``YUV``: the same Y, U = 0.492 (B - Y) + 128, V = 0.877 (R - Y) + 128.
- ``HSV``: V = max, S = 255 (max - min) / max, H in degrees / 2 (0-180).
- ``HLS``: L = (max + min) / 2, S = (max - min) / (max + min) or / (2 - max - min) above
  L = 0.5 (scaled to 255), H as HSV's.
- ``Lab``: sRGB gamma, D65 XYZ; L scaled by 255/100, a and b offset by 128.
- ``Luv``: sRGB gamma, D65 XYZ; L scaled by 255/100, u mapped from [-134, 220] and v
  from [-140, 122] onto 0-255.
"""
from __future__ import annotations

import torch

__all__ = ["BRIGHTNESS_SPACES", "BRIGHTNESS_CHANNEL", "encode", "decode", "encode_uint8", "decode_uint8"]

#: imgaug 0.4.0's default ``to_colorspace`` list of ``WithBrightnessChannels``, in its order.
BRIGHTNESS_SPACES = ("YCrCb", "HSV", "HLS", "Lab", "Luv", "YUV")
#: The channel of each space that imgaug treats as brightness.
BRIGHTNESS_CHANNEL = {"YCrCb": 0, "HSV": 2, "HLS": 1, "Lab": 0, "Luv": 0, "YUV": 0}

# CIE XYZ of linear sRGB under D65, its inverse, and the D65 white point (OpenCV's values).
_RGB2XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_XYZ2RGB = ((3.240479, -1.53715, -0.498535), (-0.969256, 1.875991, 0.041556), (0.055648, -0.204043, 1.057311))
_WHITE_X, _WHITE_Z = 0.950456, 1.088754
_UN = 4.0 * _WHITE_X / (_WHITE_X + 15.0 + 3.0 * _WHITE_Z)
_VN = 9.0 / (_WHITE_X + 15.0 + 3.0 * _WHITE_Z)
_EPS_CIE = 0.008856
_KAPPA = 903.3


def _mix(matrix: tuple[tuple[float, ...], ...], x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bjhw->bihw", m, x)


def _linear(srgb: torch.Tensor) -> torch.Tensor:
    return torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055).clamp_min(0.0) ** 2.4)


def _gamma(linear: torch.Tensor) -> torch.Tensor:
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp_min(0.0) ** (1.0 / 2.4) - 0.055)


def _cie_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS_CIE, t.clamp_min(0.0) ** (1.0 / 3.0), 7.787 * t + 16.0 / 116.0)


def _hue(rgb: torch.Tensor, high: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """Hue in sixths of a turn [0, 6); the red channel wins ties, then green (OpenCV's rule)."""
    r, g, b = rgb.unbind(1)
    safe = torch.where(diff > 0, diff, torch.ones_like(diff))
    hue = torch.where(high == r, (g - b) / safe, torch.where(high == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    return torch.where(diff > 0, hue, torch.zeros_like(hue)).remainder(6.0)


def _from_hue(sixths: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    # Channel n is high - (high - low) * clamp(min(k, 4 - k), 0, 1) with k = (offset_n + h) mod 6.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=sixths.dtype, device=sixths.device).view(1, 3, 1, 1)
    k = (sixths.unsqueeze(1) + offsets).remainder(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return high.unsqueeze(1) - (high - low).unsqueeze(1) * ramp


def _encode_ycrcb(rgb: torch.Tensor, yuv: bool) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    if yuv:
        return torch.stack((y, 0.492 * (b - y) + 128.0, 0.877 * (r - y) + 128.0), 1)
    return torch.stack((y, 0.713 * (r - y) + 128.0, 0.564 * (b - y) + 128.0), 1)


def _decode_ycrcb(enc: torch.Tensor, yuv: bool) -> torch.Tensor:
    if yuv:
        y, u, v = enc[:, 0], enc[:, 1] - 128.0, enc[:, 2] - 128.0
        return torch.stack((y + 1.140 * v, y - 0.395 * u - 0.581 * v, y + 2.032 * u), 1)
    y, cr, cb = enc[:, 0], enc[:, 1] - 128.0, enc[:, 2] - 128.0
    return torch.stack((y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb), 1)


def _encode_hsv(rgb: torch.Tensor) -> torch.Tensor:
    high, low = rgb.amax(1), rgb.amin(1)
    diff = high - low
    saturation = torch.where(high > 0, 255.0 * diff / torch.where(high > 0, high, torch.ones_like(high)),
                             torch.zeros_like(high))
    return torch.stack((30.0 * _hue(rgb, high, diff), saturation, high), 1)


def _decode_hsv(enc: torch.Tensor) -> torch.Tensor:
    value = enc[:, 2]
    return _from_hue(enc[:, 0] / 30.0, value, value * (1.0 - enc[:, 1] / 255.0))


def _encode_hls(rgb: torch.Tensor) -> torch.Tensor:
    x = rgb / 255.0
    high, low = x.amax(1), x.amin(1)
    diff = high - low
    total = high + low
    lightness = total / 2.0
    denominator = torch.where(lightness < 0.5, total, 2.0 - total)
    saturation = torch.where(diff > 0, diff / torch.where(diff > 0, denominator, torch.ones_like(denominator)),
                             torch.zeros_like(diff))
    return torch.stack((30.0 * _hue(x, high, diff), 255.0 * lightness, 255.0 * saturation), 1)


def _decode_hls(enc: torch.Tensor) -> torch.Tensor:
    lightness, saturation = enc[:, 1] / 255.0, enc[:, 2] / 255.0
    high = torch.where(lightness <= 0.5, lightness * (1.0 + saturation), lightness + saturation - lightness * saturation)
    low = 2.0 * lightness - high
    return 255.0 * _from_hue(enc[:, 0] / 30.0, high, low)


def _xyz(rgb: torch.Tensor) -> torch.Tensor:
    return _mix(_RGB2XYZ, _linear(rgb / 255.0))


def _to_rgb(xyz: torch.Tensor) -> torch.Tensor:
    return 255.0 * _gamma(_mix(_XYZ2RGB, xyz).clamp(0.0, 1.0))


def _encode_lab(rgb: torch.Tensor) -> torch.Tensor:
    x, y, z = _xyz(rgb).unbind(1)
    fx, fy, fz = _cie_f(x / _WHITE_X), _cie_f(y), _cie_f(z / _WHITE_Z)
    lightness = torch.where(y > _EPS_CIE, 116.0 * fy - 16.0, _KAPPA * y)
    return torch.stack((lightness * 2.55, 500.0 * (fx - fy) + 128.0, 200.0 * (fy - fz) + 128.0), 1)


def _decode_lab(enc: torch.Tensor) -> torch.Tensor:
    lightness, a, b = enc[:, 0] / 2.55, enc[:, 1] - 128.0, enc[:, 2] - 128.0
    dark = lightness <= _EPS_CIE * _KAPPA
    y = torch.where(dark, lightness / _KAPPA, ((lightness + 16.0) / 116.0) ** 3)
    fy = torch.where(dark, 7.787 * y + 16.0 / 116.0, (lightness + 16.0) / 116.0)

    def inverse(f: torch.Tensor) -> torch.Tensor:
        return torch.where(f <= 7.787 * _EPS_CIE + 16.0 / 116.0, (f - 16.0 / 116.0) / 7.787, f ** 3)

    return _to_rgb(torch.stack((inverse(a / 500.0 + fy) * _WHITE_X, y, inverse(fy - b / 200.0) * _WHITE_Z), 1))


def _encode_luv(rgb: torch.Tensor) -> torch.Tensor:
    x, y, z = _xyz(rgb).unbind(1)
    lightness = 116.0 * _cie_f(y) - 16.0
    denominator = (x + 15.0 * y + 3.0 * z).clamp_min(torch.finfo(rgb.dtype).eps)
    u = 13.0 * lightness * (4.0 * x / denominator - _UN)
    v = 13.0 * lightness * (9.0 * y / denominator - _VN)
    return torch.stack((lightness * 2.55, (u + 134.0) * (255.0 / 354.0), (v + 140.0) * (255.0 / 262.0)), 1)


def _decode_luv(enc: torch.Tensor) -> torch.Tensor:
    lightness = enc[:, 0] / 2.55
    u, v = enc[:, 1] * (354.0 / 255.0) - 134.0, enc[:, 2] * (262.0 / 255.0) - 140.0
    y = torch.where(lightness < 8.0, lightness / _KAPPA, ((lightness + 16.0) / 116.0) ** 3)
    # With u' = u / 13L + u_n and v' likewise: X = 9 Y u' / 4 v', Z = Y (12 - 3 u' - 20 v') / 4 v',
    # written as OpenCV writes them, 1 / (4 * 13 L v') clamped to [-1/4, 1/4], so that a
    # dark pixel with a strong u or v (a brightness cut keeps u and v) stays finite.
    up = 3.0 * (u + 13.0 * _UN * lightness)
    vp = (0.25 / (v + 13.0 * _VN * lightness)).clamp(-0.25, 0.25)
    # OpenCV's 8-bit path also limits X and Z to [0, 2] before the matrix.
    x = (3.0 * y * up * vp).clamp(0.0, 2.0)
    z = (y * ((12.0 * 13.0 * lightness - up) * vp - 5.0)).clamp(0.0, 2.0)
    return _to_rgb(torch.stack((x, y, z), 1))


def encode(rgb: torch.Tensor, space: str) -> torch.Tensor:
    """RGB (B, 3, H, W) in 0-255 to ``space``'s 8-bit channels (0-255, unrounded, unclamped)."""
    if space in ("YCrCb", "YUV"):
        return _encode_ycrcb(rgb, space == "YUV")
    return {"HSV": _encode_hsv, "HLS": _encode_hls, "Lab": _encode_lab, "Luv": _encode_luv}[space](rgb)


def decode(channels: torch.Tensor, space: str) -> torch.Tensor:
    """``space``'s 8-bit channels (B, 3, H, W) back to RGB in 0-255 (unrounded, unclamped)."""
    if space in ("YCrCb", "YUV"):
        return _decode_ycrcb(channels, space == "YUV")
    return {"HSV": _decode_hsv, "HLS": _decode_hls, "Lab": _decode_lab, "Luv": _decode_luv}[space](channels)


def encode_uint8(rgb: torch.Tensor, space: str) -> torch.Tensor:
    """:func:`encode`, stored as OpenCV stores a uint8 image (as floats, 0-255).

    Rounded, except Luv's L, which OpenCV's 8-bit path truncates (an integer division of
    its interpolated table value; the small offset absorbs that table's error).
    """
    channels = encode(rgb, space)
    if space == "Luv":
        channels = torch.cat(((channels[:, :1] + 0.05).floor(), channels[:, 1:].round()), dim=1)
    else:
        channels = channels.round()
    return channels.clamp(0.0, 255.0)


def decode_uint8(channels: torch.Tensor, space: str) -> torch.Tensor:
    """:func:`decode`, stored as OpenCV stores a uint8 image (as floats, 0-255).

    OpenCV's 8-bit HSV to RGB truncates where the others round; the small offset keeps a
    value that float arithmetic leaves just below an integer on that integer.
    """
    rgb = decode(channels, space)
    stored = (rgb + 1e-3).floor() if space == "HSV" else rgb.round()
    return stored.clamp(0.0, 255.0)

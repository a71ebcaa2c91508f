"""Defect-free scenes of the built-in synthetic dataset, one renderer per category.

Each renderer turns a seeded generator into a :class:`Scene`: the unlit base image and
everything a defect painter needs (where defects may go, what shows through a hole),
plus the lighting and sensor noise that :func:`Scene.finish` applies last. Applying the
same lighting and noise to a painted base is what keeps the clean and the defective
rendering of one sample identical outside the defect. Numpy and OpenCV only, vectorised,
about 2-4 ms per 256 x 256 image.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

SIZE = 256
"""Native side length of every synthetic image, in pixels."""

YY, XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
"""Pixel row and column coordinates of a native-size image, float32."""


@dataclass(frozen=True)
class Scene:
    """A rendered defect-free sample before lighting and noise.

    Attributes:
        base: float32 (H, W, 3) RGB in [0, 255] scale, unlit.
        gain: float32 (H, W, 1) illumination multiplier.
        noise: float32 (H, W, 3) additive sensor noise.
        support: bool (H, W), where a defect may be centred (the surface of the part).
        body: bool (H, W), every pixel that belongs to the inspected part.
        backdrop: float32 (H, W, 3), what a hole through the part reveals.
    """

    base: np.ndarray
    gain: np.ndarray
    noise: np.ndarray
    support: np.ndarray
    body: np.ndarray
    backdrop: np.ndarray

    def finish(self, base: np.ndarray | None = None) -> np.ndarray:
        """Light ``base`` (default: the scene's own) and quantise it to uint8 RGB."""
        img = (self.base if base is None else base) * self.gain + self.noise
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Value noise in about [0, 1]: a ``cells`` x ``cells`` random grid, smoothly upsampled.

    Bicubic up to at most 8 px per cell, then bilinear to full size (bicubic straight to
    256 px is ten times slower and looks the same under sensor noise).
    """
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    mid = min(SIZE, 8 * (cells + 1))
    field = cv2.resize(grid, (mid, mid), interpolation=cv2.INTER_CUBIC)
    if mid != SIZE:
        field = cv2.resize(field, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return field


def fractal_noise(rng: np.random.Generator, cells: tuple[int, ...], weights: tuple[float, ...]) -> np.ndarray:
    """Sum of value-noise octaves, centred on zero."""
    total = np.zeros((SIZE, SIZE), dtype=np.float32)
    for c, w in zip(cells, weights):
        total += np.float32(w) * (smooth_noise(rng, c) - np.float32(0.5))
    return total


_NOISE_BANK: list[np.ndarray] = []


def white_noise(rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    """Unit Gaussian noise (SIZE, SIZE, channels <= 3): a random window of a fixed, seeded bank.

    Drawing 200k fresh normals per image would dominate generation time; a window at a
    random offset of one precomputed field is as good for sensor noise and deterministic.
    """
    if not _NOISE_BANK:
        bank_rng = np.random.default_rng(20240611)
        _NOISE_BANK.append(bank_rng.standard_normal((2 * SIZE, 2 * SIZE, 3), dtype=np.float32))
    oy, ox = (int(v) for v in rng.integers(0, SIZE, size=2))
    return _NOISE_BANK[0][oy:oy + SIZE, ox:ox + SIZE, :channels]


def _lighting(rng: np.random.Generator, tilt: float, mottle: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """A slight linear illumination gradient with low-frequency mottling, and sensor noise."""
    gx, gy = (float(v) for v in rng.uniform(-tilt, tilt, size=2))
    gain = 1.0 + gx * (XX / SIZE - 0.5) + gy * (YY / SIZE - 0.5)
    gain += mottle * (smooth_noise(rng, 3) - 0.5)
    noise = white_noise(rng) * np.float32(sigma)
    return gain[..., None].astype(np.float32), noise


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    """One uniform draw as a Python float (keeps float32 arrays float32 under NEP 50)."""
    return float(rng.uniform(low, high))


def _jitter_colour(
    rng: np.random.Generator, rgb: tuple[float, float, float], brightness: float, tint: float
) -> np.ndarray:
    """``rgb`` scaled by a random brightness factor and a random per-channel tint."""
    scale = rng.uniform(1 - brightness, 1 + brightness) * rng.uniform(1 - tint, 1 + tint, size=3)
    return (np.asarray(rgb, dtype=np.float64) * scale).astype(np.float32)


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


_FULL = np.ones((SIZE, SIZE), dtype=bool)
_FULL_SUPPORT = np.zeros((SIZE, SIZE), dtype=bool)
_FULL_SUPPORT[8:-8, 8:-8] = True


def render_weave(rng: np.random.Generator) -> Scene:
    """Plain-weave fabric: warp and weft threads alternating over and under.

    Normal variation: thread phase, orientation (+-4 degrees), pitch, colour, mottling.
    """
    theta = math.radians(_u(rng, -4.0, 4.0))
    pitch = _u(rng, 8.5, 10.5)
    pu, pv = _u(rng, 0.0, pitch), _u(rng, 0.0, pitch)
    c, s = math.cos(theta), math.sin(theta)
    u = (XX * c + YY * s + pu) * (1.0 / pitch)
    v = (YY * c - XX * s + pv) * (1.0 / pitch)
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    warp_on_top = ((iu + iv).astype(np.int32) & 1) == 0
    across_u, across_v = np.sin(np.pi * fu) ** 0.6, np.sin(np.pi * fv) ** 0.6
    shade = np.where(warp_on_top, across_u * (0.75 + 0.25 * across_v), across_v * (0.75 + 0.25 * across_u))
    streaks = white_noise(rng, 2)
    fibre = np.where(warp_on_top, cv2.blur(streaks[..., 0], (1, 7)), cv2.blur(streaks[..., 1], (7, 1)))
    shade = np.clip(shade + 0.10 * fibre, 0.0, 1.2)
    # Weft and gap colours are shades of the warp colour, so the image is one scalar
    # brightness field times that colour.
    warp_rgb = _jitter_colour(rng, (112.0, 128.0, 160.0), 0.10, 0.05)
    weft, gap = _u(rng, 0.88, 0.98), 0.35
    thread = np.where(warp_on_top, 1.25, 1.25 * weft)
    field = gap + (thread - gap) * shade
    field *= 1.0 + 0.12 * fractal_noise(rng, (4, 9), (1.0, 0.5))
    base = field[..., None] * warp_rgb
    gain, noise = _lighting(rng, tilt=0.16, mottle=0.10, sigma=2.0)
    backdrop = np.broadcast_to(warp_rgb * np.float32(gap * 0.55), base.shape)
    return Scene(base, gain, noise, _FULL_SUPPORT, _FULL, backdrop)


_GRAIN_PALETTE = np.array([[40, 40, 44], [70, 66, 64], [215, 212, 205], [185, 140, 130]], dtype=np.float64)


def render_stone(rng: np.random.Generator) -> Scene:
    """Polished granite tile: mottled ground mass sprinkled with dark, light and pink grains.

    Normal variation: every grain and the mottling are random; colour and lighting jitter.
    """
    mass = fractal_noise(rng, (4, 8, 16, 32, 64), (1.0, 0.6, 0.35, 0.25, 0.2))
    ground = _jitter_colour(rng, (150.0, 146.0, 140.0), 0.10, 0.04)
    canvas = np.ascontiguousarray(ground * (1.0 + 0.45 * mass)[..., None])
    n = int(rng.integers(260, 340))
    centres = rng.integers(0, SIZE, size=(n, 2))
    axes = rng.uniform(0.8, 3.2, size=(n, 2))
    angles = rng.uniform(0, 180, size=n)
    kinds = rng.choice(len(_GRAIN_PALETTE), size=n, p=[0.45, 0.25, 0.2, 0.1])
    colours = _GRAIN_PALETTE[kinds] * rng.uniform(0.85, 1.15, size=(n, 1))
    # Coordinates in quarter pixels (shift=2) so small grains come out round, not square.
    for (cx, cy), (ax, ay), ang, colour in zip((centres * 4).tolist(), np.rint(axes * 4).astype(int).tolist(),
                                                angles.tolist(), colours.tolist()):
        cv2.ellipse(canvas, (cx, cy), (ax, ay), ang, 0, 360, colour, -1, cv2.LINE_AA, 2)
    base = cv2.GaussianBlur(canvas, (0, 0), 0.6)
    gain, noise = _lighting(rng, tilt=0.16, mottle=0.12, sigma=2.5)
    backdrop = np.broadcast_to(ground * np.float32(0.25), base.shape)
    return Scene(base, gain, noise, _FULL_SUPPORT, _FULL, backdrop)


def _backdrop(rng: np.random.Generator, rgb: tuple[float, float, float]) -> np.ndarray:
    colour = _jitter_colour(rng, rgb, 0.08, 0.04)
    texture = 1.0 + 0.06 * fractal_noise(rng, (6, 24, 64), (1.0, 0.6, 0.4))
    return colour * texture[..., None]


def _composite(background: np.ndarray, part: np.ndarray, alpha: np.ndarray, shadow_shift: float) -> np.ndarray:
    """Part over background, with a soft drop shadow offset down-right."""
    m = np.float32([[1, 0, shadow_shift], [0, 1, shadow_shift]])
    shadow = cv2.GaussianBlur(cv2.warpAffine(alpha, m, (SIZE, SIZE)), (0, 0), 3.0)
    a = alpha[..., None]
    return background * (1.0 - 0.45 * shadow)[..., None] * (1.0 - a) + part * a


def render_washer(rng: np.random.Generator) -> Scene:
    """A brushed steel tab washer (ring with a key tab in its bore) on a dark mat.

    Normal variation: position (+-6 px), scale (+-5 %), rotation of the tab (+-15 degrees),
    highlight direction, metal tint, lighting.
    """
    cx, cy = SIZE / 2 + _u(rng, -6, 6), SIZE / 2 + _u(rng, -6, 6)
    scale = _u(rng, 0.95, 1.05)
    r_out, r_in = 84.0 * scale, 38.0 * scale
    dx, dy = XX - cx, YY - cy
    rr = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx)
    tab_angle = math.radians(-90.0 + _u(rng, -15, 15))
    along = dx * math.cos(tab_angle) + dy * math.sin(tab_angle)
    across = dy * math.cos(tab_angle) - dx * math.sin(tab_angle)
    ring = np.clip(r_out + 0.5 - rr, 0, 1) * np.clip(rr - r_in + 0.5, 0, 1)
    tab = np.clip(7.0 * scale + 0.5 - np.abs(across), 0, 1) * np.clip(along - (r_in - 12.0 * scale) + 0.5, 0, 1)
    tab *= np.clip(r_in + 1.5 - rr, 0, 1)
    alpha = np.clip(ring + tab, 0, 1)
    beta = math.radians(_u(rng, 20, 60))
    brushed = np.convolve(rng.standard_normal(512), np.ones(3) / 3, mode="same").astype(np.float32)
    streaks = brushed[np.clip((rr * 2).astype(np.int32), 0, 511)]
    bevel = np.clip(np.minimum(r_out - rr, rr - r_in) * 0.25, 0.0, 1.0)
    light = (0.72 + 0.22 * np.cos(2 * (phi - beta)) + 0.035 * streaks) * (0.75 + 0.25 * bevel)
    metal = _jitter_colour(rng, (190.0, 192.0, 198.0), 0.06, 0.04)
    background = _backdrop(rng, (52.0, 58.0, 66.0))
    base = _composite(background, metal * light[..., None], alpha, 3.0)
    gain, noise = _lighting(rng, tilt=0.14, mottle=0.06, sigma=2.0)
    return Scene(base, gain, noise, _erode(alpha > 0.99, 4), alpha > 0.5, background)


_SPECK_RGB = np.array([170.0, 60.0, 55.0])


def render_pill(rng: np.random.Generator) -> Scene:
    """An off-white oblong tablet with a score line and red speckles on a dark tray.

    Normal variation: position (+-6 px), rotation (+-8 degrees), size (+-5 %), speckles
    (number and place), tablet colour, lighting.
    """
    cx, cy = SIZE / 2 + _u(rng, -6, 6), SIZE / 2 + _u(rng, -6, 6)
    scale = _u(rng, 0.95, 1.05)
    half_len, radius = 92.0 * scale, 40.0 * scale
    angle = math.radians(_u(rng, -8, 8))
    dx, dy = XX - cx, YY - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    w = dy * math.cos(angle) - dx * math.sin(angle)
    du = np.maximum(np.abs(u) - (half_len - radius), 0.0)
    d = np.sqrt(du * du + w * w)
    alpha = np.clip(radius + 0.5 - d, 0, 1)
    height = np.sqrt(np.clip(1.0 - (d * (1.0 / radius)) ** 2, 0.0, 1.0))
    light = 0.70 + 0.30 * np.sqrt(height) - (0.05 / (half_len + radius)) * (u + w)
    light *= 1.0 - 0.22 * np.exp(-((u * (1 / 1.6)) ** 2))
    light *= 1.0 + 0.025 * fractal_noise(rng, (16, 64), (1.0, 1.0))
    tablet = _jitter_colour(rng, (236.0, 230.0, 216.0), 0.05, 0.03)
    part = np.ascontiguousarray(tablet * light[..., None])
    inside = np.flatnonzero((d < radius - 6).ravel())
    n_speck = int(rng.integers(6, 22))
    for idx, tone, r4 in zip(rng.choice(inside, size=n_speck, replace=False).tolist(),
                             rng.uniform(0.85, 1.15, size=n_speck).tolist(),
                             rng.integers(5, 10, size=n_speck).tolist()):
        y, x = divmod(idx, SIZE)
        colour = (_SPECK_RGB * (tone * float(light[y, x]))).tolist()
        cv2.circle(part, (x * 4, y * 4), r4, colour, -1, cv2.LINE_AA, shift=2)
    background = _backdrop(rng, (38.0, 44.0, 50.0))
    base = _composite(background, part, alpha, 4.0)
    gain, noise = _lighting(rng, tilt=0.14, mottle=0.06, sigma=2.0)
    return Scene(base, gain, noise, _erode(alpha > 0.99, 4), alpha > 0.5, background)


RENDERERS: dict[str, Callable[[np.random.Generator], Scene]] = {
    "weave": render_weave,
    "stone": render_stone,
    "washer": render_washer,
    "pill": render_pill,
}
"""Category name to scene renderer."""

"""Defect painters of the built-in synthetic dataset.

A painter takes a defect-free :class:`~kdsearch.data.synthetic_scenes.Scene` and a seeded
generator and returns the painted base image and the binary region it painted. The
region is drawn without anti-aliasing and the painted base equals the clean base outside
it, so the ground-truth mask is exactly the set of pixels the defect changed (the caller
enforces a minimum visible change inside the region).
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from kdsearch.data.synthetic_scenes import SIZE, XX, YY, Scene

Painter = Callable[[Scene, np.random.Generator], tuple[np.ndarray, np.ndarray]]

_MIN_AREA = 12
_ATTEMPTS = 25


def _pick(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random (x, y) pixel of ``mask``."""
    y, x = divmod(int(rng.choice(np.flatnonzero(mask.ravel()))), SIZE)
    return float(x), float(y)


def _blob(rng: np.random.Generator, centre: tuple[float, float], radius: float) -> np.ndarray:
    """An irregular filled blob: a circle whose radius wobbles with a few low harmonics."""
    theta = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += rng.uniform(0.0, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    pts = np.stack([centre[0] + radius * wobble * np.cos(theta), centre[1] + radius * wobble * np.sin(theta)], 1)
    canvas = np.zeros((SIZE, SIZE), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.rint(pts).astype(np.int32)], 255, cv2.LINE_8)
    return canvas > 0


def _retry(draw: Callable[[], np.ndarray]) -> np.ndarray:
    """Redraw until the region has a visible area (deterministic: same generator)."""
    region = draw()
    for _ in range(_ATTEMPTS):
        if region.sum() >= _MIN_AREA:
            return region
        region = draw()
    raise RuntimeError("synthetic defect region stayed empty; the scene has no room for it")


def paint_scratch(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A gently curved scratch, 3-5 px wide and 40-90 px long, lighter or darker."""

    def draw() -> np.ndarray:
        x0, y0 = _pick(scene.support, rng)
        length, ang, bend = rng.uniform(40, 90), rng.uniform(0, 2 * np.pi), rng.uniform(-0.35, 0.35)
        t = np.linspace(0.0, 1.0, 24)[:, None]
        direction = np.array([np.cos(ang), np.sin(ang)])
        normal = np.array([-direction[1], direction[0]])
        pts = np.array([x0, y0]) + length * t * direction + bend * length * t * (1 - t) * normal
        canvas = np.zeros((SIZE, SIZE), dtype=np.uint8)
        thickness = int(rng.choice([3, 4, 5], p=[0.4, 0.4, 0.2]))
        cv2.polylines(canvas, [np.rint(pts).astype(np.int32)], False, 255, thickness, cv2.LINE_8)
        return (canvas > 0) & scene.body

    region = _retry(draw)
    strength = rng.uniform(0.6, 0.9)
    if rng.random() < 0.5:
        target = scene.base + (255.0 - scene.base) * strength
    else:
        target = scene.base * (1.0 - 0.7 * strength)
    return np.where(region[..., None], target, scene.base).astype(np.float32), region


def paint_hole(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Missing material: a pit (textures, 12-22 px across), a through-hole or an edge chip (objects)."""
    full_frame = bool(scene.body.all())
    edge = scene.body & ~cv2.erode(scene.body.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    chip = not full_frame and rng.random() < 0.5

    def draw() -> np.ndarray:
        if chip:
            return _blob(rng, _pick(edge, rng), rng.uniform(8, 14)) & scene.body
        radius = rng.uniform(6.0, 11.0) if full_frame else rng.uniform(6.0, 10.0)
        return _blob(rng, _pick(scene.support, rng), radius) & scene.body

    region = _retry(draw)
    target = scene.backdrop
    if full_frame:  # a pit in a surface: darkest at its centre
        ys, xs = np.nonzero(region)
        cx, cy = float(xs.mean()), float(ys.mean())
        reach = max(float(np.sqrt(((xs - cx) ** 2 + (ys - cy) ** 2).max())), 1.0)
        depth = np.sqrt((XX - cx) ** 2 + (YY - cy) ** 2) * (1.0 / reach)
        target = target * np.clip(0.4 + 0.8 * depth, 0.4, 1.2)[..., None]
    return np.where(region[..., None], target, scene.base).astype(np.float32), region


_STAINS = np.array([[62, 46, 34], [28, 28, 30], [150, 84, 42], [92, 108, 62], [120, 70, 110]], dtype=np.float32)


def paint_contamination(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A foreign blob (dirt, rust, ink) of another colour, 12-26 px across."""
    region = _retry(lambda: _blob(rng, _pick(scene.support, rng), rng.uniform(6.0, 13.0)) & scene.body)
    colour = _STAINS[rng.integers(len(_STAINS))] * rng.uniform(0.85, 1.15)
    opacity = rng.uniform(0.7, 0.95)
    target = scene.base * (1.0 - opacity) + colour * opacity
    return np.where(region[..., None], target, scene.base).astype(np.float32), region


_TINTS = np.array([[1.30, 1.10, 0.62], [0.72, 0.88, 1.30], [1.28, 0.80, 0.80], [0.66, 0.66, 0.70]], dtype=np.float32)


def paint_color(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A local discolouration (yellowing, bluing, reddening, darkening), 24-44 px across."""
    region = _retry(lambda: _blob(rng, _pick(scene.support, rng), rng.uniform(12.0, 22.0)) & scene.body)
    strength = rng.uniform(0.75, 1.0)
    factor = 1.0 + strength * (_TINTS[rng.integers(len(_TINTS))] - 1.0)
    target = np.clip(scene.base * factor, 0.0, 255.0)
    return np.where(region[..., None], target, scene.base).astype(np.float32), region


PAINTERS: dict[str, Painter] = {
    "scratch": paint_scratch,
    "hole": paint_hole,
    "contamination": paint_contamination,
    "color": paint_color,
}
"""Defect type name to painter, in the order the dataset lists them."""

"""Texture sources for DRAEM-style anomalies: a built-in procedural bank or a DTD folder.

DRAEM (Zavrtanik et al., ICCV 2021, Sec. 3.3) fills its Perlin-shaped anomalies with
images from the Describable Textures Dataset (DTD; its code globs ``<root>/*/*.jpg``).
DTD is a download; so that every run works offline, the default bank is procedural:
``count`` textures of eight families (fractal Perlin colourings, stripes, rotated
checkers, Voronoi cells, speckle, marble/wood rings, plaid, granite blotches), each
drawn from its own seed so the bank depends only on (size, count, seed).
"""
from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from kdsearch.errors import UserError
from kdsearch.synthesis._common import randint
from kdsearch.synthesis.augment import random_color_augment
from kdsearch.synthesis.perlin import perlin_noise

__all__ = ["TextureBank", "procedural_texture", "texture_fingerprint", "TEXTURE_FAMILIES"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _rand(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g)


def _colors(count: int, g: torch.Generator) -> torch.Tensor:
    return _rand((count, 3), g)


def _normalise(field: torch.Tensor) -> torch.Tensor:
    low, high = field.min(), field.max()
    return (field - low) / (high - low).clamp_min(1e-6)


def _palette(t: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Map a (S, S) field in [0, 1] through a piecewise-linear colour ramp -> (3, S, S)."""
    steps = colors.shape[0] - 1
    pos = t.clamp(0.0, 1.0) * steps
    index = pos.floor().long().clamp(max=steps - 1)
    frac = (pos - index).unsqueeze(-1)
    rgb = colors[index] * (1.0 - frac) + colors[index + 1] * frac
    return rgb.permute(2, 0, 1)


def _fractal(size: int, base: int, octaves: int, g: torch.Generator, persistence: float = 0.5) -> torch.Tensor:
    field = torch.zeros(size, size)
    amplitude = 1.0
    for octave in range(octaves):
        res = base * 2 ** octave
        if res > size // 2:
            break
        field += amplitude * perlin_noise((1, size, size), (res, res), g, "cpu")[0]
        amplitude *= persistence
    return field


def _coords(size: int, angle: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated unit coordinates (u, v) of a size x size grid."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def _tex_fractal(size: int, g: torch.Generator) -> torch.Tensor:
    base = int(2 ** torch.randint(0, 3, (1,), generator=g))
    field = _normalise(_fractal(size, base, 5, g))
    return _palette(field, _colors(int(torch.randint(2, 5, (1,), generator=g)), g))


def _tex_stripes(size: int, g: torch.Generator) -> torch.Tensor:
    u, _ = _coords(size, float(_rand((1,), g)) * math.pi)
    freq = 4.0 + 28.0 * float(_rand((1,), g))
    warp = 0.15 * float(_rand((1,), g)) * _fractal(size, 2, 3, g)
    wave = 0.5 + 0.5 * torch.sin(2.0 * math.pi * (freq * u + warp))
    if float(_rand((1,), g)) < 0.5:
        wave = (wave > 0.5).float()  # hard-edged stripes
    return _palette(wave, _colors(2, g))


def _tex_checkers(size: int, g: torch.Generator) -> torch.Tensor:
    u, v = _coords(size, float(_rand((1,), g)) * math.pi / 2)
    cells = 3.0 + 13.0 * float(_rand((1,), g))
    parity = (torch.floor(u * cells) + torch.floor(v * cells)).remainder(2.0)
    shade = parity + 0.1 * _fractal(size, 8, 2, g)
    return _palette(_normalise(shade), _colors(2, g))


def _tex_voronoi(size: int, g: torch.Generator) -> torch.Tensor:
    count = int(torch.randint(8, 64, (1,), generator=g))
    points = _rand((count, 2), g)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    dist = torch.cdist(torch.stack((y, x), -1).view(-1, 2), points)  # (S*S, count)
    near = dist.topk(2, dim=1, largest=False)
    cell_colors = _colors(count, g)
    cells = cell_colors[near.indices[:, 0]].view(size, size, 3).permute(2, 0, 1)
    # Dark seams where the two nearest sites are equally close (F2 - F1 small).
    edge = ((near.values[:, 1] - near.values[:, 0]) * size / 3.0).clamp(0.0, 1.0).view(1, size, size)
    if float(_rand((1,), g)) < 0.5:
        return cells * edge
    return _palette(_normalise(near.values[:, 0].view(size, size)), _colors(3, g)) * edge


def _tex_speckle(size: int, g: torch.Generator) -> torch.Tensor:
    density = 0.01 + 0.1 * float(_rand((1,), g))
    dots = (_rand((1, 1, size, size), g) < density).float()
    radius = int(torch.randint(0, 3, (1,), generator=g))
    if radius:
        dots = F.max_pool2d(dots, 2 * radius + 1, stride=1, padding=radius)
    grain = 0.15 * _rand((size, size), g)
    return _palette(_normalise(dots[0, 0] + grain), _colors(2, g))


def _tex_rings(size: int, g: torch.Generator) -> torch.Tensor:
    turbulence = 0.5 + 2.0 * float(_rand((1,), g))
    noise = _fractal(size, 4, 4, g)
    if float(_rand((1,), g)) < 0.5:
        centre = _rand((2,), g) * 2.0 - 0.5
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        phase = torch.sqrt((y - centre[0]) ** 2 + (x - centre[1]) ** 2) * (8.0 + 16.0 * float(_rand((1,), g)))
    else:  # marble veins
        u, _ = _coords(size, float(_rand((1,), g)) * math.pi)
        phase = u * (2.0 + 6.0 * float(_rand((1,), g)))
    field = 0.5 + 0.5 * torch.sin(2.0 * math.pi * (phase + turbulence * noise))
    return _palette(field, _colors(3, g))


def _tex_plaid(size: int, g: torch.Generator) -> torch.Tensor:
    u, v = _coords(size, float(_rand((1,), g)) * math.pi / 4)
    fu = 3.0 + 20.0 * float(_rand((1,), g))
    fv = 3.0 + 20.0 * float(_rand((1,), g))
    a = (torch.sin(2.0 * math.pi * fu * u) > 0).float()
    b = (torch.sin(2.0 * math.pi * fv * v) > 0).float()
    colors = _colors(3, g)
    base = colors[0].view(3, 1, 1)
    return base * (1 - 0.5 * a - 0.5 * b) + colors[1].view(3, 1, 1) * 0.5 * a + colors[2].view(3, 1, 1) * 0.5 * b


def _tex_granite(size: int, g: torch.Generator) -> torch.Tensor:
    field = _normalise(_fractal(size, 4, 4, g))
    level = 0.35 + 0.3 * float(_rand((1,), g))
    blotch = (field > level).float()
    grain = _rand((size, size), g)
    return _palette(_normalise(0.7 * blotch + 0.3 * grain), _colors(3, g))


TEXTURE_FAMILIES = (_tex_fractal, _tex_stripes, _tex_checkers, _tex_voronoi, _tex_speckle, _tex_rings,
                    _tex_plaid, _tex_granite)


def procedural_texture(size: int, index: int, seed: int = 0) -> torch.Tensor:
    """One procedural texture, float (3, size, size) in [0, 1] on CPU.

    The family is ``index % 8``; all randomness comes from a CPU generator seeded with
    (seed, index), so a texture never depends on the others or on the device.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))
    family = TEXTURE_FAMILIES[index % len(TEXTURE_FAMILIES)]
    return family(size, g).clamp(0.0, 1.0)


def _texture_paths(root: Path) -> list[Path]:
    """Every texture image under ``root``, sorted; :class:`UserError` when there is none."""
    if not root.is_dir():
        raise UserError(f"texture root {root} is not a folder; give the DTD images folder "
                        f"or leave texture_root unset to use the built-in procedural textures")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise UserError(f"no *.jpg or *.png images under texture root {root}; point it at the DTD images "
                        f"folder or leave texture_root unset to use the built-in procedural textures")
    return paths


def check_texture_root(root: str | Path) -> None:
    """Refuse now what :meth:`TextureBank.from_directory` would refuse before reading an image:
    ``root`` is not a folder, or holds no image.

    Raises:
        UserError: naming the folder.
    """
    _texture_paths(Path(root).expanduser())


def texture_fingerprint(root: str | Path) -> str:
    """Identity of a texture folder's contents, not of its path: ``textures:<hash>``.

    Hashes every image's relative path and bytes, so the same textures copied elsewhere
    give the same trial key and a changed folder gives a new one.
    """
    root = Path(root).expanduser().resolve()
    listing = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                    for p in _texture_paths(root))
    return _content_fingerprint(str(root), listing)


@functools.lru_cache(maxsize=8)
def _content_fingerprint(root: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    # Planning keys every trial of a sweep; the bytes are read once per unchanged listing.
    digest = hashlib.sha256()
    for name, _, _ in listing:
        digest.update(name.encode())
        digest.update(hashlib.sha256((Path(root) / name).read_bytes()).digest())
    return f"textures:{digest.hexdigest()[:16]}"


def _read_rgb(path: Path, size: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot decode texture image {path}; remove it or replace the texture folder")
    # cv2.resize's default (bilinear, no antialiasing) straight to the training size, as
    # DRAEM's augment_image resizes its anomaly source; shrinking DTD's photos aliases a
    # little, as it does there.
    image = cv2.resize(image, (size, size))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class TextureBank:
    """Texture sources for DRAEM, held as a uint8 tensor (N, 3, S, S) on one device.

    Default: :meth:`procedural`, a built-in deterministic bank generated on demand at
    the requested size; :meth:`from_directory` loads DTD-style images (recursive
    ``*.jpg``/``*.jpeg``/``*.png``) with OpenCV, resized bilinearly as DRAEM's code
    does. :meth:`sample` picks random textures and, as DRAEM does, applies 3 random
    colour operations to each (:func:`~kdsearch.synthesis.augment.random_color_augment`,
    which sees the channels in DRAEM's BGR order).

    Memory: 192 KiB per texture at 256 x 256 (all of DTD's 5640 images: about 1.1 GiB);
    pass ``max_images`` to cap it.

    Args:
        textures: uint8 (N, 3, S, S), N >= 1.
        augment_ops: colour operations per sampled texture (DRAEM: 3; 0 disables).

    Raises:
        ValueError: wrong dtype or shape.
    """

    def __init__(self, textures: torch.Tensor, *, augment_ops: int = 3) -> None:
        if textures.dtype != torch.uint8 or textures.ndim != 4 or textures.shape[1] != 3 or textures.shape[0] < 1:
            raise ValueError(f"textures must be uint8 (N>=1, 3, S, S), got {textures.dtype} {tuple(textures.shape)}")
        self.textures = textures
        self.augment_ops = augment_ops

    def __len__(self) -> int:
        return self.textures.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the stored textures."""
        return self.textures.shape[2], self.textures.shape[3]

    @property
    def device(self) -> torch.device:
        """Device holding the textures (where :meth:`sample` returns them)."""
        return self.textures.device

    def to(self, device: torch.device | str) -> TextureBank:
        """The same bank on ``device`` (self when already there)."""
        if torch.device(device) == self.device:
            return self
        return TextureBank(self.textures.to(device), augment_ops=self.augment_ops)

    @classmethod
    def procedural(cls, size: int, count: int = 32, seed: int = 0, device: torch.device | str = "cpu") -> TextureBank:
        """Build the built-in bank: ``count`` textures cycling through eight families.

        Args:
            size: side length S of the square textures.
            count: number of textures (32: four variants of each family).
            seed: bank seed; (size, count, seed) fixes the bank exactly.
            device: where the bank lives.

        Raises:
            ValueError: non-positive size or count.
        """
        if size <= 0 or count <= 0:
            raise ValueError(f"size and count must be positive, got size={size}, count={count}")
        stack = torch.stack([procedural_texture(size, k, seed) for k in range(count)])
        return cls(torch.round(stack * 255.0).to(torch.uint8).to(device))

    @classmethod
    def from_directory(cls, root: str | Path, size: int, device: torch.device | str = "cpu",
                       max_images: int | None = None) -> TextureBank:
        """Load every ``*.jpg``/``*.jpeg``/``*.png`` under ``root`` (recursively), resized to S x S.

        Files are sorted by path, so the bank is the same on every machine. With
        ``max_images`` an evenly spaced subset is kept, so that DTD's category folders
        are all represented rather than only the first few.

        Args:
            root: folder such as DTD's ``images/`` (one sub-folder per category).
            size: side length S.
            device: where the bank lives.
            max_images: keep at most this many images.

        Raises:
            UserError: ``root`` is not a folder, holds no images, or an image cannot be read.
        """
        paths = _texture_paths(Path(root).expanduser())
        if max_images is not None:
            if max_images < 1:
                raise UserError(f"max_images must be at least 1, got {max_images}")
            if len(paths) > max_images:
                keep = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
                paths = [paths[i] for i in keep]
        stack = np.stack([_read_rgb(p, size) for p in paths])
        return cls(torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous().to(device))

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``batch`` textures with replacement, colour-augmented.

        Args:
            batch: number of textures B.
            generator: source of randomness (any device).

        Returns:
            float32 (B, 3, S, S) in [0, 1] on the bank's device.
        """
        index = randint(len(self), (batch,), generator, self.device)
        textures = self.textures[index].float() / 255.0
        return random_color_augment(textures, generator, self.augment_ops)

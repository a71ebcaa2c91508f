"""Reading and resizing single image and mask files with OpenCV.

Images decode as 3-channel 8-bit colour (grey and 16-bit files are converted) and are
returned RGB; masks decode as 8-bit grey and any value above zero is a defect pixel.
Images shrink with area interpolation, masks with nearest-neighbour.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kdsearch.errors import UserError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File suffixes (lower case) treated as images when listing folders."""


def _decode(path: Path, flags: int) -> np.ndarray:
    # np.fromfile + imdecode instead of imread: also works for non-ASCII paths on Windows.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}; check that the file exists and is readable") from exc
    array = cv2.imdecode(data, flags) if data.size else None
    if array is None:
        raise UserError(f"cannot decode {path}: not an image OpenCV can read; replace or remove the file")
    return array


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB.

    Raises:
        UserError: The file is missing, unreadable or not an image.
    """
    return cv2.cvtColor(_decode(Path(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


#: Share of a mask's defect pixels that may lie strictly between its two levels (anti-aliased
#: edges); beyond it the file is a grey-level map, not a ground-truth mask.
MAX_GREY_SHARE = 0.05


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a ground-truth mask file to bool (H, W), thresholded at half its range.

    Masks are two-level images (0 and 255, or 0 and 1). A pixel is a defect above half the
    mask's highest value. A file whose defect pixels are largely neither 0 nor that value
    (a soft or JPEG-damaged map) is refused: thresholding it would invent a region.

    Raises:
        UserError: The file is missing, unreadable, not an image, or not a binary mask.
    """
    path = Path(path)
    grey = _decode(path, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    level = int(grey.max())
    if level == 0:
        return np.zeros(grey.shape, dtype=bool)
    between = int(np.count_nonzero((grey > 0) & (grey < level)))
    defect = grey > level / 2
    if between > MAX_GREY_SHARE * max(1, int(np.count_nonzero(grey))):
        raise UserError(f"mask {path} is not binary: {between} of its {int(np.count_nonzero(grey))} non-zero pixels "
                        f"lie between 0 and {level}; give a two-level mask (0 and {level}) or fix the file")
    return defect


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, 3) to (size, size, 3) with area interpolation (a no-op copy-free pass if already that size)."""
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool (H, W) mask to (size, size) with nearest-neighbour sampling."""
    if mask.shape == (size, size):
        return mask
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0

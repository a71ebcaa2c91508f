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


#: How images and masks are brought to the trial's size:
#: ``opencv_area``: OpenCV area interpolation, masks nearest (kdsearch's own);
#: ``rd4ad_code``: as RD4AD's code (torchvision ``Resize`` on PIL images): PIL bilinear for
#: images, and masks resized bilinear then thresholded at half their range;
#: ``mrkd_code``: as MRKD's code: PIL Lanczos (``Image.ANTIALIAS``) for images, PIL nearest
#: for masks.
PREPROCESSINGS = ("opencv_area", "rd4ad_code", "mrkd_code")
DEFAULT_PREPROCESSING = PREPROCESSINGS[0]


def check_preprocessing(preprocessing: str) -> None:
    """Raise :class:`UserError` unless ``preprocessing`` is one of :data:`PREPROCESSINGS`."""
    if preprocessing not in PREPROCESSINGS:
        raise UserError(f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {preprocessing!r}")


def _pil_resize(array: np.ndarray, size: int, resample: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def resize_image(image: np.ndarray, size: int, preprocessing: str = DEFAULT_PREPROCESSING) -> np.ndarray:
    """Resize (H, W, 3) uint8 to (size, size, 3) as ``preprocessing`` says (returned as is at that size)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    if preprocessing == "rd4ad_code":
        return _pil_resize(image, size, Image.Resampling.BILINEAR)
    if preprocessing == "mrkd_code":
        return _pil_resize(image, size, Image.Resampling.LANCZOS)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int, preprocessing: str = DEFAULT_PREPROCESSING) -> np.ndarray:
    """Resize a bool (H, W) mask to (size, size) as ``preprocessing`` says (returned as is at that size)."""
    from PIL import Image

    if mask.shape == (size, size):
        return mask
    levels = mask.astype(np.uint8) * 255
    if preprocessing == "rd4ad_code":
        return _pil_resize(levels, size, Image.Resampling.BILINEAR) > 127.5
    if preprocessing == "mrkd_code":
        return _pil_resize(levels, size, Image.Resampling.NEAREST) > 0
    return cv2.resize(levels, (size, size), interpolation=cv2.INTER_NEAREST) > 0

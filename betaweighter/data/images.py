"""Decode one image file to a uint8 RGB tensor, or fail naming the file.

Pillow converts 16-bit greyscale (modes ``I;16*`` and ``I``) to RGB by clipping every value
above 255 to white, so a 16-bit PNG would read as a blank image; here such images are
scaled to 8 bits by their bit depth (value / 257) first. An image over Pillow's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; Pillow refuses twice the limit
and warns above it) is refused with one `DataError` naming it instead of a traceback.
`check_image` is the cheap test the labelled builders run on every target image while the
splits are built, so that a broken file stops the run before training, not after an epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import Tensor

from betaweighter.errors import CorruptDatasetError, DataError

__all__ = ["IMAGE_EXTENSIONS", "check_image", "read_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                    ".tiff")
# Modes holding more than 8 bits per pixel of greyscale: scaled, not clipped, to 8 bits.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_BAD_DATA = (OSError, ValueError, SyntaxError, EOFError)  # what Pillow raises on bad data


def read_image(path: str | os.PathLike, how: str = "") -> Tensor:
    """uint8 tensor (3, H, W), decoded by Pillow and converted to RGB.

    16-bit greyscale is scaled by its bit depth (0..65535 to 0..255; Pillow's mode ``I`` is
    read as 16-bit, the range of the formats that produce it). A missing file raises
    FileNotFoundError with the path; a truncated or undecodable one raises
    `CorruptDatasetError`: a partly decoded image is never returned, even when
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` was switched on elsewhere. An image over the
    decompression-bomb limit raises `DataError` saying how to raise the limit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}. {how}".rstrip())
    with _strict(path, how), Image.open(path) as image:
        pixels = _rgb(image)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def check_image(path: str | os.PathLike, how: str = "") -> None:
    """Fail now, naming `path`, when the image cannot be read later.

    Cheaper than decoding: PNG files are verified (every chunk and its CRC, to the end),
    JPEG files decoded at 1/8 scale (which still reads the whole compressed stream, so a
    truncated file is caught), other formats decoded in full. Raises FileNotFoundError for a
    missing file (a broken link), `CorruptDatasetError` for an empty, truncated or foreign
    file and `DataError` for one over the decompression-bomb limit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}. {how}".rstrip())
    if path.stat().st_size == 0:
        raise CorruptDatasetError(path, "the image file is empty (0 bytes)",
                                  how or "Replace it with a good copy or remove it")
    with _strict(path, how), Image.open(path) as image:
        if image.format == "PNG":
            image.verify()
        else:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()


@contextmanager
def _strict(path: Path, how: str) -> Iterator[None]:
    """Decode with truncated images refused, and every failure one error naming `path`."""
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow raises over twice the limit and warns above it: the warning arrives here
        # only where warnings are errors (``-W error``); the filters are left alone.
        raise DataError(
            f"{path}: the image is over Pillow's decompression-bomb limit of "
            f"{Image.MAX_IMAGE_PIXELS} pixels ({err}). If the data is trusted, raise the "
            "limit before building the data (in Python: `PIL.Image.MAX_IMAGE_PIXELS = "
            "None`, or a larger number), or downscale the image") from None
    except _BAD_DATA as err:
        raise CorruptDatasetError(path, f"cannot decode the image ({err})",
                                  how or "Replace it with a good copy or remove it") from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an open image, 16-bit greyscale scaled by its depth."""
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))

"""Decode one image file to a uint8 RGB tensor, or fail naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import Tensor

from betaweighter.errors import CorruptDatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                    ".tiff")


def read_image(path: str | os.PathLike, how: str = "") -> Tensor:
    """uint8 tensor (3, H, W), decoded by Pillow and converted to RGB.

    A missing file raises FileNotFoundError with the path; a truncated or undecodable one
    raises `CorruptDatasetError`: a partly decoded image is never returned, even when
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` was switched on elsewhere.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}. {how}".rstrip())
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # what Pillow raises on bad data
        raise CorruptDatasetError(path, f"cannot decode the image ({err})", how) from err
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

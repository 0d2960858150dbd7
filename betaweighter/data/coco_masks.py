"""COCO instance masks: check an annotation's ``segmentation`` and decode it to pixels.

COCO stores a mask as polygons (a list of ``[x1, y1, x2, y2, ...]`` lists, pixel
coordinates) or as run-length encoding (``{"size": [h, w], "counts": ...}``, the counts
either a list of run lengths, "uncompressed", or pycocotools' compressed string). Both
are read with pycocotools' own mask API (`pycocotools.mask.frPyObjects`, ``merge``,
``decode``), as COCO's loader does, so that training masks and the ``segm`` metric read
an annotation the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from betaweighter.errors import DataError

__all__ = ["check_segmentation", "decode_segmentation", "mask_api"]


def mask_api() -> Any:
    """``pycocotools.mask``, or an error naming the extra that installs it."""
    try:
        from pycocotools import mask
    except ImportError:
        raise ImportError("COCO instance masks need pycocotools: pip install "
                          "'betaweighter[detection]'") from None
    return mask


def check_segmentation(segmentation: Any, height: int, width: int, where: str) -> None:
    """Raise `DataError` (naming `where`) unless `segmentation` is a COCO polygon list with
    at least three points per polygon, or an RLE of this image's size."""
    if isinstance(segmentation, list):
        bad = [p for p in segmentation if not isinstance(p, list) or len(p) < 6
               or len(p) % 2 or not all(isinstance(v, (int, float)) and np.isfinite(v)
                                        for v in p)]
        if not segmentation or bad:
            raise DataError(f"{where}: 'segmentation' must list polygons [x1, y1, x2, y2, ...] "
                            "of at least three points each (or be an RLE dict); got "
                            f"{str(segmentation)[:80]}")
        return
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise DataError(f"{where}: its RLE mask is {size[1]}x{size[0]} (size [h, w] = "
                            f"{size}) but the image is {width}x{height}")
        return
    raise DataError(f"{where}: no usable 'segmentation' (polygons or RLE) in the annotation; "
                    f"got {str(segmentation)[:80]}. Instance segmentation needs a mask for "
                    "every box")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The (height, width) uint8 0/1 mask of one COCO ``segmentation`` (all its polygons
    or runs merged)."""
    mask = mask_api()
    if isinstance(segmentation, list):
        rle = mask.merge(mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": list(segmentation["size"]),
               "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask.decode(rle).astype(np.uint8)

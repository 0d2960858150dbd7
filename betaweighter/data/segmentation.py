"""Semantic-segmentation sets: Pascal VOC's layout and plain image/mask folders.

Both readers give a `SegmentationDataset`: pairs of an image file and a mask file of the
same size, whose pixel values are class ids 0..K-1, with 255 meaning "ignore" (VOC's
object boundaries and "difficult" regions). VOC's ``SegmentationClass`` PNGs are palette
images: the value of a pixel is its palette index, which is the class id (the palette only
colours it), so they are read as they are. A mask must be a palette (``P``), greyscale
(``L``) or 16-bit greyscale PNG; a colour (RGB) mask is refused, since its colours are not
class ids.

* `load_voc_segmentation`: the VOC layout, through torchvision's ``VOCSegmentation``
  (``download=False``): ``VOCdevkit/VOC<year>/ImageSets/Segmentation/<split>.txt`` lists
  ids, ``JPEGImages/<id>.jpg`` the images, ``SegmentationClass/<id>.png`` the masks.
* `load_mask_folder`: ``<root>/images/<name>.<ext>`` (any image format Pillow reads) and
  ``<root>/masks/<name>.png``, matched by file name without its extension.

Every pair is checked when the set is read (both files exist, same width and height: only
the file headers are read); mask values are checked when a mask is decoded. Each problem
raises one error naming the file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from betaweighter.data.detection import VOC_CLASSES
from betaweighter.data.images import IMAGE_EXTENSIONS, read_image
from betaweighter.errors import CorruptDatasetError, DataError, DatasetNotFoundError

__all__ = ["IGNORE_INDEX", "VOC_SEGMENTATION_CLASSES", "SegmentationDataset",
           "load_mask_folder", "load_voc_segmentation", "read_mask", "segmentation_transform"]

IGNORE_INDEX = 255
VOC_SEGMENTATION_CLASSES = ("background", *VOC_CLASSES)
_MASK_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I")


def read_mask(path: str | Path, num_classes: int) -> Tensor:
    """An (H, W) int64 tensor of class ids from a mask PNG; a value that is neither a
    class id (0..`num_classes` - 1) nor 255 raises `CorruptDatasetError`."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.asarray(image, dtype=np.int64) if mode in _MASK_MODES else None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise CorruptDatasetError(path, f"cannot decode the mask ({err})") from None
    if values is None:
        raise CorruptDatasetError(path, f"a {mode} mask holds colours, not class ids",
                                  "Save the class ids as a palette (P) or greyscale (L) PNG.")
    bad = np.unique(values[(values >= num_classes) & (values != IGNORE_INDEX) | (values < 0)])
    if bad.size:
        raise CorruptDatasetError(path, f"mask values {bad[:5].tolist()} are not class ids "
                                  f"0..{num_classes - 1} or {IGNORE_INDEX} (ignore)",
                                  "Fix the mask or the class list.")
    return torch.from_numpy(values)


class SegmentationDataset(Dataset):
    """Yields ``(image, mask)``: the image as a uint8 (3, H, W) tensor and the mask as an
    int64 (H, W) tensor (torchvision ``tv_tensors.Image`` and ``Mask``), or whatever
    `transform` makes of the pair (`segmentation_transform`). ``report`` counts images and
    anything the reader left out."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], classes: Sequence[str],
                 report: dict[str, Any] | None = None,
                 transform: Callable | None = None) -> None:
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.classes, self.transform = list(classes), transform
        self.report = {"images": len(self.pairs), **(report or {})}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_file, mask_file = self.pairs[index]
        image = tv_tensors.Image(read_image(image_file))
        mask = tv_tensors.Mask(read_mask(mask_file, len(self.classes)))
        if tuple(image.shape[1:]) != tuple(mask.shape):
            raise CorruptDatasetError(mask_file, _size_problem(mask.shape[::-1],
                                                               image.shape[:0:-1], image_file))
        return self.transform(image, mask) if self.transform else (image, mask)

    def with_transform(self, transform: Callable | None) -> SegmentationDataset:
        """The same pairs under another transform (the training and test views)."""
        other = copy.copy(self)
        other.transform = transform
        return other


def segmentation_transform(mean: Sequence[float], std: Sequence[float], *,
                           crop: int | None = None, scale_range: Sequence[float] = (0.5, 2.0),
                           hflip: bool = True, size: int | None = None) -> v2.Compose:
    """The joint transform of an (image, mask) pair, with torchvision's v2 transforms
    (masks are resized with nearest-neighbour interpolation and padded with 255).

    Training (`crop` given): the shorter side is resized to a random length in
    `scale_range` x `crop`, the pair flipped with probability 1/2 (`hflip`), then a random
    `crop` x `crop` square cut out (padded where the image is smaller), as torchvision's
    segmentation reference recipe does. Testing (`crop` None): only the image is resized,
    its shorter side to `size` (None: kept), so the prediction can be scored on the
    original mask. Either way the image ends as a normalised float tensor.
    """
    steps: list[Any] = []
    if crop is not None:
        lo, hi = (max(1, round(s * crop)) for s in scale_range)
        steps.append(v2.RandomResize(lo, max(hi, lo + 1)))
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(v2.RandomCrop(crop, pad_if_needed=True,
                                   fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if crop is None and size is not None:
        steps.insert(0, _ImageOnly(v2.Resize(size)))
    return v2.Compose(steps)


class _ImageOnly:
    """Apply a transform to the image of an (image, mask) pair, leaving the mask as it is."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform(image), mask


def load_voc_segmentation(root: str | Path, split: str = "train", year: int | str = 2012,
                          classes: Sequence[str] | None = None) -> SegmentationDataset:
    """Pascal VOC's segmentation split `split` (train, val, trainval; test for 2007)
    through torchvision's ``VOCSegmentation(root, year, split, download=False)``. `root`
    holds ``VOCdevkit/`` (torchvision's convention) or is ``VOCdevkit/VOC<year>`` itself, as
    the detection task's VOC sources are given. `classes` defaults to background plus the
    20 VOC classes."""
    from torchvision.datasets import VOCSegmentation

    root = Path(root)
    if root.parent.name == "VOCdevkit" and root.name.startswith("VOC"):
        root, year = root.parent.parent, root.name[3:]
    voc_dir = root / "VOCdevkit" / f"VOC{year}"
    how = ("Point 'root' at the folder that holds VOCdevkit/ (or at VOCdevkit/VOC20xx); "
           "nothing is downloaded.")
    try:
        voc = VOCSegmentation(str(root), year=str(year), image_set=split, download=False)
    except RuntimeError:
        raise DatasetNotFoundError("Pascal VOC segmentation set", voc_dir, how) from None
    except FileNotFoundError:
        raise DatasetNotFoundError(f"VOC segmentation split {split!r}", voc_dir / "ImageSets"
                                   / "Segmentation" / f"{split}.txt", how) from None
    except ValueError as err:
        raise DataError(f"VOC segmentation at {voc_dir}: {err}") from None
    pairs = [(Path(i), Path(m)) for i, m in zip(voc.images, voc.masks)]
    return _checked(pairs, list(classes or VOC_SEGMENTATION_CLASSES), voc_dir, {})


def load_mask_folder(root: str | Path, classes: Sequence[str]) -> SegmentationDataset:
    """A plain folder pair: ``root/images/<name>.<ext>`` and ``root/masks/<name>.png``, the
    mask values indexing `classes` (255 = ignore). Masks without an image are counted in
    the report as ``masks_without_images``."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DatasetNotFoundError("segmentation folder", folder, "A mask-folder set holds "
                                       "images/<name>.jpg and masks/<name>.png under its root.")
    images = sorted(p for p in images_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    stems = [p.stem for p in images]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise DataError(f"{images_dir}: several images share the names {twice[:3]}; each mask "
                        "masks/<name>.png must belong to one image")
    if not classes:
        raise DataError(f"{root}: a mask-folder set needs its class names (mask value k is "
                        "class k)")
    pairs = [(p, masks_dir / f"{p.stem}.png") for p in images]
    extra = sum(1 for m in masks_dir.glob("*.png") if m.stem not in set(stems))
    return _checked(pairs, list(classes), root, {"masks_without_images": extra})


def _size_problem(mask_size: Sequence[int], image_size: Sequence[int], image: Path) -> str:
    return (f"the mask is {mask_size[0]}x{mask_size[1]} pixels but its image {image} is "
            f"{image_size[0]}x{image_size[1]}")


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError) as err:
        raise CorruptDatasetError(path, f"cannot read the file as an image ({err})") from None


def _checked(pairs: list[tuple[Path, Path]], classes: list[str], source: Path,
             report: dict[str, Any]) -> SegmentationDataset:
    """Refuse an empty set, a missing file or a mask whose size is not its image's (each
    with one error naming the file); only the headers are read."""
    if not pairs:
        raise DataError(f"{source} lists no images")
    for image, mask in pairs:
        for path, what in ((image, "image"), (mask, "mask")):
            if not path.is_file():
                raise DatasetNotFoundError(f"segmentation {what}", path,
                                           f"Every image needs a mask of the same name ({source}).")
        image_size, mask_size = _size(image), _size(mask)
        if image_size != mask_size:
            raise CorruptDatasetError(mask, _size_problem(mask_size, image_size, image),
                                      "Masks must have their image's width and height.")
    return SegmentationDataset(pairs, classes, report)

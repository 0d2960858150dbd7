"""The synthetic transformations of the invariance study, each swept over its parameters.

Ericsson, Gouk and Hospedales ("Why Do Self-Supervised Models Transfer?", arXiv:2111.11398)
measure how much a backbone's features change under 18 deterministic transformations, each
applied at k parameter values (256 for the continuous ones; flips, grayscale, invert and
equalize on/off; posterize at 1..7 bits). The grids here are those of their code
(``ManualTransform`` in ``eval_synthetic_invariance.py``); the operations are torchvision's
(``torchvision.transforms.v2.functional``) on uint8 image tensors.

Two protocols share the grids and differ where the original code has quirks:

* ``"paper"`` keeps them, for comparison with published numbers: every transformation is
  applied to the image at its *original* size before the resize and centre crop, although
  translation and crop offsets are computed in pixels of the *resized* image; translation
  and scale use ``shear=1`` (one degree, not zero); shear sweeps -160..140 degrees, and
  past +-90 the tangent repeats, so -160 is the shear of 20 and the grid counts the
  moderate shears several times; rotation and affine maps use nearest-neighbour sampling (PIL's
  default); the identity parameter stays in the grid and is averaged into the score;
  ``deform`` is albumentations' elastic transform of the time (alpha 1, the listed sigma,
  a 17x17 approximate blur, and its default random affine moving three points by up to
  50 px), re-implemented with torchvision and drawn at random per image.
* ``"v2"`` fixes them: the image is first resized and centre-cropped to a ``resize`` square,
  the transformation acts there (pixel offsets mean what they say) with bilinear sampling,
  and the ``crop`` centre is kept, exactly as for the clean image; translation and scale
  use ``shear=0``; shear sweeps -60..60 degrees; identity parameters are dropped; blur uses
  a kernel of 6 sigma + 1 and sigma up to 20 px at 224 px (scaled with the crop);
  ``deform`` is one fixed smooth elastic field (seeded), its RMS displacement swept from
  0 to 10 % of the side, the same warp for every image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor

from betaweighter.errors import ConfigError

__all__ = ["DISCRETE", "PROTOCOLS", "TRANSFORMS", "Geometry", "Param", "check_transforms",
           "parameters", "transform_batch"]

TRANSFORMS = ("rotation", "translation", "scale", "shear", "resized_crop", "brightness",
              "contrast", "saturation", "hue", "blur", "sharpness", "h_flip", "v_flip",
              "grayscale", "invert", "equalize", "posterize", "deform")
#: transforms with a natural finite parameter set (k does not apply)
DISCRETE = ("h_flip", "v_flip", "grayscale", "invert", "equalize", "posterize")
PROTOCOLS = ("paper", "v2")
PAPER_K = 256
NEAREST, BILINEAR = F.InterpolationMode.NEAREST, F.InterpolationMode.BILINEAR


@dataclass(frozen=True)
class Geometry:
    """The evaluation geometry: images are resized (shorter side `resize`) and
    centre-cropped to `crop`; `seed` seeds the random and fixed elastic fields."""

    resize: int
    crop: int
    protocol: str = "v2"
    seed: int = 0


@dataclass(frozen=True)
class Param:
    """One parameter value of a transformation: its keyword values, a readable `label`,
    a scalar `level` for plots and whether it is the identity."""

    values: tuple[tuple[str, Any], ...]
    label: str
    level: float
    identity: bool = False

    def get(self, key: str) -> Any:
        return dict(self.values)[key]


def check_transforms(names: Any) -> tuple[str, ...]:
    """The transform names, checked: None means all of `TRANSFORMS`."""
    if names is None:
        return TRANSFORMS
    if isinstance(names, str):
        names = [names]
    out = []
    for name in names:
        if name not in TRANSFORMS:
            raise ConfigError(f"unknown transform {name!r}; choose from: "
                              + ", ".join(TRANSFORMS))
        out.append(name)
    if not out:
        raise ConfigError("no transform to measure: give at least one of "
                          + ", ".join(TRANSFORMS))
    return tuple(dict.fromkeys(out))


def _lin(lo: float, hi: float, k: int) -> list[float]:
    return torch.linspace(lo, hi, k).to(torch.float32).tolist()


def _p(label: str, level: float, identity: bool = False, **values: Any) -> Param:
    return Param(tuple(values.items()), label, float(level), identity)


def parameters(name: str, k: int | None, geometry: Geometry) -> list[Param]:
    """The parameter values of transformation `name` for `k` (None: the paper's 256, or
    the natural set of a discrete transform). Grids that are products (translation and
    shear: m x m with m = floor(sqrt(k)); resized crop: n^4 with n = floor(k^(1/4)))
    have that many values, as in the paper's code. The v2 protocol drops identities."""
    check_transforms([name])
    k = PAPER_K if k is None else int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    paper = geometry.protocol == "paper"
    params = _GRIDS[name](k, geometry, paper)
    return params if paper else [p for p in params if not p.identity]


def _rotation(k: int, g: Geometry, paper: bool) -> list[Param]:
    angles = torch.linspace(0, 360, k + 1)[:k].to(torch.float32).tolist()
    return [_p(f"{a:g}", a, a == 0, angle=a) for a in angles]


def _translation(k: int, g: Geometry, paper: bool) -> list[Param]:
    m = math.isqrt(k)
    space = (1 - g.crop / g.resize) / 2
    a = torch.linspace(-space, space, m + 1)[:m].to(torch.float32).tolist()
    return [_p(f"dx={x * g.resize:g};dy={y * g.resize:g}", math.hypot(x, y),
               x == 0 and y == 0, translate=(x * g.resize, y * g.resize))
            for x, y in product(a, a)]


def _scale(k: int, g: Geometry, paper: bool) -> list[Param]:
    return [_p(f"{s:g}", s, abs(s - 1) < 1e-6, scale=s) for s in _lin(1 / 4, 2, k)]


def _shear(k: int, g: Geometry, paper: bool) -> list[Param]:
    m = math.isqrt(k)
    if paper:
        a = torch.linspace(-160, 160, m + 1)[:m].to(torch.float32).tolist()
    else:
        a = _lin(-60, 60, m)
    return [_p(f"sx={x:g};sy={y:g}", math.hypot(x, y), x == 0 and y == 0, shear=(x, y))
            for x, y in product(a, a)]


def _resized_crop(k: int, g: Geometry, paper: bool) -> list[Param]:
    n = math.isqrt(math.isqrt(k))
    a = (torch.linspace(0, 0.25, n) * g.resize).to(torch.float32).tolist()
    b = (torch.linspace(0.75, 0.25, n) * g.resize).to(torch.float32).tolist()
    return [_p(f"top={t:g};left={left:g};height={h:g};width={w:g}",
               h * w / g.resize ** 2, box=(t, left, h, w))
            for t, left, h, w in product(a, a, b, b)]


def _factor(lo: float, hi: float, neutral: float, key: str) -> Callable:
    def grid(k: int, g: Geometry, paper: bool) -> list[Param]:
        return [_p(f"{v:g}", v, abs(v - neutral) < 1e-6, **{key: v}) for v in _lin(lo, hi, k)]
    return grid


def _blur(k: int, g: Geometry, paper: bool) -> list[Param]:
    top = 20.0 if paper else 20.0 * g.crop / 224
    return [_p(f"{s:g}", s, s <= 1e-5, sigma=s) for s in _lin(1e-5, top, k)]


def _switch(k: int, g: Geometry, paper: bool) -> list[Param]:
    return [_p("off", 0, True, on=False), _p("on", 1, False, on=True)]


def _posterize(k: int, g: Geometry, paper: bool) -> list[Param]:
    return [_p(str(b), b, False, bits=b) for b in range(1, 8)]


def _deform(k: int, g: Geometry, paper: bool) -> list[Param]:
    if paper:  # the code's lists are 256 long; `points` is never used by its deform
        points = torch.repeat_interleave(torch.arange(2, 10), 32).tolist()
        sigmas = torch.linspace(10, 50, 8).to(int).repeat(32).tolist()  # type: ignore[call-overload]
        return [_p(f"points={p};sigma={s}", s, False, sigma=float(s), index=i)
                for i, (p, s) in enumerate(zip(points[:k], sigmas[:k]))]
    return [_p(f"{d:g}", d, False, displacement=d) for d in _lin(0, 0.1, k + 1)[1:]]


_GRIDS: dict[str, Callable[[int, Geometry, bool], list[Param]]] = {
    "rotation": _rotation, "translation": _translation, "scale": _scale, "shear": _shear,
    "resized_crop": _resized_crop,
    "brightness": _factor(0.25, 5, 1.0, "factor"), "contrast": _factor(0.25, 5, 1.0, "factor"),
    "saturation": _factor(0.25, 5, 1.0, "factor"), "hue": _factor(-0.5, 0.5, 0.0, "factor"),
    "blur": _blur, "sharpness": _factor(1, 30, 1.0, "factor"),
    "h_flip": _switch, "v_flip": _switch, "grayscale": _switch, "invert": _switch,
    "equalize": _switch, "posterize": _posterize, "deform": _deform,
}


# -- applying one parameter to a batch ---------------------------------------------------
def transform_batch(name: str, x: Tensor, param: Param, geometry: Geometry,
                    rng: np.random.Generator | None = None) -> Tensor:
    """Apply transformation `name` at `param` to a uint8 batch (B, 3, H, W) of images of
    one size. The output may have another size (resized crop gives ``crop`` squares);
    the caller resizes and crops as its protocol says. `rng` draws the paper's random
    elastic warps."""
    paper = geometry.protocol == "paper"
    mode = NEAREST if paper else BILINEAR
    v = dict(param.values)
    shear0 = [1.0, 0.0] if paper else [0.0, 0.0]  # the paper passes shear=1 to affine
    if name == "rotation":
        return F.rotate(x, v["angle"], interpolation=mode)
    if name == "translation":
        return F.affine(x, angle=0.0, translate=list(v["translate"]), scale=1.0, shear=shear0,
                        interpolation=mode)
    if name == "scale":
        return F.affine(x, angle=0.0, translate=[0.0, 0.0], scale=v["scale"], shear=shear0,
                        interpolation=mode)
    if name == "shear":
        return F.affine(x, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=list(v["shear"]),
                        interpolation=mode)
    if name == "resized_crop":
        top, left, h, w = (int(round(t)) for t in v["box"])
        return F.resized_crop(x, top, left, max(h, 1), max(w, 1), [geometry.crop] * 2,
                              interpolation=BILINEAR, antialias=True)
    if name in _ADJUST:
        return _ADJUST[name](x, v["factor"])
    if name == "blur":
        return _gaussian_blur(x, v["sigma"], geometry)
    if name in _SWITCHES:
        return _SWITCHES[name](x) if v["on"] else x
    if name == "posterize":
        return F.posterize(x, int(v["bits"]))
    if name == "deform":
        if paper:
            return _paper_deform(x, v["sigma"], rng or np.random.default_rng(geometry.seed))
        return _fixed_deform(x, v["displacement"], geometry)
    raise ConfigError(f"unknown transform {name!r}; choose from: " + ", ".join(TRANSFORMS))


_ADJUST: dict[str, Callable[[Tensor, float], Tensor]] = {
    "brightness": F.adjust_brightness, "contrast": F.adjust_contrast,
    "saturation": F.adjust_saturation, "hue": F.adjust_hue, "sharpness": F.adjust_sharpness,
}
_SWITCHES: dict[str, Callable[[Tensor], Tensor]] = {
    "h_flip": F.horizontal_flip, "v_flip": F.vertical_flip, "invert": F.invert,
    "equalize": F.equalize,
    "grayscale": lambda x: F.rgb_to_grayscale(x, num_output_channels=3),
}


def _gaussian_blur(x: Tensor, sigma: float, g: Geometry) -> Tensor:
    if g.protocol == "paper":
        size = 1 + g.crop // 20 * 2  # the paper's kernel, fixed by the crop size
    else:
        size = min(2 * math.ceil(3 * sigma) + 1, 2 * min(x.shape[-2:]) - 1)
    return F.gaussian_blur(x, [size, size], [sigma, sigma])


def _warp(x: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Sample each pixel (u, v) of `x` at (u + dx, v + dy), displacements in pixels."""
    h, w = x.shape[-2:]
    displacement = torch.stack([dx * 2 / w, dy * 2 / h], dim=-1).unsqueeze(0)
    return F.elastic(x, displacement.to(torch.float32), interpolation=BILINEAR)


def _paper_deform(x: Tensor, sigma: float, rng: np.random.Generator) -> Tensor:
    """albumentations' ElasticTransform(alpha=1, sigma, approximate=True) with its default
    alpha_affine=50, one random draw per image: a random affine map (three points around
    the centre moved by up to 50 px; torchvision fills the border with black where
    albumentations reflected it), then a per-pixel displacement field smoothed by a
    17x17 Gaussian."""
    out = []
    for image in x:
        h, w = image.shape[-2:]
        centre = np.array([h // 2, w // 2], dtype=np.float64)  # (h, w) as (x, y), as the original
        side = min(h, w) // 3
        src = np.array([centre + side, [centre[0] + side, centre[1] - side], centre - side],
                       dtype=np.float64)
        dst = src + rng.uniform(-50, 50, size=src.shape)
        image = F.perspective(image, None, None, coefficients=_inverse_affine(src, dst),
                              interpolation=BILINEAR)
        fields = []
        for _ in range(2):
            noise = torch.from_numpy(rng.random((h, w)) * 2 - 1).float()[None, None]
            size = min(17, 2 * min(h, w) - 1) | 1
            fields.append(F.gaussian_blur(noise, [size, size], [sigma, sigma])[0, 0])
        out.append(_warp(image, fields[0], fields[1]))
    return torch.stack(out)


def _inverse_affine(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """Perspective coefficients (output pixel -> input pixel) of the affine map taking the
    three points `src` to `dst`."""
    a = np.hstack([dst, np.ones((3, 1))])
    m = np.linalg.solve(a, src)  # rows: how x_in and y_in depend on (x_out, y_out, 1)
    return [float(m[0, 0]), float(m[1, 0]), float(m[2, 0]),
            float(m[0, 1]), float(m[1, 1]), float(m[2, 1]), 0.0, 0.0]


_FIELDS: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}


def _fixed_deform(x: Tensor, displacement: float, g: Geometry) -> Tensor:
    """One smooth random field (Gaussian-smoothed uniform noise, sigma = side / 8, seeded
    by ``geometry.seed``), scaled to an RMS displacement of `displacement` x side."""
    h, w = x.shape[-2:]
    key = (h, w, g.seed)
    if key not in _FIELDS:
        gen = torch.Generator().manual_seed(g.seed)
        sigma = max(h, w) / 8
        size = min(2 * math.ceil(3 * sigma) + 1, 2 * min(h, w) - 1)
        noise = torch.rand(2, 1, h, w, generator=gen) * 2 - 1
        smooth = F.gaussian_blur(noise, [size, size], [sigma, sigma])[:, 0]
        smooth = smooth / smooth.pow(2).sum(0).mean().sqrt()
        _FIELDS[key] = (smooth[0], smooth[1])
    dx, dy = _FIELDS[key]
    side = max(h, w)
    return _warp(x, dx * displacement * side, dy * displacement * side)

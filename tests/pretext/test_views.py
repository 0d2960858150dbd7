"""The two-view augmentation pipelines: SimCLR's recipe scaled to the image size, the
normalisation undone and redone exactly, per-image randomness, the interleaved layout."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as v2
from torch.utils.data import DataLoader

import betaweighter as bw
from betaweighter.models import conv_net
from betaweighter.pretext import (
    SimCLRPretext,
    TwoViews,
    ViewPool,
    augment_pairs,
    simclr_view,
    two_view_pipelines,
)
from betaweighter.pretext.views import blur_kernel

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
OFF = {"min_scale": 1.0, "flip_prob": 0.0, "jitter_prob": 0.0, "grayscale_prob": 0.0,
       "blur_prob": 0.0, "solarize_prob": 0.0}


def _normalised(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, 3, size, size, generator=g)
    return (raw - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None], raw


def test_blur_kernel_is_a_tenth_of_the_side_and_odd():
    assert [blur_kernel(s) for s in (16, 32, 84, 96, 224)] == [3, 3, 9, 9, 23]


def test_with_every_augmentation_off_a_view_is_the_image():
    x, raw = _normalised(2)
    view = simclr_view(32, MEAN, STD, **OFF)
    torch.testing.assert_close(view(x[0]), x[0], atol=1e-5, rtol=0)
    from_raw = simclr_view(32, MEAN, STD, normalised_input=False, **OFF)
    uint8 = (raw[1] * 255).round().to(torch.uint8)
    want = (uint8.float() / 255 - torch.tensor(MEAN)[:, None, None]) / \
        torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(from_raw(uint8), want, atol=1e-5, rtol=0)


def test_views_are_random_per_image_seeded_and_sized():
    x, _ = _normalised(3)
    first, second = two_view_pipelines("simclr", 24, MEAN, STD)
    torch.manual_seed(0)
    a = augment_pairs(x, first, second)
    torch.manual_seed(0)
    b = augment_pairs(x, first, second)
    assert a.shape == (6, 3, 24, 24) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    # the layout: with deterministic "views", row 2i + v is view v of image i
    pairs = augment_pairs(x, lambda t: t, lambda t: -t)
    for i in range(3):
        assert torch.equal(pairs[2 * i], x[i]) and torch.equal(pairs[2 * i + 1], -x[i])


def _probabilities(pipeline):
    """{transform name: probability} of a view pipeline's random steps."""
    out = {}
    for t in pipeline.transforms:
        if isinstance(t, v2.RandomApply):
            out[type(t.transforms[0]).__name__] = t.p
        elif hasattr(t, "p"):
            out[type(t).__name__] = t.p
    return out


def test_simclr_is_symmetric_and_byol_asymmetric():
    a, b = two_view_pipelines("simclr", 32, MEAN, STD)
    assert a is b and _probabilities(a)["GaussianBlur"] == 0.5
    first, second = two_view_pipelines("byol", 32, MEAN, STD)
    p1, p2 = _probabilities(first), _probabilities(second)
    assert (p1["GaussianBlur"], p2["GaussianBlur"]) == (1.0, 0.1)
    assert (p1["RandomSolarize"], p2["RandomSolarize"]) == (0.0, 0.2)
    assert p1["ColorJitter"] == p2["ColorJitter"] == 0.8
    blur = next(t.transforms[0] for t in first.transforms if isinstance(t, v2.RandomApply)
                and isinstance(t.transforms[0], v2.GaussianBlur))
    assert list(blur.kernel_size) == [3, 3] and list(blur.sigma) == [0.1, 2.0]


def test_view_pool_augments_in_the_loader_and_pretexts_take_its_batches():
    x, _ = _normalised(5)
    pool = bw.data.Indexed(torch.utils.data.TensorDataset(x))
    views = TwoViews(simclr_view(32, MEAN, STD))
    batch, idx = next(iter(DataLoader(ViewPool(pool, views), batch_size=4)))
    assert batch.shape == (4, 2, 3, 32, 32) and idx.tolist() == [0, 1, 2, 3]
    pretext = SimCLRPretext(conv_net(width=4, blocks=1), hidden_dim=8, projection_dim=4)
    inputs = pretext.batch(batch).inputs  # no pipelines bound: view pairs are accepted
    assert torch.equal(inputs[2], batch[1, 0]) and torch.equal(inputs[3], batch[1, 1])
    with pytest.raises(RuntimeError, match="no augmentation pipelines"):
        pretext.batch(x)


@pytest.mark.parametrize("options,match", [
    ({"min_scale": 0.0}, "min_scale"), ({"blur_prob": 1.5}, "blur_prob"),
    ({"jitter_strength": -1}, "jitter_strength"),
])
def test_bad_view_options(options, match):
    with pytest.raises(ValueError, match=match):
        simclr_view(32, MEAN, STD, **options)
    with pytest.raises(ValueError, match="recipe"):
        two_view_pipelines("moco", 32, MEAN, STD)
    with pytest.raises(TypeError, match="unknown augmentation option 'blur'"):
        SimCLRPretext(conv_net(width=4, blocks=1), augment={"blur": 0.5})
    with pytest.raises(ValueError, match="together"):
        SimCLRPretext(conv_net(width=4, blocks=1), image_size=32)

"""The paper's transforms and data-measured statistics."""

from __future__ import annotations

import numpy as np
import torch

from betaweighter.data.transforms import channel_stats, eval_transform, train_transform


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 96, 96), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_eval_is_a_deterministic_centre_crop_without_flip():
    t = eval_transform(96, 84, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = _image()
    out = t(x)
    expected = (x[:, 6:90, 6:90].float() / 255 - 0.5) / 0.25
    assert type(out) is torch.Tensor and torch.allclose(out, expected, atol=1e-5)
    assert all(torch.equal(t(x), out) for _ in range(10))


def test_train_crops_and_flips_at_random():
    t = train_transform(20, 16, (0, 0, 0), (1, 1, 1))
    x = _image(1)[:, :20, :20]
    torch.manual_seed(0)
    outs = [t(x) for _ in range(40)]
    assert all(o.shape == (3, 16, 16) for o in outs)
    assert len({o.sum().item() for o in outs}) > 10
    windows = x.float().div(255).unfold(1, 16, 1).unfold(2, 16, 1)  # every crop position

    def is_plain_crop(o: torch.Tensor) -> bool:
        close = (windows - o[:, None, None]).abs() < 1e-5
        return bool(close.all(0).all(-1).all(-1).any())

    plain = [is_plain_crop(o) for o in outs]
    mirrored = [is_plain_crop(o.flip(-1)) for o in outs]
    assert 0 < sum(plain) < len(outs) and all(p or m for p, m in zip(plain, mirrored))


def test_resize_short_side_and_grey_input():
    t = eval_transform(72, 64, (0, 0, 0), (1, 1, 1))
    grey = torch.full((1, 72, 144), 128, dtype=torch.uint8)
    out = t(grey)
    assert out.shape == (3, 64, 64) and torch.allclose(out, torch.full_like(out, 128 / 255))


def test_channel_stats_match_direct_computation():
    images = [_image(s)[:, : 40 + s, :] for s in range(6)]  # unequal sizes
    mean, std = channel_stats(images)
    pixels = np.concatenate([i.reshape(3, -1).numpy() / 255 for i in images], axis=1)
    assert np.allclose(mean, pixels.mean(1)) and np.allclose(std, pixels.std(1))
    sub_mean, _ = channel_stats(images, max_items=3, seed=0)
    assert sub_mean == channel_stats(images, max_items=3, seed=0)[0] != mean


def test_finetune_transform_random_resized_crop_and_flip():
    import torch

    from betaweighter.data import IMAGENET_MEAN, IMAGENET_STD, finetune_transform

    t = finetune_transform(16, IMAGENET_MEAN, IMAGENET_STD)
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    torch.manual_seed(0)
    a = t(image)
    torch.manual_seed(1)
    b = t(image)
    assert a.shape == b.shape == (3, 16, 16) and not torch.equal(a, b)

"""Augmentation presets (arXiv:2111.11398's default, spatial and appearance policies)."""

from __future__ import annotations

import pytest
import torch

from betaweighter.errors import ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.experiment.factory import build_augment
from betaweighter.pretext.augment import PRESETS, Augment, augment_parts

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _normalised(images01: torch.Tensor) -> torch.Tensor:
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images01 - m) / s


def _raw(x: torch.Tensor) -> torch.Tensor:
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return x * s + m


def test_default_changes_nothing_and_draws_no_random_numbers():
    x = torch.randn(4, 3, 8, 8)
    state = torch.get_rng_state()
    augment = Augment("default", MEAN, STD)
    assert augment(x) is x and not augment
    assert torch.equal(torch.get_rng_state(), state)


def test_spatial_moves_pixels_but_keeps_colours():
    flat = _normalised(torch.tensor([0.9, 0.2, 0.5]).view(1, 3, 1, 1).expand(8, 3, 12, 12))
    torch.manual_seed(0)
    out = _raw(Augment("spatial", MEAN, STD)(flat))
    assert torch.allclose(out, _raw(flat), atol=1e-5)  # a flat image stays that colour
    edge = torch.zeros(16, 3, 12, 12)
    edge[..., 6:] = 1.0  # dark left half, bright right half
    torch.manual_seed(0)
    moved = _raw(Augment(["flip"], MEAN, STD)(_normalised(edge)))
    flipped = moved[:, 0, 0, 0] > 0.5
    assert 0 < int(flipped.sum()) < 16  # every image draws its own flip


def test_appearance_keeps_the_layout_but_changes_colours():
    edge = torch.zeros(16, 3, 12, 12)
    edge[..., 6:] = 1.0
    torch.manual_seed(0)
    out = _raw(Augment("appearance", MEAN, STD)(_normalised(edge)))
    left, right = out[..., :, :4].mean((1, 2, 3)), out[..., :, 8:].mean((1, 2, 3))
    assert (right >= left).all()  # nothing moves: the bright half stays on the right
    colour = _normalised(torch.tensor([0.9, 0.2, 0.5]).view(1, 3, 1, 1).expand(16, 3, 12, 12))
    changed = (_raw(Augment("appearance", MEAN, STD)(colour)) - _raw(colour)).abs().amax(
        (1, 2, 3))
    assert (changed > 0.05).sum() >= 8


def test_a_seeded_draw_repeats_and_keeps_shape_dtype_device():
    x = torch.randn(5, 3, 10, 10, dtype=torch.float64)
    augment = Augment("all", MEAN, STD)
    torch.manual_seed(3)
    a = augment(x)
    torch.manual_seed(3)
    assert torch.equal(a, augment(x)) and a.dtype == x.dtype and a.shape == x.shape


def test_presets_lists_and_errors():
    assert augment_parts("spatial") == ("crop", "flip") == PRESETS["spatial"]
    assert augment_parts(["blur", "crop"]) == ("blur", "crop")
    with pytest.raises(ValueError, match="unknown augmentation preset 'ventral'"):
        augment_parts("ventral")
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        augment_parts(["crop", "rotate"])
    with pytest.raises(ValueError, match="names a part twice"):
        augment_parts(["crop", "crop"])


def test_the_config_key_builds_the_policy_with_the_data_normalisation():
    class Bundle:
        mean, std = MEAN, STD

    assert build_augment(load_config(), Bundle) is None
    spatial = build_augment(load_config(overrides=["pretext.augment=spatial"]), Bundle)
    assert spatial.parts == ("crop", "flip")
    with pytest.raises(ConfigError, match="'pretext.augment': augmentation list"):
        build_augment(load_config(overrides=["pretext.augment=[blur, blur]"]), Bundle)
    with pytest.raises(ConfigError, match="'pretext.augment': expected one of 'default'"):
        load_config(overrides=["pretext.augment=dorsal"])


@pytest.mark.parametrize("pretext", ["simclr", "byol"])
def test_two_view_pretexts_refuse_a_preset_on_top_of_their_views(pretext):
    cfg = load_config(overrides=[f"pretext.name={pretext}", "pretext.augment=spatial"])
    with pytest.raises(ConfigError, match="pretext.options.augment"):
        build_augment(cfg, bundle=None)

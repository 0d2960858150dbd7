"""InputSpec: what is given wins, then the checkpoint's record, then ImageNet's defaults;
the resize keeps the protocol's 256/224 ratio with an even margin; bad values are refused."""

from __future__ import annotations

import pytest
import torch

from betaweighter.data.input_spec import InputSpec
from betaweighter.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from betaweighter.errors import ConfigError
from betaweighter.evaluate.invariance import input_config
from betaweighter.models import conv_net

TRAINED = {"image_size": 84, "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.25, 0.3]}


def test_given_then_trained_then_defaults():
    assert InputSpec.resolve() == InputSpec(224, IMAGENET_MEAN, IMAGENET_STD)
    spec = InputSpec.resolve(TRAINED)
    assert spec.to_dict() == TRAINED
    spec = InputSpec.resolve(TRAINED, image_size=32, std=(1, 1, 1))
    assert (spec.image_size, spec.mean, spec.std) == (32, (0.4, 0.4, 0.4), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("crop", [1, 7, 32, 84, 96, 224])
def test_the_default_resize_keeps_the_ratio_with_an_even_margin(crop):
    got_crop, resize = InputSpec(crop).crop_resize()
    assert got_crop == crop and (resize - crop) % 2 == 0
    assert abs(resize - crop * 256 / 224) <= 1.5  # rounded (0.5), then made even (1)
    assert InputSpec(crop, resize=crop + 3).crop_resize() == (crop, crop + 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 0}, "image_size must be an integer >= 1"),
    ({"image_size": 2.5}, "image_size must be an integer >= 1"),
    ({"image_size": 32, "resize": 16}, "need image_size <= resize"),
    ({"mean": (0.5, 0.5)}, "mean needs 3 values"),
    ({"std": "abc"}, "std needs 3 values"),
    ({"mean": (0.5, float("nan"), 0.5)}, "mean must be 3 finite numbers"),
    ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
])
def test_bad_values_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InputSpec(**kwargs)


def test_the_invariance_input_reads_the_model_record():
    model = conv_net(4, width=4, blocks=1)
    model.data_config = dict(TRAINED)
    inputs = input_config(model)
    assert (inputs.crop, inputs.resize) == InputSpec(84).crop_resize()
    assert torch.allclose(inputs.std.flatten(), torch.tensor(TRAINED["std"]))
    with pytest.raises(ConfigError, match="the evaluation input: need image_size <= resize"):
        input_config(model, resize=10)

"""The pretext registry: a task registered in a test file runs from YAML like a shipped one."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from betaweighter.errors import ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.pretext import PRETEXTS, RotationPretext, register_pretext


@register_pretext("mirrored_rotation")
class MirroredRotation(RotationPretext):
    """Rotation prediction on horizontally mirrored images: a task of a test's own."""

    def batch(self, x):
        return super().batch(torch.flip(x, dims=[-1]))


def test_the_schema_accepts_exactly_the_registered_pretexts():
    assert set(PRETEXTS.names()) == {"rotation", "rpn", "simclr", "moco", "byol", "simsiam",
                                     "swav", "mae", "mirrored_rotation"}
    with pytest.raises(ConfigError, match=r"'pretext.name': unknown pretext 'dino'; choose "
                                          r"one of .*@register_pretext"):
        load_config(overrides=["pretext.name=dino"])


def test_a_registered_pretext_runs_from_yaml(tmp_path):
    from betaweighter.experiment.trainer import Trainer

    path = tmp_path / "mirrored.yaml"
    path.write_text("pretext:\n  name: mirrored_rotation\n")
    cfg = load_config(path, TINY + [f"experiment.output_root={tmp_path}", "train.epochs=1",
                                    "pruning.enabled=false"])
    with Trainer.start(cfg) as trainer:
        summary = trainer.run()
    assert summary["pretext"] == "mirrored_rotation"
    assert isinstance(trainer.c.pretext, MirroredRotation)
    with pytest.raises(ConfigError, match=r"'model.name': pretext mae needs model.name "
                                          r"vit_tiny, got 'convnet'"):
        from betaweighter.experiment.factory import build

        build(load_config(overrides=TINY + ["pretext.name=mae"]))

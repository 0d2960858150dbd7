"""The weighting registry: one decorator names a method, and the config, the factory and
the errors follow; a method defined here (a third party's) runs from YAML."""

from __future__ import annotations

import textwrap

import pytest
import torch
from helpers import TINY
from torch import Tensor

from betaweighter import register_weighting
from betaweighter.errors import ConfigError
from betaweighter.experiment.config import load_config
from betaweighter.registry import Registry
from betaweighter.weights import WEIGHTINGS, UniformWeights, WeightRule

BUILT_IN = {"bdw", "cluster", "dw", "heuristic", "l2rw", "nn", "random", "rotnet", "weightnet"}


@register_weighting("halves")
class HalfWeights(WeightRule):
    """Weight 1 for even instances, 0.5 for odd ones: a method of a test's own."""

    def __init__(self, num_instances: int, odd: float = 0.5) -> None:
        super().__init__(num_instances)
        self.odd = float(odd)

    def _values(self, indices: Tensor | None) -> Tensor:
        rows = torch.arange(self.num_instances) if indices is None else indices.long().cpu()
        return torch.where(rows % 2 == 0, 1.0, self.odd).float()

    def weights(self, indices, losses=None, *, step=0, meta_grad=None):
        return self._values(indices)

    def mean(self, indices=None):
        return self._values(indices)

    def std(self, indices=None):
        return torch.zeros_like(self._values(indices))


def test_the_schema_accepts_exactly_the_registered_names():
    assert set(WEIGHTINGS.names()) == BUILT_IN | {"halves"}
    for name in WEIGHTINGS.names():
        assert load_config(overrides=[f"weights.method={name}"]).weights.method == name
    with pytest.raises(ConfigError, match=r"'weights.method': unknown weighting method 'bwd'"
                                          r"; choose one of .*bdw.*@register_weighting"):
        load_config(overrides=["weights.method=bwd"])
    assert WEIGHTINGS.get("rotnet").obj is UniformWeights


def test_a_method_registered_in_a_test_file_runs_from_yaml(tmp_path):
    from betaweighter.experiment.trainer import Trainer

    path = tmp_path / "halves.yaml"
    path.write_text("weights:\n  method: halves\n  options: {odd: 0.25}\n")
    tiny = [o for o in TINY if not o.startswith("weights.")]  # the YAML says the method
    cfg = load_config(path, tiny + [f"experiment.output_root={tmp_path}", "train.epochs=1",
                                    "pruning.enabled=false"])
    with Trainer.start(cfg) as trainer:
        summary = trainer.run()
    assert summary["method"] == "halves"
    assert isinstance(trainer.c.weights, HalfWeights) and trainer.c.weights.odd == 0.25
    rows = (trainer.run_dir / "weights.csv").read_text().splitlines()[1:3]
    assert [float(r.split(",")[1]) for r in rows] == [1.0, 0.25]  # index 0 and 1
    with pytest.raises(ConfigError, match=r"'weights.options.even'; HalfWeights takes: odd"):
        from betaweighter.experiment.factory import build

        build(load_config(overrides=TINY + ["weights.method=halves",
                                            "weights.options={odd: 0.5, even: 2}"]))


def test_experiment_imports_registers_a_package_of_ones_own(tmp_path, monkeypatch):
    (tmp_path / "my_weights.py").write_text(textwrap.dedent('''
        from betaweighter import register_weighting
        from betaweighter.weights import UniformWeights

        @register_weighting("mine")
        class Mine(UniformWeights):
            pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "c.yaml"
    config.write_text("experiment:\n  imports: [my_weights]\nweights:\n  method: mine\n")
    assert load_config(config).weights.method == "mine"
    config.write_text("experiment:\n  imports: [no_such_module]\n")
    with pytest.raises(ConfigError, match=r"'experiment.imports': cannot import "
                                          r"'no_such_module' \(ModuleNotFoundError"):
        load_config(config)


def test_a_name_taken_by_another_class_is_refused():
    with pytest.raises(ValueError, match="'bdw' is registered already.*BetaWeights"):
        register_weighting("bdw")(HalfWeights)
    register_weighting("halves")(HalfWeights)  # the same class again (a re-import): fine
    with pytest.raises(ValueError, match="non-empty string"):
        register_weighting(" spaced ")
    registry = Registry("widget", "x.widget")
    assert registry.names() == () and "a" not in registry

"""Devices and the processes of a run."""

from __future__ import annotations

import pytest
import torch

from betaweighter.errors import ConfigError
from betaweighter.runtime import (
    broadcast_object,
    eval_mode,
    finish_distributed,
    init_distributed,
    is_main,
    module_device,
    progress_disabled,
    resolve_device,
    world,
)


def test_resolve_device_names_and_refusals():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: unknown device 'tpu0'"):
        resolve_device("tpu0", key="train.device")
    with pytest.raises(ConfigError, match="not supported"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU is visible"):
            resolve_device("cuda:0")


def test_single_process_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == (1, 0) and is_main() and progress_disabled() is None
    assert init_distributed() is False and broadcast_object({"a": 1}) == {"a": 1}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert world() == (2, 1) and not is_main() and progress_disabled() is True


def test_module_device():
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no tensors: the CPU


def test_finish_distributed_outside_a_process_group_does_nothing():
    assert finish_distributed(3) is None  # still here: no process group, no exit


def test_eval_mode_restores_each_module_s_own_mode_even_after_an_error():
    import torch

    for training in (True, False):
        net = torch.nn.Sequential(torch.nn.BatchNorm1d(2)).train(training)
        with pytest.raises(RuntimeError, match="boom"), eval_mode(net):
            assert not net.training and not net[0].training
            raise RuntimeError("boom")
        assert net.training is training and net[0].training is training
    with eval_mode(None):  # nothing to switch
        pass

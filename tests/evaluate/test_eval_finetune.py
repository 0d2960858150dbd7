"""Fine-tuning with a new head: grid on validation, refit, test accuracy."""

import pytest
import torch
from torch.utils.data import TensorDataset

from betaweighter.data.labelled import labelled_folder_splits
from betaweighter.evaluate.finetune import FeatureClassifier, evaluate_finetune, train_classifier
from betaweighter.models import build_model


def _tensor_split(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    x[:, 0] += 2.0 * (2 * y[:, None, None] - 1)  # class = sign of the red channel
    return TensorDataset(x, y)


def test_finetuning_learns_and_chooses_the_better_learning_rate(tiny_convnet_config):
    torch.manual_seed(0)
    model = build_model(**tiny_convnet_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = evaluate_finetune(model, _tensor_split(64, 0), _tensor_split(40, 1), _tensor_split(40, 2),
                 num_classes=2, lrs=[1e-6, 0.05], weight_decays=[0.0], steps=30,
                 batch_size=16, device="cpu")
    assert [g["lr"] for g in r["grid"]] == [1e-6, 0.05]
    assert r["lr"] == 0.05 and r["grid"][1]["val_score"] >= r["grid"][0]["val_score"]
    assert r["top1"] >= 0.9 and r["n_test"] == 40
    # the caller's model is not modified
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_diverged_runs_are_recorded_not_fatal(tiny_convnet_config):
    torch.manual_seed(0)
    model = build_model(**tiny_convnet_config)
    r = evaluate_finetune(model, _tensor_split(32, 0), _tensor_split(16, 1), _tensor_split(16, 2),
                 num_classes=2, lrs=[1e30, 0.01], weight_decays=[0.0], steps=3,
                 batch_size=8, refit=False, device="cpu")
    assert r["grid"][0]["val_score"] is None and r["lr"] == 0.01
    with pytest.raises(RuntimeError, match="every fine-tuning run diverged"):
        evaluate_finetune(model, _tensor_split(32, 0), _tensor_split(16, 1), _tensor_split(16, 2),
                 num_classes=2, lrs=[1e30], weight_decays=[0.0], steps=3, batch_size=8)


def test_adam_on_image_folders(colour_folders, tiny_convnet_config):
    s = labelled_folder_splits(colour_folders["train"], colour_folders["test"],
                            colour_folders["val"], image_size=16)
    torch.manual_seed(0)
    net = train_classifier(build_model(**tiny_convnet_config), s["train_augmented"], num_classes=3,
                           lr=1e-3, weight_decay=0.0, steps=2, optimizer="adam",
                           batch_size=8, device="cpu")
    assert isinstance(net, FeatureClassifier) and not net.training
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 3)

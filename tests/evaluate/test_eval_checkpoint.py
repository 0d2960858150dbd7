"""Loading backbones from checkpoints and run directories, with clear errors."""

import pytest
import torch

from betaweighter.evaluate.checkpoint import CheckpointError, load_backbone, resolve_checkpoint
from betaweighter.models import Backbone, build_model


def test_run_directory_resolves_to_best_then_last(tmp_path, checkpoint_writer, tiny_convnet):
    run = tmp_path / "run"
    last = checkpoint_writer(run / "checkpoints" / "last.pt", tiny_convnet)
    assert resolve_checkpoint(run) == last
    best = checkpoint_writer(run / "checkpoints" / "best.pt", tiny_convnet)
    assert resolve_checkpoint(run) == best
    assert resolve_checkpoint(run / "checkpoints") == best
    assert resolve_checkpoint(best) == best


def test_load_restores_the_weights_in_eval_mode(tmp_path, checkpoint_writer, tiny_convnet):
    path = checkpoint_writer(tmp_path / "c.pt", tiny_convnet, seed=5)
    model = load_backbone(path, device="cpu")
    torch.manual_seed(5)
    reference = build_model(**tiny_convnet)
    assert isinstance(model, Backbone) and not model.training
    for (k, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_ddp_prefix_is_stripped(tmp_path, tiny_convnet):
    model = build_model(**tiny_convnet)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_config": tiny_convnet}, tmp_path / "c.pt")
    load_backbone(tmp_path / "c.pt", device="cpu")


def test_missing_file_and_empty_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(tmp_path / "nope.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"checkpoints/best\.pt"):
        load_backbone(tmp_path / "run")


def test_corrupt_file_names_the_file(tmp_path, checkpoint_writer, tiny_convnet):
    path = checkpoint_writer(tmp_path / "c.pt", tiny_convnet)
    path.write_bytes(path.read_bytes()[:200])  # truncated copy
    with pytest.raises(CheckpointError, match=r"c\.pt cannot be read"):
        load_backbone(path)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt"):
        load_backbone(tmp_path / "text.pt")


def test_mismatched_architecture_lists_the_problem(tmp_path, checkpoint_writer, tiny_convnet):
    path = checkpoint_writer(tmp_path / "c.pt", tiny_convnet)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"] = {"name": "convnet", "num_classes": 4, "width": 16, "blocks": 2}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"do not match.*shape mismatches.*model_config"):
        load_backbone(path)
    ckpt["model_config"] = {"name": "resnet18", "num_classes": 4}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_backbone(path)


def test_missing_entries_and_unknown_architecture(tmp_path, tiny_convnet):
    torch.save({"state_dict": {}}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_backbone(tmp_path / "a.pt")
    torch.save({"model": {}, "model_config": {"name": "vgg"}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="cannot build the declared architecture"):
        load_backbone(tmp_path / "b.pt")
    torch.save([1, 2], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_backbone(tmp_path / "c.pt")


def test_pickled_objects_are_refused_unless_trusted(tmp_path, tiny_convnet):
    from fractions import Fraction

    model = build_model(**tiny_convnet)
    torch.save({"model": model.state_dict(), "model_config": tiny_convnet,
                "extra": Fraction(1, 3)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="weights_only=False"):
        load_backbone(tmp_path / "c.pt")
    load_backbone(tmp_path / "c.pt", device="cpu", weights_only=False)

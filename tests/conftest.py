"""Fixtures shared by every test folder: on-disk writers and tiny model configs."""

import sys
from pathlib import Path

import pytest

# Let tests import the shared helper modules as `helpers` and `ondisk`.
sys.path.insert(0, str(Path(__file__).parent))

from ondisk import write_checkpoint, write_coco, write_image_folder, write_voc  # noqa: E402


@pytest.fixture
def colour_folders(tmp_path: Path) -> dict[str, Path]:
    """train/val/test ImageFolders with three colour classes."""
    counts = {"blue": 8, "green": 8, "red": 8}
    return {"train": write_image_folder(tmp_path / "data" / "train", counts, seed=1),
            "val": write_image_folder(tmp_path / "data" / "val", {k: 4 for k in counts}, seed=2),
            "test": write_image_folder(tmp_path / "data" / "test", {k: 5 for k in counts},
                                       seed=3)}


TINY_CONVNET = {"name": "convnet", "num_classes": 4, "width": 8, "blocks": 2}


@pytest.fixture
def image_folder_writer():
    return write_image_folder


@pytest.fixture
def checkpoint_writer():
    return write_checkpoint


@pytest.fixture
def coco_writer():
    return write_coco


@pytest.fixture
def voc_writer():
    return write_voc


@pytest.fixture
def tiny_convnet_config() -> dict:
    return dict(TINY_CONVNET)

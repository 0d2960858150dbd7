"""Checkpoint files: atomic writes, safe reads, and one clear error for every fault."""

import os
import random

import numpy as np
import pytest
import torch

from betaweighter.checkpoint import (
    read_checkpoint,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from betaweighter.errors import CheckpointError


def test_round_trip_keeps_arrays_and_numbers(tmp_path):
    state = {"a": np.arange(5, dtype=np.int32), "b": np.float32(2.5), "t": torch.ones(3),
             "nested": {"list": [np.array([1.5, 2.5]), 3]}}
    path = save_checkpoint(tmp_path / "c.pt", state)
    back = read_checkpoint(path, require=("a", "t"))
    assert back["a"].dtype == np.int32 and back["a"].tolist() == list(range(5))
    assert back["b"] == 2.5 and isinstance(back["b"], float)
    torch.testing.assert_close(back["t"], torch.ones(3))
    assert back["nested"]["list"][0].tolist() == [1.5, 2.5] and back["format_version"] == 2


def test_written_file_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c.pt", {"x": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


def test_run_directory_resolves_to_best_then_last(tmp_path, checkpoint_writer,
                                                  tiny_convnet_config):
    run = tmp_path / "run"
    last = checkpoint_writer(run / "checkpoints" / "last.pt", tiny_convnet_config)
    assert resolve_checkpoint(run) == last
    best = checkpoint_writer(run / "checkpoints" / "best.pt", tiny_convnet_config)
    assert resolve_checkpoint(run) == best
    assert resolve_checkpoint(run, "last") == last
    assert resolve_checkpoint(run / "checkpoints") == best
    assert resolve_checkpoint(best) == best


def test_missing_file_and_empty_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"checkpoints/best\.pt"):
        resolve_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", os.urandom(4096), b""])
def test_garbage_is_not_a_torch_checkpoint_and_no_unsafe_advice(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"x\.pt is not a torch checkpoint") as info:
        read_checkpoint(tmp_path / "x.pt")
    assert "weights_only" not in str(info.value)


def test_truncated_archive_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"t": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # the zip directory at the end is cut
    with pytest.raises(CheckpointError, match=r"c\.pt"):
        read_checkpoint(path)


def test_pickled_objects_are_refused(tmp_path):
    from fractions import Fraction

    torch.save({"extra": Fraction(1, 3)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="safe load refuses"):
        read_checkpoint(tmp_path / "c.pt")


def test_not_a_dict_and_missing_keys(tmp_path):
    torch.save([1, 2], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(tmp_path / "c.pt")
    torch.save({"a": 1}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match=r"lacks \['b'\]"):
        read_checkpoint(tmp_path / "d.pt", require=("a", "b"))


def test_rng_state_survives_a_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002
    random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(read_checkpoint(tmp_path / "c.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.testing.assert_close(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def _member_data_offset(path, suffix: str) -> tuple[int, int]:
    """(offset, size) in the file of the stored bytes of the archive member ending with
    `suffix` (torch stores members uncompressed)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def test_one_flipped_bit_in_a_tensor_is_caught_naming_the_member(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.randn(256)}})
    offset, size = _member_data_offset(path, "data/0")
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x04  # torch.load alone would return a wrong weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.pt is damaged: member .*data/0 fails its "
                                              "CRC check; restore it from a copy or start a "
                                              "new run") as info:
        read_checkpoint(path)
    assert "Python objects" not in str(info.value) and "\n" not in str(info.value)


def _rewrite_pickle(src, dst, change) -> None:
    """A copy of archive `src` whose data.pkl is `change(data.pkl)`, with valid CRCs."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info, change(data) if info.filename.endswith("data.pkl") else data)


def test_a_damaged_pickle_is_damaged_not_python_objects(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"t": torch.randn(10)})
    _rewrite_pickle(tmp_path / "c.pt", tmp_path / "cut.pt", lambda d: d[: len(d) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt is damaged.*start a new run") as info:
        read_checkpoint(tmp_path / "cut.pt")
    assert "Python objects" not in str(info.value) and "weights_only" not in str(info.value)


def test_a_truncated_checkpoint_says_truncated(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"t": torch.randn(1000)})
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=r"c\.pt is truncated.*restore it from a copy"):
        read_checkpoint(path)

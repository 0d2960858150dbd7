"""Image-folder pools with known domains: a CSV of path,in_domain[,kind]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import betaweighter as bw
from betaweighter.errors import DataError, DatasetNotFoundError


def _image(path: Path, colour: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (colour, 255 - colour, 40)).save(path)


POOL = ["cats/0.png", "cats/1.png", "web/a.png", "web/b.png", "noise/n.png"]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    for k, name in enumerate(POOL):
        _image(tmp_path / "pool" / name, 40 * k)
    for c, name in enumerate(["cat", "dog"]):
        for i in range(6):
            _image(tmp_path / "target" / name / f"{i}.png", 100 * c + i)
    return tmp_path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _bundle(data: Path, domains) -> bw.data.DataBundle:
    return bw.data.image_folders(data / "pool", data / "target", resize=12, crop=8,
                                 mean=(0.5,) * 3, std=(0.25,) * 3, domains=domains)


def test_listed_pool_gets_in_domain_and_kinds(data):
    csv = _csv(data / "domains.csv", "path,in_domain,kind\n"
               "cats/0.png,true,\n"
               f"{data / 'pool' / 'cats' / '1.png'},YES,cats\n"  # absolute paths work too
               "web/a.png,0,web\n"
               "web/b.png,no,web\n"
               "\n"  # blank lines are skipped
               "./noise/n.png,False,noise\n")
    b = _bundle(data, csv)
    order = [str(p.relative_to(data / "pool")) for p in b.pool.dataset.raw.files]
    assert order == sorted(POOL)  # cats/0, cats/1, noise/n, web/a, web/b
    assert b.in_domain.tolist() == [True, True, False, False, False]
    assert b.info["kinds"] == ["in-domain", "cats", "noise", "web", "web"]
    assert b.info["domains"] == str(csv)
    assert "2 in-domain in the pool" in b.summary()


def test_kind_defaults_and_bom(data):
    rows = "".join(f"{p},{'1' if p.startswith('cats') else '0'}\n" for p in POOL)
    csv = data / "domains.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + f"Path,In_Domain\n{rows}".encode())  # Excel's BOM
    b = _bundle(data, csv)
    assert b.info["kinds"] == ["in-domain"] * 2 + ["out-of-domain"] * 3


def test_relative_domains_path_is_taken_from_the_working_directory(data, monkeypatch):
    _csv(data / "domains.csv", "path,in_domain\n" + "".join(f"{p},1\n" for p in POOL))
    monkeypatch.chdir(data)
    assert _bundle(data, "domains.csv").in_domain.all()
    with pytest.raises(DatasetNotFoundError, match=r"nope\.csv.*current working directory"):
        _bundle(data, "nope.csv")


def test_domains_through_the_config(data, monkeypatch):
    from betaweighter.experiment.config import load_config
    from betaweighter.experiment.factory import build_data

    _csv(data / "d.csv", "path,in_domain,kind\n" +
         "".join(f"{p},{int(p.startswith('cats'))},{p.split('/')[0]}\n" for p in POOL))
    monkeypatch.chdir(data)
    cfg = load_config(base={"data": {"name": "folders", "pool_root": str(data / "pool"),
                                     "target_root": str(data / "target"),
                                     "options": {"domains": "d.csv", "resize": 12,
                                                 "crop": 8}}})
    b = build_data(cfg, seed=0)
    assert b.in_domain.sum() == 2 and b.info["kinds"][0] == "cats"


def test_unlisted_images_are_refused_naming_the_first(data):
    csv = _csv(data / "domains.csv", "path,in_domain\ncats/0.png,1\nweb/a.png,0\n")
    with pytest.raises(DataError, match=r"domains\.csv does not list 3 of the 5 pool images.*"
                                        r"cats/1\.png"):
        _bundle(data, csv)


@pytest.mark.parametrize(("text", "match"), [
    ("path,kind\ncats/0.png,x\n", r"line 1: the header lacks the columns \['in_domain'\]"),
    ("path,in_domain,knd\n", r"line 1: the header has unknown columns \['knd'\]"),
    ("path,in_domain\ncats/0.png,1\ncats/9.png,1\n", r"line 3: cats/9\.png is not an image"),
    ("path,in_domain\ncats/0.png,1\nweb/a.png,maybe\n", r"line 3: in_domain is 'maybe'"),
    ("path,in_domain\ncats/0.png,1\n./cats/0.png,0\n",
     r"line 3: \./cats/0\.png is listed twice \(also on line 2\)"),
    ("path,in_domain,kind\ncats/0.png,1,a\nweb/a.png,0,a\n",
     r"line 3: kind 'a' is marked out-of-domain here but in-domain on line 2"),
    ("path,in_domain,kind\ncats/0.png,1,in_domain\n", r"line 2: kind 'in_domain' cannot"),
    ("path,in_domain\ncats/0.png,1,extra\n", r"line 2: 3 fields where the header has 2"),
])
def test_a_bad_csv_is_one_error_naming_file_and_line(data, text, match):
    csv = _csv(data / "domains.csv", text)
    with pytest.raises(DataError, match=r"domains\.csv, " + match):
        _bundle(data, csv)


def test_without_domains_nothing_changes(data):
    b = _bundle(data, None)
    assert b.in_domain is None and "kinds" not in b.info and "domains" not in b.info
    assert np.bincount(bw.data.labels_of(b.target_train)).tolist() == [2, 2]

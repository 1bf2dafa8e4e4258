"""`umt-data realav`: a tiny set is the same bytes twice, keeps every source in one split, and packs."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from umt.loaders.cli import main as umt_data
from umt.loaders.making.realav import CLASSES, DEBIAN_PACKAGE, STAMPS

needs_stamps = pytest.mark.skipif(not Path(STAMPS).is_dir(), reason=f"needs the Debian package {DEBIAN_PACKAGE} "
                                  f"(`apt-get install {DEBIAN_PACKAGE}`; `make test` installs it when run as root)")
TINY = ["--train", "8", "--val", "4", "--test", "4", "--size", "32", "--frames", "4", "--talkers", "2"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("a") / "raw", tmp_path_factory.mktemp("b") / "raw"
    umt_data(["realav", str(a), *TINY])
    umt_data(["realav", str(b), *TINY])
    return a, b


@needs_stamps
def test_same_settings_same_bytes(tiny):
    a, b = tiny
    digests = _digests(a)
    assert len([p for p in digests if p.endswith(".mkv")]) == 16
    assert digests == _digests(b)


@needs_stamps
def test_every_source_in_one_split(tiny):
    a, _ = tiny
    sources = _rows(a / "sources.csv")
    split_of = {}
    for s in sources:
        assert split_of.setdefault(s["path"], s["split"]) == s["split"], s["path"]
    label_of = {s["path"]: s["label"] for s in sources}
    clips = _rows(a / "provenance.csv")
    assert {c["label"] for c in clips} == set(CLASSES)
    for clip in clips:
        for role in ("photo", "recording"):
            assert split_of[clip[role]] == clip["split"] and label_of[clip[role]] == clip["label"], (clip, role)
        for voice in clip["voices"].split():
            assert split_of[voice] == clip["split"] and label_of[voice] == "", (clip, voice)
    for label in CLASSES:   # held-out sources exist for every class, photos and recordings alike
        for role in ("photo", "recording"):
            assert {s["split"] for s in sources if s["label"] == label and s["role"] == role} == {"train", "val", "test"}


@needs_stamps
def test_packs_as_a_user_packs(tiny, tmp_path):
    a, _ = tiny
    out = tmp_path / "packed"
    umt_data(["pack", "--format", "generic", "--annotations", str(a / "realav.csv"), "--root", str(a),
              "--out", str(out), "--fps", "4", "--short-side", "32", "--gop", "4", "--workers", "1"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["classes"]) == sorted(CLASSES)
    assert {split: info["num_samples"] for split, info in manifest["splits"].items()} == {"train": 8, "val": 4, "test": 4}
    assert not manifest.get("rejected")


def test_missing_stamps_name_the_package(tmp_path, capsys):
    with pytest.raises(SystemExit):
        umt_data(["realav", str(tmp_path / "out"), "--stamps", str(tmp_path / "absent")])
    assert f"apt-get install {DEBIAN_PACKAGE}" in capsys.readouterr().err

"""Damaged shards are found and named: `umt-data verify`, and the cache build's refusal."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from umt.cache.cli import main as cache_main
from umt.loaders.cli import main as data_main

from damage import copy_set, drop, garbage, members, truncate, zero_inside

SHARD = "train-000001.tar"


def _verify(data: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        data_main(["verify", str(data), *extra])
        raise SystemExit(0)
    return exit_info.value.code, [l for l in capsys.readouterr().out.splitlines() if l.startswith("FAIL")]


def _key(data: Path, index: int) -> str:
    return members(data / SHARD)[index * 3][0].name.partition(".")[0]


def test_verify_passes_an_intact_set_and_decodes_every_member(data, capsys):
    code, fails = _verify(data, capsys, "--decode")
    assert (code, fails) == (0, [])


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "missing", "garbage"])
def test_verify_names_each_kind_of_damage(data, tmp_path, capsys, damage):
    copy = copy_set(data, tmp_path)
    key = _key(copy, 5)
    if damage == "zeroed":
        zero_inside(copy / SHARD, f"{key}.mp4")
    elif damage == "truncated":
        truncate(copy / SHARD)
    elif damage == "missing":
        drop(copy / SHARD, f"{key}.flac")
    else:
        garbage(copy / SHARD, f"{key}.flac")
    code, fails = _verify(copy, capsys, "--decode")
    assert code == 1
    assert all(SHARD in f for f in fails), fails  # only the damaged shard is named
    assert any("sha256" in f for f in fails), fails
    if damage == "truncated":
        assert any("the tar breaks off after" in f and "of 16 samples" in f for f in fails), fails
    elif damage == "missing":
        assert f"FAIL {SHARD} sample {key}: no flac member" in fails
    else:  # the member no longer decodes as its JSON says, and the sample is named
        assert any(f"sample {key}: " in f and ("mp4" in f or "flac" in f) for f in fails), fails
    code, fails = _verify(copy, capsys)  # without --decode: still named by its checksum
    assert code == 1 and any(SHARD in f and "sha256" in f for f in fails)


def test_cache_build_refuses_a_damaged_shard_then_completes_once_repaired(data, teachers, tmp_path, capsys):
    copy = copy_set(data, tmp_path)
    zero_inside(copy / SHARD, f"{_key(copy, 3)}.flac")
    out = tmp_path / "cache.zarr"
    args = ["build", "--data", str(copy), "--out", str(out), "--views", "1", "--workers", "0",
            *[f"--teacher={m}={p}" for m, p in teachers.items()]]
    with pytest.raises(SystemExit) as exit_info:
        cache_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert SHARD in err and "sha256" in err and "Traceback" not in err
    shutil.copy(data / SHARD, copy / SHARD)  # repaired
    cache_main(args)
    cache_main(["verify", str(out), "--data", str(copy)])

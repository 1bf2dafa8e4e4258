import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from umt.cache.builder import _check_room
from umt.cache.cli import main as cache_main
from umt.loaders.stored.cache_reader import FeatureTable
from umt.loaders.stored.cache_store import CacheError, open_group
from umt.engine.cli import main as train_main

from conftest import MODEL_ARGS, accelerate_launch, kill_when, synth


def _arrays(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: group[name][:] for name in ("features/video", "features/audio", "logits/video", "logits/audio",
                                              "views", "keys", "done")}


def _assert_same_cache(a, b) -> None:
    x, y = _arrays(a), _arrays(b)
    for name in x:
        assert np.array_equal(x[name], y[name]), name
    assert x["done"].all()


def _build_args(data, teachers, out, *extra, workers: int = 0) -> list[str]:
    return ["build", "--data", str(data), "--out", str(out), "--workers", str(workers),
            *[f"--teacher={m}={p}" for m, p in teachers.items()], *extra]


def test_killed_build_resumes_to_the_uninterrupted_result(teachers, tmp_path):
    data = synth(tmp_path / "data", "--train", "192", "--shard-size", "12")  # 16 shards
    args = _build_args(data, teachers, tmp_path / "killed.zarr", "--views", "6", "--batch-size", "4")
    kill_when("umt.cache.cli", args,
              lambda: zarr.open_group(str(tmp_path / "killed.zarr"), mode="r")["done"][:].sum() >= 2)
    left = zarr.open_group(str(tmp_path / "killed.zarr"), mode="r")["done"][:]
    assert 2 <= left.sum() < 16
    cache_main(args)  # resume: computes only the unfinished shards
    cache_main(_build_args(data, teachers, tmp_path / "whole.zarr", "--views", "6", "--batch-size", "4"))
    _assert_same_cache(tmp_path / "killed.zarr", tmp_path / "whole.zarr")


def test_two_process_build_equals_one_process_build(data, teachers, cache, tmp_path):
    out = tmp_path / "ddp.zarr"
    accelerate_launch("umt.cache.cli", *_build_args(data, teachers, out, "--views", "2"))
    _assert_same_cache(out, cache)


def test_a_build_whose_workers_run_the_teachers_equals_one_that_runs_them_in_the_main_process(data, teachers, cache,
                                                                                             tmp_path):
    # on a CPU the default build runs the teachers inside its two decoding workers, one thread each; the fixture's
    # --workers 0 build runs them in this process: the same features and logits, bit for bit
    cache_main(_build_args(data, teachers, tmp_path / "workers.zarr", "--views", "2", workers=2))
    _assert_same_cache(tmp_path / "workers.zarr", cache)


def _verify(cache, data, *extra) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "umt.cache.cli", "verify", str(cache), "--data", str(data),
                           "--recompute", "64", *extra], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout


def test_verify_passes_fresh_and_fails_tampered_caches(data, teachers, cache, tmp_path):
    code, out = _verify(cache, data)
    assert code == 0, out
    assert float(out.strip().splitlines()[-1].removeprefix("max_abs_diff=")) < 1e-2

    edited = tmp_path / "edited.zarr"
    shutil.copytree(cache, edited)
    zarr.open_group(str(edited), mode="r+")["features/audio"][5] += 0.5
    code, out = _verify(edited, data)
    assert code == 1 and "DIFFER" in out and float(out.splitlines()[-1].split("=")[1]) >= 0.4

    holed = tmp_path / "holed.zarr"
    shutil.copytree(cache, holed)
    shard_file = holed / "features" / "video" / "c" / "2" / "0" / "0"
    assert shard_file.is_file()
    shard_file.unlink()
    code, out = _verify(holed, data)
    assert code == 1 and "FAIL finite: NaN/Inf in features/video rows [32, 33" in out

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(teachers["video"], other / "model.pt")
    state = torch.load(other / "model.pt", weights_only=True)
    state["state_dict"]["head.bias"] += 1.0
    torch.save(state, other / "model.pt")
    code, out = _verify(cache, data, f"--teacher=video={other / 'model.pt'}", f"--teacher=audio={teachers['audio']}")
    assert code == 1 and "FAIL teacher video" in out


def test_streamed_reader_equals_in_memory_reader(cache):
    group = zarr.open_group(str(cache), mode="r")
    kinds = ("features", "logits")
    whole = FeatureTable(group, torch.device("cpu"), budget_bytes=1 << 30, kinds=kinds)
    streamed = FeatureTable(group, torch.device("cpu"), budget_bytes=0, resident_shards=2, kinds=kinds)
    assert not whole.streaming and streamed.streaming
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        rows, views = torch.randint(0, 64, (16,), generator=gen), torch.randint(0, 2, (16,), generator=gen)
        a, b = whole.gather(rows, views), streamed.gather(rows, views)
        assert all(torch.equal(a[k][m], b[k][m]) for k in kinds for m in ("video", "audio"))
    assert len(streamed._blocks) <= 2


def test_build_refuses_when_the_disk_lacks_room(tmp_path):
    with pytest.raises(CacheError, match="MiB free, the cache needs about"):
        _check_room(tmp_path / "c.zarr", 1 << 60)


def test_a_cache_of_the_older_view_draws_is_refused_with_the_fix(data, cache, tmp_path):
    """umt-cache/3 caches hold features of 5-field views cut without resizing: other crops now (and /1's
    were drawn per row by numpy's PCG64)."""
    old = tmp_path / "old.zarr"
    shutil.copytree(cache, old)
    zarr.open_group(str(old), mode="r+").attrs["format"] = "umt-cache/3"
    with pytest.raises(CacheError, match="format umt-cache/3, this umt reads umt-cache/4: .*crops were never "
                                         "resized.*rebuild it with `umt-cache build`"):
        open_group(old)
    with pytest.raises(SystemExit):  # and umt-train refuses it the same way
        train_main(["--data", str(data), "--out", str(tmp_path / "run"), "--method", "umt", "--cache", str(old),
                    "--max-steps", "1", "--no-probe", *MODEL_ARGS])


def test_rebuilding_a_finished_cache_changes_nothing(data, teachers, cache, tmp_path, capsys):
    """A rerun of a finished build (a sweep resumed) computes nothing and leaves every byte as it was."""
    copy = tmp_path / "cache.zarr"
    shutil.copytree(cache, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    cache_main(["build", "--data", str(data), "--out", str(copy), "--views", "2", "--workers", "1",
                *[f"--teacher={m}={p}" for m, p in teachers.items()]])
    assert "0 of" in capsys.readouterr().out
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before if k.name != "zarr.json")


def test_a_build_resumed_with_its_data_and_teachers_moved_computes_nothing(data, teachers, cache, tmp_path, capsys):
    """A cluster job requeued on a node that staged the same data and checkpoints under other paths resumes
    its build: the cache is identified by their fingerprints, not where they lay."""
    moved_data = shutil.copytree(data, tmp_path / "staged" / "data")
    moved = {m: shutil.copy(p, tmp_path / "staged" / f"{m}.pt") for m, p in teachers.items()}
    copy = shutil.copytree(cache, tmp_path / "cache.zarr")
    cache_main(_build_args(moved_data, moved, copy, "--views", "2"))
    assert "0 of" in capsys.readouterr().out


def test_a_build_into_a_cache_of_other_settings_is_refused(data, teachers, cache, tmp_path, capsys):
    copy = shutil.copytree(cache, tmp_path / "cache.zarr")
    with pytest.raises(SystemExit):
        cache_main(_build_args(data, teachers, copy, "--views", "3"))
    assert "exists and was built with other settings, data or teachers" in capsys.readouterr().err


def test_build_and_info_report_the_same_sizes_labelled(data, teachers, cache, capsys):
    """build announced 1.6 MiB while info said 0.9 MiB on disk: both now say which is which."""
    cache_main(_build_args(data, teachers, cache, "--views", "2"))  # the session cache's own arguments: nothing to do
    announced = re.search(r"→ ([\d.]+ [KMG]iB) of float16 features and logits uncompressed", capsys.readouterr().out)
    cache_main(["info", str(cache)])
    info = re.search(r"size +([\d.]+ [KMG]iB) of float16 features and logits uncompressed, ([\d.]+ [KMG]iB) on disk",
                     capsys.readouterr().out)
    group = open_group(cache)
    payload = sum(group[f"{kind}/{m}"].nbytes for kind in ("features", "logits") for m in ("video", "audio"))
    disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert announced.group(1) == info.group(1) == f"{payload / 1024:.1f} KiB"  # zarr's own count of those bytes
    assert info.group(2) == f"{disk / 1024:.1f} KiB" != info.group(1)

"""Image modality (ffcv): packing a two-view image table with broken inputs, and the loader's order,
rank split, resume and view parameters."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

if importlib.util.find_spec("ffcv") is None:  # not importorskip: importing ffcv sets torch's threads to 1
    pytest.skip("ffcv is not installed (make install puts it in)", allow_module_level=True)

from umt.loaders.errors import UserError  # noqa: E402
from umt.loaders.cli import main as data_main  # noqa: E402
from umt.loaders.making.image_pack import pack_images, read_image_table  # noqa: E402
from umt.loaders.loading.images import image_geometry, image_spec  # noqa: E402
from umt.loaders.loading.loader import make_loader  # noqa: E402
from umt.loaders.stored.shards import written_order  # noqa: E402
from umt.loaders.stored.views import CENTRE, ViewPolicy, ViewSpec, make_view  # noqa: E402

from umt.loaders.loading.bad import BadSamples  # noqa: E402

from conftest import kill_and_resume  # noqa: E402
from damage import copy_set, spoil_image  # noqa: E402

SIZE, CROP = 24, 16
CLASSES = ("chair", "desk", "lamp")
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 60, 230))
SAMPLES = 36  # every 6th in val: 30 train (2 of them broken) and 6 val
BROKEN = {5: ("rear", "truncated.jpg"), 7: ("front", "missing.png")}


def _draw(path: Path, label: int, view: str, index: int) -> None:
    """A non-square picture: class colour background, a view-dependent shape at a sample-dependent place."""
    size = (40 + index % 5 * 4, 30 + index % 3 * 6)
    image = Image.new("RGB", size, COLOURS[label])
    box = (4 + index % 7, 3 + index % 4, 24 + index % 7, 20 + index % 4)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if view == "front" else draw.rectangle)(box, fill=(255 - 80 * label, 255, 20 * index % 256))
    image.save(path, quality=95)


def _truncated_jpeg(path: Path) -> None:
    _draw(path, 0, "rear", 0)
    path.write_bytes(path.read_bytes()[:200])


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "pics").mkdir()
    with open(root / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "split", "front", "rear"])
        for i in range(SAMPLES):
            paths = {"front": f"pics/{i}-front.png", "rear": f"pics/{i}-rear.jpg"}
            for view, name in paths.items():
                _draw(root / name, i % 3, view, i)
            if i in BROKEN:
                view, name = BROKEN[i]
                paths[view] = f"pics/{name}"
                if name.endswith(".jpg"):
                    _truncated_jpeg(root / paths[view])
            writer.writerow([CLASSES[i % 3], "val" if i % 6 == 0 else "train", paths["front"], paths["rear"]])
    return root / "table.csv"


@pytest.fixture(scope="module")
def summary(table, tmp_path_factory) -> tuple[Path, str]:
    """The table packed through `umt-data pack-images` with two decoding processes, and what it printed."""
    out = tmp_path_factory.mktemp("beton")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        data_main(["pack-images", str(table), str(out), "--size", str(SIZE), "--workers", "2"])
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def packed(summary) -> Path:
    return summary[0]


def _kept(split: str) -> list[int]:
    """Input indices of a split's packed samples, in row order (the packer's seeded write order)."""
    kept = [i for i in range(SAMPLES) if (i % 6 == 0) == (split == "val") and i not in BROKEN]
    return [kept[j] for j in written_order(len(kept), 0)]


def _loader(packed: Path, split: str = "train", modalities=("front", "rear"), seed: int = 3, epoch: int = 0,
            train: bool = True, batch_size: int = 4, crop: int = CROP, **kw):
    return make_loader(packed, split, spec=ViewSpec(frames=1, crop=crop), modalities=list(modalities),
                       policy=ViewPolicy(seed, epoch, train), batch_size=batch_size, **kw)


def _epoch(packed: Path, **kw) -> list[dict]:
    return list(_loader(packed, **kw))


def _cat(batches: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_pack_rejects_broken_samples_and_numbers_rows(summary):
    packed, printed = summary
    manifest = json.loads((packed / "manifest.json").read_text())
    assert "rejected    2" in printed and "train       28 samples in 1 shards" in printed
    assert manifest["format"] == "umt-shards/1" and manifest["container"] == "beton"
    assert manifest["classes"] == list(CLASSES)
    assert manifest["modalities"]["front"] == {"kind": "image", "size": SIZE, "jpeg_quality": 90}
    reasons = {(r["view"], Path(r["path"]).name): r["reason"] for r in manifest["rejected"]}
    assert reasons[("front", "missing.png")] == "missing file"
    assert reasons[("rear", "truncated.jpg")].startswith("unreadable image: OSError")
    assert {s: e["num_samples"] for s, e in manifest["splits"].items()} == {"val": 6, "train": 28}
    whole = _cat(_epoch(packed, split="val", train=False, crop=SIZE, batch_size=4))
    assert whole["row"].tolist() == list(range(6))
    assert whole["label"].tolist() == [i % 3 for i in _kept("val")]
    assert whole["front"].shape == (6, SIZE, SIZE, 3) and whole["front"].dtype == torch.uint8
    # JPEG keeps the class colour in the corner, away from the shapes
    corner = whole["rear"][:, -2:, -2:].float().mean((1, 2))
    assert (corner - torch.tensor([COLOURS[i % 3] for i in _kept("val")])).abs().max() < 12


def test_same_inputs_give_identical_files_whatever_the_workers(packed, table, tmp_path):
    again = tmp_path / "again"
    views, labels, splits = read_image_table(table)
    manifest = pack_images(views, labels, splits, again, size=SIZE, workers=1, progress=False)
    assert manifest == json.loads((packed / "manifest.json").read_text())
    for entry in manifest["splits"].values():
        name = entry["shards"][0]["name"]
        assert (again / name).read_bytes() == (packed / name).read_bytes()


def test_table_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    for text, message in [("path,label\nx,1\n", ":1: the header"), ("label,split,row\n1,train,a\n", "view name 'row'"),
                          ("label,split,front\n1,train,a\n2,train\n", "bad.csv:3: 2 columns"),
                          ("label,split,front\n1,later,a\n", "bad.csv:2: unknown split 'later'")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            read_image_table(bad)


def test_training_order_views_and_pixels(packed):
    first, again, other = _epoch(packed), _epoch(packed), _epoch(packed, epoch=1)
    assert len(first) == 7 and all(b["front"].shape == (4, CROP, CROP, 3) for b in first)
    a, b = _cat(first), _cat(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(a["row"].tolist()) == list(range(28)) and a["row"].tolist() != _cat(other)["row"].tolist()
    assert a["view"].tolist() == [0] * 28 and _cat(other)["view"].tolist() == [1] * 28
    assert a["params"].dtype == torch.int32
    expected = [make_view(3, r, 0, image_spec(CROP, True), image_geometry(SIZE)).as_tuple() for r in a["row"].tolist()]
    assert a["params"].tolist() == [list(p) for p in expected]
    assert {p[5] for p in expected} == {0, 1}  # both flips occur
    whole = _cat(_epoch(packed, train=False, crop=SIZE, batch_size=8))["rear"]
    for n, (_, y0, x0, _, _, flip, _) in enumerate(a["params"].tolist()):
        view = whole[a["row"][n], y0:y0 + CROP, x0:x0 + CROP]
        assert torch.equal(a["rear"][n], view.flip(1) if flip else view)


@pytest.mark.usefixtures("ffcv_uncompiled")
def test_ranks_split_rows_and_skip_resumes(packed):
    ranks = [_cat(_epoch(packed, batch_size=7, rank=r, world=2)) for r in range(2)]
    rows = [set(r["row"].tolist()) for r in ranks]
    assert len(rows[0]) == len(rows[1]) == 14 and rows[0] | rows[1] == set(range(28))
    full = _epoch(packed)
    tail = _epoch(packed, skip=3)
    assert len(_loader(packed, modalities=["front"], skip=3)) == len(tail) == 4
    assert all(torch.equal(x[k], y[k]) for x, y in zip(full[3:], tail) for k in x)


def test_evaluation_is_sequential_with_the_centre_view(packed):
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:  # ffcv would set this process's torch threads to its worker count
        batches = _epoch(packed, split="val", train=False, batch_size=4, modalities=["front"], num_workers=2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert [len(b["row"]) for b in batches] == [4, 2] and "rear" not in batches[0]
    c = (SIZE - CROP) // 2
    assert all(b["view"].tolist() == [CENTRE] * len(b["row"]) for b in batches)
    assert _cat(batches)["params"].tolist() == [[0, c, c, CROP, CROP, 0, 0]] * 6


@pytest.fixture(scope="module")
def three_splits(table, tmp_path_factory) -> Path:
    """The table with a test split (every 6th train row moves to test), packed."""
    lines = table.read_text().splitlines()
    rows = [line.replace(",train,", ",test,") if n % 6 == 3 else line for n, line in enumerate(lines[1:], start=1)]
    (table.parent / "three_splits.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    packed = tmp_path_factory.mktemp("three") / "packed"
    data_main(["pack-images", str(table.parent / "three_splits.csv"), str(packed), "--size", str(SIZE), "--workers", "1"])
    return packed


@pytest.mark.usefixtures("ffcv_uncompiled")
def test_killed_image_training_resumes_to_the_same_final_weights(three_splits, tmp_path):
    kill_and_resume(tmp_path, ["--data", str(three_splits), "--method", "joint", "--modality", "front", "--modality",
                               "rear", "--fusion", "mlp", "--epochs", "3", "--batch-size", "2", "--width", "4",
                               "--workers", "1", "--crop", str(CROP), "--checkpoint-every", "1", "--no-probe"],
                    epochs=3, kill_at=4, env={"NUMBA_DISABLE_JIT": "1"})  # the killed run uncompiled as well


@pytest.mark.usefixtures("ffcv_uncompiled")
def test_trainer_and_cache_on_image_views(three_splits, tmp_path, capsys):
    """Two image views through umt-train and umt-cache: teachers, a verified cache, cached and online UMT."""
    from umt.cache.cli import main as cache_main
    from umt.engine.cli import main as train_main
    packed = three_splits
    common = ["--data", str(packed), "--epochs", "2", "--batch-size", "8", "--width", "4", "--workers", "1",
              "--crop", str(CROP), "--no-probe"]
    train_main([*common, "--out", str(tmp_path / "front"), "--method", "unimodal", "--modality", "front"])
    train_main([*common, "--out", str(tmp_path / "rear"), "--method", "unimodal", "--modality", "rear"])
    teachers = [f"--teacher={v}={tmp_path / v / 'model.pt'}" for v in ("front", "rear")]
    train_main([*common, "--out", str(tmp_path / "umt"), "--method", "umt", "--modality", "front", "--modality", "rear",
                "--fusion", "mlp", *teachers])
    results = json.loads((tmp_path / "umt" / "results.json").read_text())
    train_size = json.loads((packed / "manifest.json").read_text())["splits"]["train"]["num_samples"]
    assert results["modalities"] == ["front", "rear"] and results["steps"] == 2 * (train_size // 8)
    assert 0.0 <= results["test_top1"] <= 1.0
    cache = str(tmp_path / "cache.zarr")
    cache_main(["build", "--data", str(packed), "--out", cache, "--views", "2", "--batch-size", "8", *teachers])
    capsys.readouterr()
    cache_main(["verify", cache, "--data", str(packed), "--recompute", "6"])
    assert "max_abs_diff=" in capsys.readouterr().out.strip().splitlines()[-1]
    train_main([*common, "--out", str(tmp_path / "cached"), "--method", "umt", "--modality", "front",
                "--modality", "rear", "--cache", cache])
    cached = json.loads((tmp_path / "cached" / "results.json").read_text())
    assert cached["steps"] == results["steps"]


def test_an_error_in_ffcvs_decoding_thread_fails_the_epoch_instead_of_hanging(packed, ffcv_uncompiled, monkeypatch):
    import threading
    from umt.loaders.loading import images

    def broken(*_):
        raise ValueError("a failing operation")

    monkeypatch.setattr(images, "_crop_flip", broken)  # called from ffcv's thread (uncompiled: looked up per call)
    monkeypatch.setattr(threading, "excepthook", lambda _: None)  # the thread's traceback: not this test's output
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(UserError, _epoch, packed)), daemon=True)
    reader.start()
    reader.join(60)
    assert outcome and "decoding thread stopped" in str(outcome[0].value), "the epoch hung or did not fail"


def test_a_process_pinned_to_one_cpu_exits_after_packing_and_loading_images(table, tmp_path):
    """numba's TBB threading layer (found through OpenCV's libtbb) deadlocked at interpreter exit in a
    process pinned to one CPU (as `taskset -c 0`, or a one-CPU job, runs it): it must exit."""
    import subprocess
    import sys
    script = (f"import os; os.sched_setaffinity(0, {{0}}); import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "import test_images as t; from pathlib import Path; from umt.loaders.cli import main; "
              f"main(['pack-images', {str(table)!r}, {str(tmp_path / 'out')!r}, '--size', '24', '--workers', '1']); "
              f"print(sum(len(b['row']) for b in t._epoch(Path({str(tmp_path / 'out')!r}), num_workers=1)))")
    # a deadlock never exits, so a long timeout still catches one; 60 s once ran out on a busy machine (the suite
    # beside a three-process sweep on 2 cores), the child's count printed, its exit not reached in time
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.split()[-1] == "28", done.stderr[-2000:]


@pytest.mark.usefixtures("ffcv_uncompiled")
def test_damaged_images_are_found_before_the_epoch_and_skipped_with_the_cpu_rule(packed, tmp_path):
    damaged = copy_set(packed, tmp_path)
    beton = next(damaged.glob("train*.beton"))
    spoil_image(beton, 3, "front")
    spoil_image(beton, 10, "rear")
    clean, batches = _epoch(packed), _epoch(damaged, bad_samples=BadSamples("skip"))
    assert len(batches) == len(clean) == 7
    pixels = {(r, v): b[v][i] for b in clean for i, r in enumerate(b["row"].tolist()) for v in ("front", "rear")}
    for good, bad in zip(clean, batches):
        kept = [r for r in good["row"].tolist() if r not in (3, 10)]
        assert bad["row"].tolist() == kept + kept[:4 - len(kept)]  # the good ones, then the first of them again
        assert all(torch.equal(bad[v][i], pixels[r, v]) for i, r in enumerate(bad["row"].tolist()) for v in ("front", "rear"))
    skipped = sorted((s.shard, s.key) for b in batches for s in b["bad_samples"])
    assert skipped == [(str(beton), "row 10"), (str(beton), "row 3")]
    with pytest.raises(UserError, match=f"{beton.name} row 3: front image does not decode"):
        _epoch(damaged)

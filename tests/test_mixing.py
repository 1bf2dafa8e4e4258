"""Class mixing: every backend's training batches hold as many distinct labels as a random order's
(within 10 %) on class-sorted data, and the packers' shards of a class-sorted input list mix classes.

The streaming backends (cpu, dali) shuffle within shards, so their data is a shard set whose shards
are each sorted by class; the in-memory backends (vectors) and ffcv image sets (one shard) permute
the whole split, so theirs is a split packed in class order. The plan does not mix shards that each
hold a single class: `umt-data pack` now shuffles what it writes so that no pack is like that.
"""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from umt.loaders.cli import main as data_main
from umt.loaders.loading.loader import dali_loader, make_loader
from umt.loaders.stored.shards import ShardWriter, load_manifest, written_order, write_manifest
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from media_factory import write_video

SPEC = ViewSpec(frames=3, stride=2, crop=16, audio_seconds=0.25, mel_bins=16)


def distinct(label_groups) -> float:
    """Mean number of distinct labels per group (batch or shard)."""
    return float(np.mean([len(set(np.asarray(g).tolist())) for g in label_groups]))


def random_distinct(labels, size: int) -> float:
    """The same for consecutive groups of `size` in random orders of `labels` (2000 orders)."""
    rng, labels = np.random.default_rng(0), np.asarray(labels)
    groups = [p[i:i + size] for p in (rng.permutation(labels) for _ in range(2000))
              for i in range(0, len(labels) - size + 1, size)]
    return distinct(groups)


def epoch_labels(loaders) -> list:
    return [batch["label"].numpy() for loader in loaders for batch in loader]


@pytest.fixture(scope="module")
def sorted_shards(data, tmp_path_factory) -> Path:
    """The synthetic training shards, each rewritten with its samples in class order."""
    out = tmp_path_factory.mktemp("sorted")
    manifest = load_manifest(data)
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(data / shard["name"]) as tar:
            samples = {}
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        ordered = sorted(samples.values(), key=lambda s: json.loads(s["json"])["label"])
        writer = ShardWriter(out / shard["name"])
        for position, sample in enumerate(ordered):
            meta = {**json.loads(sample["json"]), "row": shard["offset"] + position}
            writer.write(f"train_{meta['row']:07d}", {**sample, "json": json.dumps(meta).encode()})
        shard.update(writer.close())
    manifest["splits"] = {"train": manifest["splits"]["train"]}
    write_manifest(out, manifest)
    return out


def stored_labels(data: Path) -> list[int]:
    return [label for label in epoch_labels([make_loader(data, "train", spec=SPEC, modalities=["audio"],
                                                         policy=ViewPolicy(0), batch_size=64)])[0]]


def test_cpu_backend_mixes_class_sorted_shards(sorted_shards):
    labels = stored_labels(sorted_shards)
    want = random_distinct(labels, 4)
    assert distinct(np.split(np.array(labels), 16)) < 0.6 * want  # in stored order batches are near one class
    loaders = [make_loader(sorted_shards, "train", spec=SPEC, modalities=["audio"], policy=ViewPolicy(0, e, True),
                           batch_size=4, num_workers=2) for e in range(4)]
    assert abs(distinct(epoch_labels(loaders)) / want - 1) <= 0.1


def test_dali_backend_mixes_class_sorted_shards(sorted_shards):
    pytest.importorskip("nvidia.dali")
    want = random_distinct(stored_labels(sorted_shards), 4)
    loaders = [dali_loader(sorted_shards, "train", SPEC, ["audio"], ViewPolicy(0, e, True), 4) for e in range(4)]
    assert abs(distinct(epoch_labels(loaders)) / want - 1) <= 0.1


def class_sorted_in_storage(labels: list[str], seed: int = 0) -> list[str]:
    """The input order that the packers' seeded write order turns into `labels` (class-sorted) on disk."""
    order = written_order(len(labels), seed)
    inputs = [""] * len(labels)
    for position, source in enumerate(order):
        inputs[source] = labels[position]
    return inputs


def test_vector_loader_mixes_a_class_sorted_split(tmp_path):
    labels = [f"c{k}" for k in range(10) for _ in range(40)]
    stored = class_sorted_in_storage(labels)
    (tmp_path / "labels.csv").write_text("label,split\n" + "".join(f"{y},train\n" for y in stored))
    np.save(tmp_path / "x.npy", np.array([[int(y[1:])] for y in stored], np.float64))
    data_main(["pack-arrays", f"--view=x={tmp_path / 'x.npy'}", "--labels", str(tmp_path / "labels.csv"),
               "--out", str(tmp_path / "packed"), "--shard-size", "40"])
    rows = epoch_labels([make_loader(tmp_path / "packed", "train", spec=SPEC, modalities=["x"], policy=ViewPolicy(0),
                                     batch_size=400)])[0]
    assert rows.tolist() == sorted(rows.tolist())  # stored in class order: every shard one class
    loaders = [make_loader(tmp_path / "packed", "train", spec=SPEC, modalities=["x"], policy=ViewPolicy(0, e, True),
                           batch_size=8) for e in range(3)]
    assert abs(distinct(epoch_labels(loaders)) / random_distinct(rows, 8) - 1) <= 0.1


def test_image_loader_mixes_a_class_sorted_split(tmp_path, ffcv_uncompiled):
    from PIL import Image
    labels = [str(k) for k in range(6) for _ in range(20)]
    (tmp_path / "pics").mkdir()
    lines = ["label,split,front"]
    for i, label in enumerate(class_sorted_in_storage(labels)):
        Image.new("RGB", (12, 12), (40 * int(label), 0, 0)).save(tmp_path / "pics" / f"{i}.png")
        lines.append(f"{label},train,pics/{i}.png")
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    data_main(["pack-images", str(tmp_path / "table.csv"), str(tmp_path / "packed"), "--size", "12", "--workers", "1"])
    spec = ViewSpec(frames=1, crop=8)
    rows = epoch_labels([make_loader(tmp_path / "packed", "train", spec=spec, modalities=["front"],
                                     policy=ViewPolicy(0), batch_size=120)])[0]
    assert rows.tolist() == sorted(rows.tolist())
    loaders = [make_loader(tmp_path / "packed", "train", spec=spec, modalities=["front"], policy=ViewPolicy(0, e, True),
                           batch_size=6) for e in range(4)]
    assert abs(distinct(epoch_labels(loaders)) / random_distinct(rows, 6) - 1) <= 0.1


def shard_labels(data: Path) -> list[list[int]]:
    manifest = load_manifest(data)
    groups = []
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(data / shard["name"]) as tar:
            groups.append([json.loads(tar.extractfile(m).read())["label"] for m in tar.getmembers()
                           if m.name.endswith(".json")])
    return groups


def test_packed_shards_of_a_class_sorted_list_mix_classes(tmp_path):
    """`umt-data pack` and `pack-arrays` on inputs listed class by class: shards hold as many classes as
    random shards would."""
    (tmp_path / "videos").mkdir()
    for i in range(3):
        write_video(tmp_path / "videos" / f"v{i}.mp4", "mp4", "libx264", "aac", seconds=0.5, size=(32, 24), hue=40 * i)
    rows = [(f"v{i % 3}.mp4", f"class{k}") for k in range(8) for i in range(6)]  # class-sorted, 48 clips
    (tmp_path / "list.csv").write_text("path,label,split\n" + "".join(f"{p},{y},train\n" for p, y in rows))
    data_main(["pack", "--annotations", str(tmp_path / "list.csv"), "--root", str(tmp_path / "videos"),
               "--out", str(tmp_path / "packed"), "--shard-size", "6", "--workers", "1", "--short-side", "24"])
    groups = shard_labels(tmp_path / "packed")
    assert sum(map(len, groups)) == 48
    assert distinct(groups) >= 0.9 * random_distinct(sum(groups, []), 6)
    assert load_manifest(tmp_path / "packed")["source"]["seed"] == 0

    labels = [f"c{k}" for k in range(8) for _ in range(30)]
    (tmp_path / "labels.csv").write_text("label,split\n" + "".join(f"{y},train\n" for y in labels))
    np.save(tmp_path / "x.npy", np.zeros((240, 1)))
    data_main(["pack-arrays", f"--view=x={tmp_path / 'x.npy'}", "--labels", str(tmp_path / "labels.csv"),
               "--out", str(tmp_path / "arrays"), "--shard-size", "10"])
    groups = shard_labels(tmp_path / "arrays")
    assert distinct(groups) >= 0.9 * random_distinct(sum(groups, []), 10)


def test_training_on_a_pack_written_in_input_order_warns(sorted_shards, tmp_path):
    """Packs of the older `umt-data pack` (no write-order seed in the manifest) say how to fix them."""
    old = Path(shutil.copytree(sorted_shards, tmp_path / "old"))
    manifest = load_manifest(old)
    manifest["source"] = {"generator": "umt-data pack", "format": "kinetics"}
    write_manifest(old, manifest)
    with pytest.warns(UserWarning, match="repack it"):
        make_loader(old, "train", spec=SPEC, modalities=["audio"], policy=ViewPolicy(0, 0, True), batch_size=4)

"""The cluster plans: `umt-data pack --dry-run` and `umt-cache build --dry-run`."""
import csv

import numpy as np
import torch

from umt.loaders.stored import cache_store as store
from umt.cache.cli import main as cache_main
from umt.loaders.stored.cache_reader import FeatureTable
from umt.engine.checkpoint import save_model
from umt.engine.models import LateFusionNet, ModelConfig
from umt.loaders.cli import main as data_main
from umt.loaders.making.costs import PACK_CORE_S_PER_SOURCE_S, SHARD_BYTES_PER_S


def _cache(path, clips: int, dim: int):
    shards = [{"name": "train-000000.tar", "count": clips}]
    attrs = {"format": store.FORMAT, "split": "train", "num_samples": clips, "num_views": 1, "seed": 0,
             "teachers": {"video": {"dim": dim}}, "shards": ["train-000000.tar"]}
    return store.create(path, attrs, {"video": dim}, shards, {})


def test_cache_dry_run_says_streamed_exactly_when_the_trainer_streams(tmp_path, capsys):
    budget_gb = 0.001  # 1,073,741 bytes: 1048 clips of one 512-d float16 view fit, 1049 do not
    for clips in (1048, 1049):
        cache_main(["build", "--dry-run", "--clips", str(clips), "--classes", "5", "--views", "1", "--teachers", "1",
                    "--teacher-dim", "512", "--cache-budget-gb", str(budget_gb), "--num-nodes", "2"])
        said = capsys.readouterr().out
        table = FeatureTable(_cache(tmp_path / f"c{clips}.zarr", clips, 512), torch.device("cpu"),
                             int(budget_gb * 2**30))
        assert ("the cache is streamed" in said) == table.streaming == (clips == 1049)
        assert "16 ranks" in said


def test_cache_dry_run_reads_the_packed_manifest(tmp_path, capsys):
    data_main(["synth", str(tmp_path / "d"), "--train", "24", "--val", "4", "--test", "4", "--shard-size", "8",
               "--frames", "4", "--size", "16"])
    capsys.readouterr()
    cache_main(["build", "--dry-run", "--data", str(tmp_path / "d"), "--views", "3"])
    said = capsys.readouterr().out
    assert said.startswith("umt-cache build --dry-run: 24 clips x 3 views")
    assert not list(tmp_path.glob("*.zarr"))


def test_pack_dry_run_counts_the_clips_and_packs_nothing(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    for n in range(3):
        (tmp_path / "videos" / f"v{n}.mp4").write_bytes(b"x")
    with open(tmp_path / "a.csv", "w", newline="") as handle:
        rows = [[f"v{n}.mp4", "a", "train"] for n in range(3)] + [["gone.mp4", "b", "val"]]
        csv.writer(handle).writerows([["path", "label", "split"], *rows])
    out = tmp_path / "out"
    data_main(["pack", "--annotations", str(tmp_path / "a.csv"), "--root", str(tmp_path / "videos"), "--out", str(out),
               "--dry-run", "--num-nodes", "2", "--workers", "4", "--shard-size", "2", "--source", "1080p",
               "--max-seconds", "5"])
    said = capsys.readouterr().out
    assert "4 clips (train 3, val 1; 1 file(s) not found" in said and "in 2 shards of 2" in said
    core_hours = 4 * 5 * PACK_CORE_S_PER_SOURCE_S["1080p"] / 3600
    assert f"{core_hours / 8:.2f} h on 2 node(s) x 4 workers" in said
    assert f"{4 * 5 * SHARD_BYTES_PER_S / 2**30:.1f} GiB" in said
    assert not out.exists()


def test_cache_dry_run_reads_the_teachers_widths(tmp_path, capsys):
    for m, width in (("video", 4), ("audio", 6)):
        save_model(tmp_path / f"{m}.pt", LateFusionNet(ModelConfig(modalities=(m,), num_classes=5, width=width)))
    cache_main(["build", "--dry-run", "--clips", "1000", "--classes", "5", "--views", "1", "--targets", "features",
                "--teacher", f"video={tmp_path / 'video.pt'}", "--teacher", f"audio={tmp_path / 'audio.pt'}"])
    said = capsys.readouterr().out
    assert "teachers of 48-d, 32-d" in said  # sorted by modality: audio (width 6), video (width 4)
    assert f"training reads {store.size_text(1000 * (48 + 32) * 2)} of features" in said

import csv
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from umt.engine.cli import main as train_main
from umt.loaders.cli import main as data_main
from umt.loaders.errors import UserError
from umt.loaders.making.inputs import read_annotation_files, read_annotations, read_classes
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import kill_when
from media_factory import real_world_folder, write_flow, write_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("videos")
    return root, real_world_folder(root)


def _annotations(path: Path, names: list[str], repeat: int = 1) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for r in range(repeat):
            for i, name in enumerate(names):
                writer.writerow([name, "cat" if i % 2 else "dog", "val" if (i + r) % 4 == 0 else "train"])
        writer.writerow(["missing.mp4", "dog", "train"])
    return path


def _pack_args(csv_path: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return ["pack", "--annotations", str(csv_path), "--root", str(root), "--out", str(out), *extra]


def test_pack_real_world_inputs(videos, tmp_path, capsys):
    root, kinds = videos
    out = tmp_path / "packed"
    data_main(_pack_args(_annotations(tmp_path / "a.csv", sorted(kinds)), root, out, "--shard-size", "3",
                         "--workers", "2", "--short-side", "24"))
    summary = capsys.readouterr().out
    assert "rejected    4" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {r["source"]: r["reason"] for r in manifest["rejected"]}
    assert reasons["empty.mp4"] == "empty file" and reasons["missing.mp4"] == "file not found"
    assert reasons["audio_only.m4a"] == "no video stream" and reasons["garbage.mp4"].startswith("unreadable")
    assert manifest["flags"] == {"audio_missing": 1, "audio_short": 1, "audio_silent": 1, "truncated": 1}
    packed = sum(s["num_samples"] for s in manifest["splits"].values())
    assert packed == sum(k != "rejected" for k in kinds.values()) == 8
    spec = ViewSpec(frames=4, stride=2, crop=20, audio_seconds=0.5, mel_bins=16)
    batches = list(make_loader(out, "train", spec=spec, modalities=["video", "audio"], policy=ViewPolicy(0),
                               batch_size=4))
    metas = {b for batch in batches for b in batch["row"].tolist()}
    assert metas == set(range(manifest["splits"]["train"]["num_samples"]))
    assert batches[0]["video"].shape[1:] == (4, 20, 20, 3)


def test_interrupted_pack_resumes_to_identical_shards(videos, tmp_path):
    root, kinds = videos
    good = sorted(k for k, v in kinds.items() if v != "rejected")
    csv_path = _annotations(tmp_path / "big.csv", good + ["garbage.mp4"], repeat=8)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = _pack_args(csv_path, root, killed, "--shard-size", "2", "--workers", "1", "--short-side", "24")
    kill_when("umt.loaders.cli", args, lambda: len(list(killed.glob("*.tar"))) >= 3)
    finished_before = {p.name: p.stat().st_mtime_ns for p in killed.glob("*.tar")}
    data_main(args[:-4] + ["--workers", "2", "--short-side", "24"])  # resume, with another worker count
    data_main(_pack_args(csv_path, root, whole, "--shard-size", "2", "--workers", "2", "--short-side", "24"))
    names = sorted(p.name for p in whole.iterdir() if p.suffix in (".tar", ".json") and p.name != "pack-state.json")
    assert names == sorted(p.name for p in killed.iterdir() if p.suffix in (".tar", ".json") and p.name != "pack-state.json")
    for name in names:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    kept = {n for n, t in finished_before.items() if (killed / n).stat().st_mtime_ns == t}
    assert len(kept) >= 2  # finished shards were verified and kept, not redone


def test_kinetics_and_vggsound_annotations(tmp_path):
    root = tmp_path / "k400"
    (root / "train" / "abseiling").mkdir(parents=True)
    (root / "train" / "abseiling" / "abc_000010_000020.mp4").write_bytes(b"x")
    (root / "vgg").mkdir()
    (root / "vgg" / "xyz_000030.mkv").write_bytes(b"x")
    kinetics = tmp_path / "k.csv"
    kinetics.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,train\n"
                        "air drumming,def,0,10,val\n")
    clips = read_annotations(kinetics, "kinetics", root)
    assert [(c.source, c.label, c.split, c.path is not None) for c in clips] == [
        ("abc_000010_000020", "abseiling", "train", True), ("def_000000_000010", "air drumming", "val", False)]
    vgg = tmp_path / "v.csv"
    vgg.write_text("xyz,30,people marching,test\nqqq,5,dog barking,train\n")
    clips = read_annotations(vgg, "vggsound", root)
    assert [(c.label, c.split, c.path is not None) for c in clips] == [("people marching", "test", True),
                                                                         ("dog barking", "train", False)]
    bad = tmp_path / "bad.csv"
    bad.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,ten,20,train\n")
    with pytest.raises(UserError, match="bad.csv:2: malformed kinetics row"):
        read_annotations(bad, "kinetics", root)


def _packed_samples(out: Path) -> dict[str, tuple[str, str, int]]:
    """source → (split, class, label) of every packed sample, read from the shards."""
    samples = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as handle:
            for member in handle.getmembers():
                if member.name.endswith(".json"):
                    meta = json.load(handle.extractfile(member))
                    samples[meta["source"]] = (meta["split"], meta["class"], meta["label"])
    return samples


def test_pack_formats_of_the_imbalance_literature(tmp_path):
    """CREMA-D (label from the name, split files), Kinetics-Sounds (a class list) and AVE (official split files)."""
    clip = write_video(tmp_path / "clip.mp4", "mp4", "libx264", "aac", seconds=0.5, fps=8)
    root = tmp_path / "videos"
    root.mkdir()
    names = ["1001_DFA_ANG_XX", "1002_IEO_HAP_HI", "1003_ITS_SAD_XX", "ks1_000001_000011", "ks2_000002_000012",
             "ks3_000003_000013", "RUhOCu3LNXM", "abcDEF12345"]
    for name in names:
        shutil.copy(clip, root / f"{name}.mp4")
    (tmp_path / "train.csv").write_text("\ufeff1001_DFA_ANG_XX,ANG\n1002_IEO_HAP_HI,HAP\n")  # the peers' files: BOM
    (tmp_path / "test.csv").write_text("1003_ITS_SAD_XX,SAD\n")
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nplaying bagpipes,ks1,1,11,train\n"
                                    "abseiling,ks2,2,12,train\ntapping pen,ks3,3,13,val\n")
    (tmp_path / "ks.txt").write_text("# a class list\nplaying bagpipes\ntapping pen\n\n")
    (tmp_path / "trainSet.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n"
                                           "Church bell&RUhOCu3LNXM&good&0&10\nChurch bell&RUhOCu3LNXM&good&0&10\n")
    (tmp_path / "testSet.txt").write_text("Barking&abcDEF12345&good&2&8\n")
    packs = {"cremad": ["--annotations", f"train={tmp_path / 'train.csv'}", "--annotations", f"test={tmp_path / 'test.csv'}"],
             "kinetics": ["--annotations", str(tmp_path / "k.csv"), "--classes", str(tmp_path / "ks.txt")],
             "ave": ["--annotations", f"train={tmp_path / 'trainSet.txt'}", "--annotations",
                     f"test={tmp_path / 'testSet.txt'}"]}
    expected = {"cremad": {"1001_DFA_ANG_XX": ("train", "ANG", 0), "1002_IEO_HAP_HI": ("train", "HAP", 1),
                           "1003_ITS_SAD_XX": ("test", "SAD", 2)},
                "kinetics": {"ks1_000001_000011": ("train", "playing bagpipes", 0),  # abseiling: not in the list
                             "ks3_000003_000013": ("val", "tapping pen", 1)},
                "ave": {"RUhOCu3LNXM": ("train", "Church bell", 1), "abcDEF12345": ("test", "Barking", 0)}}
    for fmt, args in packs.items():
        out = tmp_path / fmt
        data_main(["pack", "--format", fmt, *args, "--root", str(root), "--out", str(out), "--workers", "1",
                   "--short-side", "16", "--fps", "4"])
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["rejected"] == [] and manifest["source"]["format"] == fmt
        assert manifest["classes"] == sorted({c for _, c, _ in expected[fmt].values()})
        assert _packed_samples(out) == expected[fmt], fmt


def test_literature_formats_refuse_bad_rows_and_class_lists(tmp_path):
    (tmp_path / "a.csv").write_text("1001_DFA_ANG_XX,HAP\n")
    with pytest.raises(UserError, match="a.csv:1: label 'HAP' disagrees with the emotion code 'ANG'"):
        read_annotation_files([f"train={tmp_path / 'a.csv'}"], "cremad", tmp_path)
    (tmp_path / "b.csv").write_text("1001_DFA_XXX_XX\n")
    with pytest.raises(UserError, match="b.csv:1: '1001_DFA_XXX_XX' is not a CREMA-D clip name"):
        read_annotation_files([str(tmp_path / "b.csv")], "cremad", tmp_path)
    (tmp_path / "c.txt").write_text("Church bell&RUhOCu3LNXM&good&0\n")
    with pytest.raises(UserError, match="c.txt:1: malformed ave row"):
        read_annotation_files([str(tmp_path / "c.txt")], "ave", tmp_path)
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nplaying bagpipes,a,1,11,train\n")
    (tmp_path / "ks.txt").write_text("playing bagpipes\nplaying bagpipe\n")
    with pytest.raises(UserError, match="ks.txt: 1 classes occur in no annotation row: 'playing bagpipe'"):
        read_annotation_files([str(tmp_path / "k.csv")], "kinetics", tmp_path, classes=tmp_path / "ks.txt")
    # the committed Kinetics-Sounds list: 31 distinct names
    assert len(read_classes(Path(__file__).resolve().parents[1] / "configs" / "kinetics-sounds-classes.txt")) == 31


def test_pack_flow_videos_as_a_modality(tmp_path):
    """UCF101-style RGB + optical flow: flow gets the video's crop, and a flip negates its x component."""
    rgb, flow = tmp_path / "rgb", tmp_path / "flow"
    rgb.mkdir(), flow.mkdir()
    splits = ["train"] * 4 + ["val", "test", "train"]
    for i in range(7):
        write_video(rgb / f"clip{i}.mp4", "mp4", "libx264", "aac", seconds=1.0)
        if i < 6:  # clip6 has no flow; flow has one frame fewer than its clip, as optical flow does
            write_flow(flow / f"clip{i}.mp4", frames=11)
    (tmp_path / "a.csv").write_text("path,label,split\n" + "".join(f"clip{i}.mp4,{'ab'[i % 2]},{s}\n"
                                                                 for i, s in enumerate(splits)))
    out = tmp_path / "packed"
    data_main(_pack_args(tmp_path / "a.csv", rgb, out, "--flow-root", str(flow), "--short-side", "24",
                         "--fps", "12", "--workers", "1"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modalities"]["flow"]["kind"] == "video"
    assert [(r["source"], r["reason"]) for r in manifest["rejected"]] == [("clip6.mp4", "flow file not found")]
    assert "flow_short" not in manifest["flags"]
    spec = ViewSpec(frames=4, stride=2, crop=20, audio_seconds=0.5, mel_bins=16)
    seen = {}
    for epoch in range(6):
        on_device = make_loader(out, "train", spec=spec, modalities=["video", "flow"],
                                policy=ViewPolicy(0, epoch, True), batch_size=2,
                                finish_on=torch.device("cpu"))  # finish.py: the same clips, flow's flip too
        for batch, finished in zip(make_loader(out, "train", spec=spec, modalities=["video", "flow"],
                                               policy=ViewPolicy(0, epoch, True), batch_size=2),
                                   on_device, strict=True):
            assert batch["flow"].shape == batch["video"].shape == (2, 4, 20, 20, 3)
            assert torch.equal(batch["flow"], finished["flow"]) and torch.equal(batch["video"], finished["video"])
            for flip, clip in zip(batch["params"][:, 5].tolist(), batch["flow"].float()):
                seen[flip] = clip.mean((0, 1, 2))
    assert set(seen) == {0, 1}
    assert (seen[0] - torch.tensor([200, 100, 128])).abs().max() < 6
    assert (seen[1] - torch.tensor([55, 100, 128])).abs().max() < 6
    train_main(["--data", str(out), "--out", str(tmp_path / "run"), "--method", "joint", "--modality", "video",
                "--modality", "flow", "--epochs", "1", "--batch-size", "2", "--width", "4", "--workers", "0",
                "--frames", "4", "--stride", "2", "--crop", "20", "--audio-seconds", "0.5", "--no-probe"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["modalities"] == ["video", "flow"]

import json
import platform
import resource
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from umt.loaders.loading.loader import make_loader, planned_split
from umt.loaders.loading.pipeline import decode_views, worker_init
from umt.loaders.loading.stream import planned_samples
from umt.loaders.stored.shards import DataError, load_manifest, sha256_file
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import synth

SPEC = ViewSpec(frames=3, stride=2, crop=16, audio_seconds=0.25, mel_bins=16)


def test_same_seed_gives_byte_identical_shards(data, tmp_path):
    again = synth(tmp_path / "again")
    names = sorted(p.name for p in data.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (data / name).read_bytes() == (again / name).read_bytes(), name
    other = synth(tmp_path / "other", "--seed", "1")
    assert (other / "train-000000.tar").read_bytes() != (data / "train-000000.tar").read_bytes()


def test_manifest_matches_shards(data):
    manifest = load_manifest(data)
    assert [manifest["splits"][s]["num_samples"] for s in ("train", "val", "test")] == [64, 16, 16]
    for shard in manifest["splits"]["train"]["shards"]:
        assert sha256_file(data / shard["name"]) == shard["sha256"]
        with tarfile.open(data / shard["name"]) as tar:
            names = tar.getnames()
        assert len(names) == 3 * shard["count"]
        assert {n.rsplit(".", 1)[1] for n in names} == {"mp4", "flac", "json"}


def test_paired_and_unimodal_cues(tmp_path):
    out = synth(tmp_path / "cues", "--paired", "0.5", "--video-cue", "1", "--audio-cue", "1", "--classes", "5")
    metas = [json.loads(s["json"]) for s in wds.DataPipeline(
        wds.SimpleShardList([str(p) for p in sorted(out.glob("train-*.tar"))]), wds.tarfile_to_samples())]
    paired = [m for m in metas if m["paired"]]
    assert 10 < len(paired) < 54
    assert all((m["video_symbol"] + m["audio_symbol"]) % 5 == m["label"] for m in paired)
    assert all(m["video_symbol"] == m["audio_symbol"] == m["label"] for m in metas if not m["paired"])


def test_loader_batches_carry_rows_views_and_are_deterministic(data):
    policy = ViewPolicy(seed=0, epoch=1, train=True, num_views=2)
    loader = make_loader(data, "train", spec=SPEC, modalities=["video", "audio"], policy=policy, batch_size=8)
    batches = list(loader)
    assert len(loader) == len(batches) == 8
    b = batches[0]
    assert b["video"].shape == (8, 3, 16, 16, 3) and str(b["video"].dtype) == "torch.uint8"
    assert b["audio"].shape == (8, 1, 16, 26)
    assert sorted(r for b in batches for r in b["row"].tolist()) == list(range(64))
    assert set(b["view"].tolist()) <= {0, 1}
    again = list(make_loader(data, "train", spec=SPEC, modalities=["video", "audio"], policy=policy, batch_size=8))
    assert all((x["row"] == y["row"]).all() and (x["video"] == y["video"]).all() for x, y in zip(batches, again))
    other = list(make_loader(data, "train", spec=SPEC, modalities=["video"], policy=ViewPolicy(0, 2, True, 2),
                             batch_size=8))
    assert [b["row"].tolist() for b in other] != [b["row"].tolist() for b in batches]


def test_workers_reuse_the_clip_memory_of_dropped_batches_only(data):
    policy = ViewPolicy(seed=0, epoch=1, train=True)
    want = [b["video"] for b in make_loader(data, "train", spec=SPEC, modalities=["video"], policy=policy, batch_size=4,
                                            num_workers=0)]  # in this process
    held = {}
    for i, batch in enumerate(make_loader(data, "train", spec=SPEC, modalities=["video"], policy=policy, batch_size=4,
                                          num_workers=2)):
        assert torch.equal(batch["video"], want[i]), i
        if i % 3 == 0:  # kept: its memory must not come back to the worker; the others' does
            held[i] = batch["video"][1:]
    assert len(want) == 16 and all(torch.equal(clips, want[i][1:]) for i, clips in held.items())


def test_ranks_read_disjoint_rows_and_equal_batch_counts(data):
    loaders = [make_loader(data, "train", spec=SPEC, modalities=["audio"], policy=ViewPolicy(0, 0, True), batch_size=8,
                           rank=r, world=3) for r in range(3)]
    assert [len(x) for x in loaders] == [2, 2, 2]  # 64 rows: 2 whole batches of 8 each, 16 left out
    rows = [set(x.samples()[0].tolist()) for x in loaders]
    assert not (rows[0] & rows[1] or rows[1] & rows[2] or rows[0] & rows[2])


def test_missing_data_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_manifest(tmp_path / "empty")


def test_shards_stream_from_urls_and_pipe_commands(data):
    local = [b["row"].tolist() for b in make_loader(data, "train", spec=SPEC, modalities=["audio"],
                                                    policy=ViewPolicy(0, 1, True), batch_size=8)]
    for location in (f"file://{data}", f"pipe:cat '{data}/{{}}'"):
        assert load_manifest(location) == load_manifest(data)
        remote = make_loader(location, "train", spec=SPEC, modalities=["audio"], policy=ViewPolicy(0, 1, True),
                             batch_size=8)
        assert [b["row"].tolist() for b in remote] == local, location
    with pytest.raises(DataError, match="needs {}"):
        load_manifest(f"pipe:cat {data}/manifest.json")


def test_a_batch_holds_each_samples_own_views_to_the_bit(data):
    # the workers log-mel a batch's windows in one call (pipeline.log_mels): each row must equal its sample decoded
    # alone (decode_views, as the cache builder and `umt-cache verify` read it), its clip too
    policy = ViewPolicy(seed=0, epoch=1, train=True)
    _, paths, plan, _ = planned_split(data, "train", ["video", "audio"], policy, 8)
    alone = {}
    for sample in planned_samples(paths, plan.offsets, np.concatenate(plan.batches())):
        row = json.loads(sample["json"])["row"]
        alone[row] = decode_views(sample, SPEC, ["video", "audio"], policy.seed, [policy.index(row)])[0]
    batches = list(make_loader(data, "train", spec=SPEC, modalities=["video", "audio"], policy=policy, batch_size=8,
                               num_workers=0))
    assert sum(len(b["row"]) for b in batches) == len(alone) == 64
    for b in batches:
        for i, row in enumerate(b["row"].tolist()):
            assert torch.equal(b["audio"][i], alone[row]["audio"]), row
            assert torch.equal(b["video"][i], alone[row]["video"]), row


class _Churn(torch.utils.data.Dataset):
    """Allocates and frees 24 MB five times (as a worker's batches do), and counts its page faults each time."""

    def __len__(self):
        return 1

    def __getitem__(self, _):
        faults = []
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [np.ones(8 << 20, np.uint8) for _ in range(3)]
            del blocks
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return torch.tensor(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc is the one told to keep freed memory")
def test_a_loader_worker_reuses_the_memory_it_frees():
    # glibc gives large freed blocks back to the kernel; a worker that did let its batches' buffers go took their page
    # faults again for every batch (pipeline._keep_freed_memory)
    faults = next(iter(torch.utils.data.DataLoader(_Churn(), batch_size=None, num_workers=1,
                                                   worker_init_fn=worker_init)))
    assert faults[0] > 500 and faults[1:].max() < 50, faults.tolist()

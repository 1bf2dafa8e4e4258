"""Damaged samples at training time: skipped, replaced within their batch and named, or an error naming them."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from umt.engine.cli import main as train_main
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.media import MediaError
from umt.loaders.stored.shards import DataError
from umt.loaders.loading.bad import BadSamples, Skipped
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import MODEL_ARGS, accelerate_launch, kill_and_resume
from damage import copy_set, drop, garbage, members, truncate

SPEC = ViewSpec(frames=3, stride=2, crop=16, audio_seconds=0.25, mel_bins=16)
SHARD = "train-000001.tar"


def _keys(path) -> list[str]:
    return [info.name.partition(".")[0] for info, _ in members(path)][::3]


def _epoch(data, policy: str, workers: int = 0, skip: int = 0, rank: int = 0, world: int = 1,
           finish_on: torch.device | None = None) -> list[dict]:
    loader = make_loader(data, "train", spec=SPEC, modalities=["video", "audio"], policy=ViewPolicy(3, 1, True),
                         batch_size=8, num_workers=workers, rank=rank, world=world, skip=skip,
                         bad_samples=BadSamples(policy), finish_on=finish_on)
    return list(loader)


@pytest.mark.parametrize("workers,finish_on", [(0, None), (2, None), (2, torch.device("cpu"))],
                         ids=["in-process", "workers", "finished-on-device"])
def test_skip_replaces_exactly_the_damaged_samples_and_keeps_every_batch(data, tmp_path, workers, finish_on):
    """A sample whose video fails to decode (after its batch's memory is laid out, when shipping) and one
    without audio (before): each replaced by a good sample of its batch, whose clip fills its place."""
    damaged = copy_set(data, tmp_path)
    keys = _keys(damaged / SHARD)
    garbage(damaged / SHARD, f"{keys[2]}.mp4")
    drop(damaged / SHARD, f"{keys[9]}.flac")
    clean, batches = _epoch(data, "skip", workers), _epoch(damaged, "skip", workers, finish_on=finish_on)
    assert len(batches) == len(clean) == 8
    skipped = [b for batch in batches for b in batch["bad_samples"]]
    assert all(isinstance(s, Skipped) for s in skipped)
    assert sorted(s.key for s in skipped) == sorted([keys[2], keys[9]])
    assert all(s.shard.endswith(SHARD) for s in skipped)
    for good, bad in zip(clean, batches):
        assert len(bad["row"]) == 8
        kept = [r for r in bad["row"].tolist() if r in good["row"].tolist()]
        assert len(set(kept)) == 8 - len(bad["bad_samples"])  # the others: good samples of the same batch again
    clean_clips = {row: clip for b in clean for row, clip in zip(b["row"].tolist(), b["video"])}
    for batch in batches:  # a place refilled in the batch's tensor holds its stand-in's clip
        assert all(torch.equal(clip, clean_clips[row]) for row, clip in zip(batch["row"].tolist(), batch["video"]))


def test_truncated_shard_skips_each_row_it_cannot_give(data, tmp_path):
    damaged = copy_set(data, tmp_path)
    truncate(damaged / SHARD)
    batches = _epoch(damaged, "skip")
    assert len(batches) == 8
    skipped = [b for batch in batches for b in batch["bad_samples"]]
    assert skipped and all(s.shard.endswith(SHARD) for s in skipped)
    assert all(any(why in s.reason for why in ("breaks off", "missing", "undecodable", "no member")) for s in skipped), \
        skipped


def test_error_policy_stops_naming_the_shard_and_sample(data, tmp_path):
    damaged = copy_set(data, tmp_path)
    key = _keys(damaged / SHARD)[4]
    garbage(damaged / SHARD, f"{key}.mp4")
    with pytest.raises(MediaError, match=f"{SHARD} sample {key}: undecodable video"):
        _epoch(damaged, "error")


def test_resumed_epoch_over_damage_sees_the_same_batches(data, tmp_path):
    damaged = copy_set(data, tmp_path)
    garbage(damaged / SHARD, f"{_keys(damaged / SHARD)[6]}.flac")
    whole = [(b["row"].tolist(), b["bad_samples"]) for b in _epoch(damaged, "skip", workers=2)]
    for skip in (1, 5):
        assert [(b["row"].tolist(), b["bad_samples"]) for b in _epoch(damaged, "skip", 2, skip)] == whole[skip:]


def test_limit_in_a_row_stops(data, tmp_path):
    damaged = copy_set(data, tmp_path)
    truncate(damaged / SHARD)
    with pytest.raises(MediaError, match="damaged samples in a row"):
        list(make_loader(damaged, "train", spec=SPEC, modalities=["video", "audio"], policy=ViewPolicy(3, 1, True),
                         batch_size=8, num_workers=0, bad_samples=BadSamples("skip", limit=2)))


def _train_args(data, out, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--method", "joint", "--epochs", "2", "--no-probe",
            *MODEL_ARGS, *extra]


def test_two_process_training_skips_and_names_exactly_the_damaged_samples(data, tmp_path):
    damaged = copy_set(data, tmp_path)
    keys = _keys(damaged / SHARD)
    garbage(damaged / SHARD, f"{keys[1]}.mp4")
    drop(damaged / SHARD, f"{keys[12]}.flac")
    out = tmp_path / "run"
    accelerate_launch("umt.engine.cli", *_train_args(damaged, out, "--workers", "2"))
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2 * 64 // 16 and results["replica_max_abs_diff"] == 0.0  # ranks stepped alike
    bad = results["bad_samples"]
    assert bad["skipped"] == 4 and bad["per_shard"] == {SHARD: 4}  # two samples, two epochs
    assert sorted(s.split(":")[0] for s in bad["samples"]) == sorted(f"{SHARD} {k}" for k in (keys[1], keys[12]))
    epochs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"val_top1"' in l]
    assert [e["bad_samples"] for e in epochs] == [{SHARD: 2}, {SHARD: 2}]
    assert "damaged training samples skipped: 4" in (out / "report.md").read_text()


def test_error_policy_and_damaged_evaluation_stop_with_one_line_naming_shard_and_sample(data, tmp_path, capsys):
    damaged = copy_set(data, tmp_path)
    key = _keys(damaged / SHARD)[3]
    garbage(damaged / SHARD, f"{key}.flac")
    with pytest.raises(SystemExit) as stop:
        train_main(_train_args(damaged, tmp_path / "a", "--bad-samples", "error", "--workers", "2"))
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if "error" in l]  # the rest is the cleared progress bar
    assert stop.value.code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith("umt-train: error: ") and f"{SHARD} sample {key}: undecodable audio" in errors[0]
    val_key = _keys(damaged / "val-000000.tar")[2]
    garbage(damaged / "val-000000.tar", f"{val_key}.mp4")
    shutil.copy(data / SHARD, damaged / SHARD)
    with pytest.raises(SystemExit):  # skip is for training only: a skipped test sample would change the accuracy
        train_main(_train_args(damaged, tmp_path / "b", "--max-steps", "1"))
    err = capsys.readouterr().err.strip()
    assert f"val-000000.tar sample {val_key}" in err and "Traceback" not in err, err


def test_killed_training_over_damaged_shards_resumes_to_the_same_weights(data, tmp_path):
    damaged = copy_set(data, tmp_path)
    garbage(damaged / SHARD, f"{_keys(damaged / SHARD)[5]}.mp4")
    kill_and_resume(tmp_path, ["--data", str(damaged), "--method", "joint", "--epochs", "2", "--no-probe", *MODEL_ARGS,
                               "--checkpoint-every", "1", "--workers", "2"], epochs=2, kill_at=5)


# --- vector sets (in memory): the same rule ----------------------------------------------------------------

def _vector_epoch(data, policy: str, skip: int = 0) -> list[dict]:
    return list(make_loader(data, "train", spec=SPEC, modalities=["strong", "weak"], policy=ViewPolicy(3, 1, True, 2),
                            batch_size=8, num_workers=0, skip=skip, bad_samples=BadSamples(policy)))


def test_vector_sets_skip_exactly_the_damaged_samples_with_the_cpu_rule(strong_weak, tmp_path):
    damaged = copy_set(strong_weak, tmp_path)
    garbage(damaged / "train-000001.tar", "train_0000045.strong.npy")
    drop(damaged / "train-000001.tar", "train_0000050.weak.npy")
    clean, batches = _vector_epoch(strong_weak, "skip"), _vector_epoch(damaged, "skip")
    assert len(batches) == len(clean) == 168 // 8
    vector = {(r, m): b[m][i] for b in clean for i, r in enumerate(b["row"].tolist()) for m in ("strong", "weak")}
    view = {r: v for b in clean for r, v in zip(b["row"].tolist(), b["view"].tolist())}
    for good, bad in zip(clean, batches):
        kept = [r for r in good["row"].tolist() if r not in (45, 50)]
        assert bad["row"].tolist() == kept + kept[:8 - len(kept)]  # the good ones, then the first of them again
        assert bad["view"].tolist() == [view[r] for r in bad["row"].tolist()]
        assert all(torch.equal(bad[m][i], vector[r, m]) for i, r in enumerate(bad["row"].tolist()) for m in ("strong", "weak"))
    skipped = sorted([s.shard, s.key] for b in batches for s in b["bad_samples"])
    assert [(shard.rsplit("/", 1)[-1], key) for shard, key in skipped] == [("train-000001.tar", "train_0000045"),
                                                                            ("train-000001.tar", "train_0000050")]
    assert [(b["row"].tolist(), b["bad_samples"]) for b in _vector_epoch(damaged, "skip", skip=3)] == \
        [(b["row"].tolist(), b["bad_samples"]) for b in batches[3:]]
    with pytest.raises(DataError, match="train-000001.tar sample train_0000045: "):
        _vector_epoch(damaged, "error")
    damaged = copy_set(damaged, tmp_path / "cut")  # a new path: a process reads each shard once
    truncate(damaged / "train-000003.tar")
    cut = _vector_epoch(damaged, "skip")
    assert len(cut) == 168 // 8 and all(len(b["row"]) == 8 for b in cut)
    named = {s.shard.rsplit("/", 1)[-1] for b in cut for s in b["bad_samples"]}
    assert named == {"train-000001.tar", "train-000003.tar"}


def test_loop_state_keeps_skipped_records_through_a_checkpoint_and_reads_tab_joined_ones():
    from dataclasses import asdict
    from umt.engine.train import LoopState
    met = [(0, Skipped("data/train-000000.tar", "k1", "undecodable")), (1, Skipped("s.tar", "k2", "missing flac"))]
    assert LoopState(**asdict(LoopState(skipped=met))).skipped == met
    assert LoopState(skipped=["1\ts.tar\tk2\tmissing flac"]).skipped == met[1:]

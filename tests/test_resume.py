import json

import pytest
import torch

from umt.engine.cli import main as train_main
from umt.loaders.pipeline import ViewPolicy, make_loader
from umt.loaders.views import ViewSpec

from conftest import MODEL_ARGS, kill_when

SPEC = ViewSpec(frames=3, stride=2, crop=16, audio_seconds=0.25, mel_bins=16)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_loader_resumed_mid_epoch_continues_with_the_next_unseen_batch(data, workers):
    def epoch(skip: int = 0) -> list[list[int]]:
        loader = make_loader(data, "train", SPEC, ["audio"], ViewPolicy(1, 4, True), 8, workers,
                             shuffle_buffer=16, skip=skip)
        return [b["row"].tolist() for b in loader]

    whole = epoch()
    assert len(whole) == 8 and sorted(r for b in whole for r in b) == list(range(64))
    for skip in range(len(whole) + 1):
        assert epoch(skip) == whole[skip:], skip


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# 8 optimiser steps per epoch, 2 epochs; each run is killed after its checkpoint at `kill_at` (mid-epoch),
# resumed, and compared with an uninterrupted run. gblend is killed in its second epoch, so the blend
# weights at its end depend on the restored head losses of the epoch's first half.
RESUMED = {"joint": (["--workers", "2", "--width", "8"], 4),
           "umt-cached": (["--method", "umt", "--cache", "{cache}"], 3),
           "umt-online": (["--method", "umt", "--teacher=video={video}", "--teacher=audio={audio}"], 3),
           "ogm-ge": (["--method", "ogm-ge", "--ogm-alpha", "0.8"], 3),
           "gblend": (["--method", "gblend"], 11)}


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_killed_training_resumes_to_the_same_final_weights(name, data, teachers, cache, tmp_path):
    extra, kill_at = RESUMED[name]
    extra = [a.format(cache=cache, **teachers) for a in extra]
    args = ["--data", str(data), "--method", "joint", "--epochs", "2", "--checkpoint-every", "1",
            "--no-probe", *MODEL_ARGS, *extra]
    killed = tmp_path / "killed"
    ckpt = killed / "checkpoints" / "last.pt"
    kill_when("umt.engine.cli", ["--out", str(killed), *args],
              lambda: torch.load(ckpt, weights_only=False)["position"]["step"] >= kill_at)
    assert kill_at <= torch.load(ckpt, weights_only=False)["position"]["step"] < 16
    train_main(["--out", str(killed), *args, "--resume", "latest"])
    train_main(["--out", str(tmp_path / "whole"), *args])
    resumed, whole = _state(killed / "model.pt"), _state(tmp_path / "whole" / "model.pt")
    assert resumed.keys() == whole.keys()
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key  # bitwise on CPU
    epochs = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines() if '"val_top1"' in l]
    assert len(epochs) == 2  # one record per epoch: nothing lost, nothing repeated
    uninterrupted = [json.loads(l) for l in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
                     if '"val_top1"' in l]
    for mine, theirs in zip(epochs, uninterrupted):  # the same losses and method state, epoch by epoch
        assert mine["train_loss"] == theirs["train_loss"] and mine.get("blend_weights") == theirs.get("blend_weights")


def test_resume_refuses_another_configuration(data, tmp_path, capsys):
    out = tmp_path / "run"
    train_main(["--data", str(data), "--out", str(out), "--method", "joint", "--max-steps", "2", "--no-probe", *MODEL_ARGS])
    with pytest.raises(SystemExit):
        train_main(["--data", str(data), "--out", str(out), "--method", "joint", "--max-steps", "2", "--no-probe",
                    *MODEL_ARGS, "--lr", "0.5", "--resume", "latest"])
    assert "saved by a run with other settings (lr)" in capsys.readouterr().err

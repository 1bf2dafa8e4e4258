import re

import numpy as np
import pytest

from umt.engine import resume
from umt.engine.cli import main as train_main, parse_args
from umt.engine.config import ConfigError, TrainConfig
from umt.engine.methods import resolved
from umt.loaders.cli import main as data_main
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import MODEL_ARGS, kill_and_resume

SPEC = ViewSpec(frames=3, stride=2, crop=16, audio_seconds=0.25, mel_bins=16)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_loader_resumed_mid_epoch_continues_with_the_next_unseen_batch(data, workers):
    def epoch(skip: int = 0) -> list[list[int]]:
        loader = make_loader(data, "train", spec=SPEC, modalities=["audio"], policy=ViewPolicy(1, 4, True),
                             batch_size=8, num_workers=workers, skip=skip)
        return [b["row"].tolist() for b in loader]

    whole = epoch()
    assert len(whole) == 8 and sorted(r for b in whole for r in b) == list(range(64))
    plan = make_loader(data, "train", spec=SPEC, modalities=["audio"], policy=ViewPolicy(1, 4, True),
                       batch_size=8).samples()[0]
    assert [r for b in whole for r in b] == plan.tolist()  # the plan's order, whatever the workers
    for skip in range(len(whole) + 1):
        assert epoch(skip) == whole[skip:], skip


# 8 optimiser steps per epoch, 2 epochs; each run is killed after its checkpoint at `kill_at` (mid-epoch),
# resumed, and compared with an uninterrupted run. G-Blending's resume is tested on 2 processes on vectors
# (tests/test_mmpareto_agm_pmr_dropout.py): it holds no mid-epoch state any more.
RESUMED = {"joint": (["--workers", "2", "--width", "8"], 4),
           "umt-cached": (["--method", "umt", "--cache", "{cache}"], 3),
           "umt-online": (["--method", "umt", "--teacher=video={video}", "--teacher=audio={audio}"], 3),
           "ogm-ge": (["--method", "ogm-ge", "--ogm-alpha", "0.8"], 3)}


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_killed_training_resumes_to_the_same_final_weights(name, data, teachers, cache, tmp_path):
    extra, kill_at = RESUMED[name]
    extra = [a.format(cache=cache, **teachers) for a in extra]
    kill_and_resume(tmp_path, ["--data", str(data), "--method", "joint", "--epochs", "2", "--checkpoint-every", "1",
                               "--no-probe", *MODEL_ARGS, *extra], epochs=2, kill_at=kill_at)


def test_killed_vector_training_resumes_to_the_same_final_weights(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    np.save(tmp_path / "x.npy", np.eye(3)[labels] + rng.normal(size=(300, 3)))
    np.save(tmp_path / "y.npy", rng.normal(size=(300, 2)))
    (tmp_path / "labels.csv").write_text("label\n" + "".join(f"{y}\n" for y in labels))
    data_main(["pack-arrays", f"--view=x={tmp_path / 'x.npy'}", f"--view=y={tmp_path / 'y.npy'}",
               "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "packed"), "--shard-size", "50"])
    kill_and_resume(tmp_path, ["--data", str(tmp_path / "packed"), "--method", "joint", "--modality", "x",
                               "--modality", "y", "--fusion", "mlp", "--epochs", "12", "--batch-size", "4",
                               "--width", "4", "--workers", "0", "--checkpoint-every", "1", "--no-probe"],
                    epochs=12, kill_at=30)


def test_resume_refuses_another_configuration(data, tmp_path, capsys):
    out = tmp_path / "run"
    train_main(["--data", str(data), "--out", str(out), "--method", "joint", "--max-steps", "2", "--no-probe", *MODEL_ARGS])
    with pytest.raises(SystemExit):
        train_main(["--data", str(data), "--out", str(out), "--method", "joint", "--max-steps", "2", "--no-probe",
                    *MODEL_ARGS, "--lr", "0.5", "--resume", "latest"])
    assert "saved by a run with other settings (lr)" in capsys.readouterr().err


def test_resume_on_other_processes_without_a_global_batch_says_what_to_set(strong_weak, tmp_path):
    args = ["--data", str(strong_weak), "--out", str(tmp_path / "run"), "--modality", "strong", "--modality", "weak",
            "--batch-size", "3", "--width", "4", "--workers", "0", "--max-steps", "1", "--no-probe", "--log-with", "none"]
    train_main(args)
    cfg = resolved(parse_args([*args, "--resume", "latest"]))  # as the trainer resolves it
    with pytest.raises(ConfigError, match=re.escape(
            "saved by 1 process(es) with a global batch of 3; on 2 process(es) this configuration makes it 6, which "
            "would change every following batch: resume on a number of processes that divides 3")):
        resume.load(cfg, 2)
    with pytest.raises(ConfigError, match=re.escape(
            "this configuration makes it 9, which would change every following batch: set optim.global_batch=3 "
            "(--global-batch 3) to train 1 samples per process")):
        resume.load(cfg, 3)
    assert resume.load(resolved(parse_args([*args, "--resume", "latest", "--global-batch", "3"])), 3)["position"]["step"] == 1
    with pytest.raises(ConfigError, match="a global batch of 7 does not split among 2 processes"):
        resume.layout(TrainConfig(data="", out="", global_batch=7), 2, None)

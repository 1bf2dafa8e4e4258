import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from umt.engine import resume
from umt.engine.cli import main as train_main, parse_args
from umt.engine.config import ConfigError, TrainConfig
from umt.loaders.cli import main as data_main
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import MODEL_ARGS, accelerate_launch, kill_and_resume, kill_when

SPEC = ViewSpec(frames=3, stride=2, crop=16, audio_seconds=0.25, mel_bins=16)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_loader_resumed_mid_epoch_continues_with_the_next_unseen_batch(data, workers):
    def epoch(skip: int = 0) -> list[list[int]]:
        loader = make_loader(data, "train", SPEC, ["audio"], ViewPolicy(1, 4, True), 8, workers, skip=skip)
        return [b["row"].tolist() for b in loader]

    whole = epoch()
    assert len(whole) == 8 and sorted(r for b in whole for r in b) == list(range(64))
    plan = make_loader(data, "train", SPEC, ["audio"], ViewPolicy(1, 4, True), 8).samples()[0]
    assert [r for b in whole for r in b] == plan.tolist()  # the plan's order, whatever the workers
    for skip in range(len(whole) + 1):
        assert epoch(skip) == whole[skip:], skip


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


# Elastic resume: a global batch of 8 over 2 epochs of 21 global batches on 168 training vectors; each run is killed
# mid-epoch on one number of processes and resumed on the other.
ELASTIC = ("--method joint --modality strong --modality weak --fusion mlp --epochs 2 --global-batch 8 --width 4 "
           "--workers 0 --num-views 3 --checkpoint-every 1 --no-probe --log-with none")
TRACE = {"UMT_SAMPLE_TRACE": "1"}


def _consumed(run, attempt: int) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """One attempt's global batches in order: ((epoch, batch), its (row, view) pairs over the ranks in rank order)."""
    lines = [json.loads(l) for f in sorted((run / "trace").glob("rank*.jsonl")) for l in f.read_text().splitlines()]
    lines = [l for l in lines if l["from_step"] == attempt]
    batches: dict[tuple[int, int], list] = {}
    for l in sorted(lines, key=lambda l: (l["epoch"], l["batch"], l["rank"])):
        batches.setdefault((l["epoch"], l["batch"]), []).extend(zip(l["rows"], l["views"]))
    assert {l["world"] for l in lines} == ({len({l["rank"] for l in lines})} if lines else set())
    return sorted(batches.items())


def _elastic_case(run, whole, position: dict, world: int) -> None:
    """The killed attempt up to its checkpoint (`position`), then the attempt resumed on `world` processes,
    consumed exactly the global batches the whole run did, in its order."""
    assert position["world"] == 3 - world and position["batch"] > 0  # killed mid-epoch on the other process count
    killed, resumed, want = _consumed(run, 0), _consumed(run, position["step"]), _consumed(whole, 0)
    upto = [b for b in killed if b[0] <= (position["epoch"], position["batch"])]
    assert upto + resumed == want
    assert len(want) == 2 * 168 // 8 and all(len(b[1]) == 8 for b in want)
    assert json.loads((run / "results.json").read_text())["processes"] == world
    final, same = (torch.load(r / "model.pt", weights_only=True)["state_dict"] for r in (run, whole))
    for name in same:  # the same steps; only the reduction order of the gradients differs
        torch.testing.assert_close(final[name], same[name], rtol=1e-5, atol=1e-6)


def test_killed_run_resumes_on_another_number_of_processes_with_the_same_global_batches(strong_weak, tmp_path,
                                                                                        monkeypatch):
    args, killed = f"--data {strong_weak} {ELASTIC}".split(), {}
    for world, kill_at in ((2, 24), (1, 5)):  # 2 -> 1 killed in its second epoch, 1 -> 2 in its first
        ckpt = tmp_path / f"from{world}" / "checkpoints" / "last.pt"
        kill_when("umt.engine.cli", [*args, "--out", str(tmp_path / f"from{world}")], processes=world, env=TRACE,
                  ready=lambda: torch.load(ckpt, weights_only=False)["position"]["step"] >= kill_at)
        killed[world] = torch.load(ckpt, weights_only=False)["position"]
    accelerate_launch(str(Path(__file__).parent / "several_runs.py"), f"{' '.join(args)} --out {tmp_path / 'from1'} "
                      "--resume latest", f"{' '.join(args)} --out {tmp_path / 'whole2'}", env=TRACE)
    monkeypatch.setenv("UMT_SAMPLE_TRACE", "1")
    train_main([*args, "--out", str(tmp_path / "from2"), "--resume", "latest"])
    train_main([*args, "--out", str(tmp_path / "whole1")])
    _elastic_case(tmp_path / "from2", tmp_path / "whole2", killed[2], world=1)
    _elastic_case(tmp_path / "from1", tmp_path / "whole1", killed[1], world=2)


def test_resume_on_other_processes_without_a_global_batch_says_what_to_set(strong_weak, tmp_path):
    args = ["--data", str(strong_weak), "--out", str(tmp_path / "run"), "--modality", "strong", "--modality", "weak",
            "--batch-size", "3", "--width", "4", "--workers", "0", "--max-steps", "1", "--no-probe", "--log-with", "none"]
    train_main(args)
    cfg = parse_args([*args, "--resume", "latest"])
    with pytest.raises(ConfigError, match=re.escape(
            "saved by 1 process(es) with a global batch of 3; on 2 process(es) this configuration makes it 6, which "
            "would change every following batch: resume on a number of processes that divides 3")):
        resume.load(cfg, 2)
    with pytest.raises(ConfigError, match=re.escape(
            "this configuration makes it 9, which would change every following batch: set optim.global_batch=3 "
            "(--global-batch 3) to train 1 samples per process")):
        resume.load(cfg, 3)
    assert resume.load(parse_args([*args, "--resume", "latest", "--global-batch", "3"]), 3)["position"]["step"] == 1
    with pytest.raises(ConfigError, match="a global batch of 7 does not split among 2 processes"):
        resume.layout(TrainConfig(data="", out="", global_batch=7), 2, None)

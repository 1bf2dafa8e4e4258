"""Every method learns: well above chance on the synthetic set after a few hundred steps."""
import json

import pytest

from umt.cache.cli import main as cache_main

from conftest import synth, train, ume

STEPS = ["--epochs", "40", "--max-steps", "240", "--lr", "3e-3", "--no-probe"]


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    data = synth(root / "data", "--train", "192", "--val", "32", "--test", "96", "--shard-size", "48",
                 "--paired", "0", "--audio-cue", "1", "--video-cue", "1")
    teachers = {m: train(data, root / m, "--method", "unimodal", "--modality", m, *STEPS) / "model.pt"
                for m in ("video", "audio")}
    cache_main(["build", "--data", str(data), "--out", str(root / "cache.zarr"), "--views", "2", "--workers", "0",
                *[f"--teacher={m}={p}" for m, p in teachers.items()]])
    return root, data, teachers


def _top1(run) -> float:
    return json.loads((run / "results.json").read_text())["test_top1"]


@pytest.mark.parametrize("method", ["unimodal-audio", "joint", "umt", "ume", "ogm-ge", "gblend"])
def test_method_learns_above_chance(learnable, method):
    root, data, teachers = learnable
    extra = {"unimodal-audio": ["--method", "unimodal", "--modality", "audio", *STEPS],
             "joint": ["--method", "joint", *STEPS],
             "umt": ["--method", "umt", "--cache", str(root / "cache.zarr"), *STEPS],
             "ogm-ge": ["--method", "ogm-ge", *STEPS],
             "gblend": ["--method", "gblend", *STEPS]}.get(method)
    out = root / f"run-{method}"
    accuracy = _top1(ume(data, out, teachers, "--no-probe") if method == "ume" else train(data, out, *extra))
    assert accuracy >= 0.9, f"{method}: test top-1 {accuracy:.3f} (chance 0.25)"

"""One evaluation entry bound to the run's configuration: every split a method, UME or the trainer evaluates is read
through engine/evaluate.py's `evaluate_split`, which honours the run's --finish."""
from __future__ import annotations

import ast
from pathlib import Path

import torch

import umt.loaders.loading.pipeline as pipeline
from umt.engine.config import TrainConfig
from umt.engine.evaluate import evaluate_split
from umt.engine.models import LateFusionNet, ModelConfig
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.stored.views import ViewSpec

ENGINE = Path(__file__).resolve().parents[1] / "engine"
SPEC = ViewSpec(frames=2, stride=2, crop=16, audio_seconds=0.5, mel_bins=16)


def test_only_the_entry_and_the_guide_call_collect():
    """The guide has no run configuration (its own flags); everything else goes through the entry."""
    callers = set()
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "collect":
                callers.add(path.relative_to(ENGINE).as_posix())
    assert callers == {"evaluate.py", "guide.py"}


def test_the_entry_finishes_views_where_the_run_says(tmp_path, monkeypatch):
    data = tmp_path / "synth"
    write_synth(data, SynthConfig(train=8, val=6, test=2, shard_size=4, size=24, frames=6, audio_seconds=1.0,
                                  classes=2), progress=False)
    finished = []
    real = pipeline.finish
    monkeypatch.setattr(pipeline, "finish", lambda *a, **k: finished.append(1) or real(*a, **k))
    net = LateFusionNet(ModelConfig(modalities=("video", "audio"), num_classes=2, width=4)).eval()
    got = {}
    for choice in ("workers", "device"):
        cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), view=SPEC, batch_size=4, num_workers=0,
                          finish=choice)
        finished.clear()
        got[choice] = evaluate_split(cfg, net, "val", torch.device("cpu"))
        assert len(finished) == (2 if choice == "device" else 0)  # 6 val samples in batches of 4
    assert torch.equal(got["workers"]["labels"], got["device"]["labels"])

"""benchmarks/loader.py's SPDL peer reads the views umt's loader reads (same frames, box, flip, audio window)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from umt.loaders.loading.loader import planned_split
from umt.loaders.loading.pipeline import decode_views
from umt.loaders.loading.stream import planned_samples
from umt.loaders.making.synth import SynthConfig, write_synth
from umt.loaders.stored.views import ViewPolicy, ViewSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import loader  # noqa: E402

SPEC = ViewSpec(frames=3, stride=2, crop=24, audio_seconds=0.5, mel_bins=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pytest.importorskip("spdl.io")
    out = tmp_path_factory.mktemp("peers") / "synth"
    write_synth(out, SynthConfig(train=8, val=2, test=2, shard_size=4, size=40, frames=12, audio_seconds=1.0,
                                 classes=2), progress=False)
    return out


def test_spdl_view_is_umts_view(data):
    """Its log-mel equals umt's; its pixels (FFmpeg's resize and conversion) are nearer umt's view of the same
    sample than umt's other views of it are: a wrong frame, box or flip would be as far as another view."""
    policy = ViewPolicy(0, 0, True)
    _, paths, plan, _ = planned_split(data, "train", ["video", "audio"], policy, 8)
    for sample in planned_samples(paths, plan.offsets, np.concatenate(plan.batches())):
        theirs = loader.spdl_view(sample, SPEC, policy)
        view = policy.index(json.loads(sample["json"])["row"])
        ours, *others = decode_views(sample, SPEC, ["video", "audio"], policy.seed, [view, view + 1, view + 2])
        assert theirs["video"].shape == ours["video"].shape and theirs["video"].dtype == torch.uint8
        assert torch.equal(theirs["audio"], ours["audio"])
        far = [(theirs["video"].float() - o["video"].float()).abs().mean() for o in [ours, *others]]
        assert far[0] < min(far[1:]) / 2, far

"""Every registered method at its defaults (optimiser, learning rate, schedule) learns in 3 epochs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from umt.engine.cli import main as train_main
from umt.engine.methods import REGISTRY
from umt.loaders.cli import main as data_main

CLASSES = 10
# Chance is 0.10; every method at its defaults reaches 0.34 or more here, while SGD at AdamW's 2e-3 (the old default
# of every method) leaves mla at 0.04 and greedy at 0.09.
FLOOR = 1 / CLASSES + 0.2
RUN = ["--width", "8", "--workers", "0", "--no-probe", "--epochs", "3", "--log-with", "none"]


@pytest.fixture(scope="module")
def prototypes(tmp_path_factory) -> Path:
    """10 classes of 2,000 samples, two 8-d vector views: a class prototype plus noise (std 1 and 2)."""
    root = tmp_path_factory.mktemp("prototypes")
    rng = np.random.default_rng(0)
    labels = np.arange(2000) % CLASSES
    for view, noise in (("a", 1.0), ("b", 2.0)):
        prototype = rng.normal(size=(CLASSES, 8)) * 1.5
        np.save(root / f"{view}.npy", (prototype[labels] + noise * rng.normal(size=(2000, 8))).astype(np.float32))
    (root / "labels.csv").write_text("label\n" + "".join(f"c{y}\n" for y in labels))
    data_main(["pack-arrays", f"--view=a={root / 'a.npy'}", f"--view=b={root / 'b.npy'}",
               "--labels", str(root / "labels.csv"), "--out", str(root / "packed"), "--shard-size", "2000"])
    return root / "packed"


def _top1(data: Path, out: Path, method: str, *extra: str) -> float:
    modalities = ["--modality", "a"] + ([] if REGISTRY[method].single_modality else ["--modality", "b"])
    train_main(["--data", str(data), "--out", str(out), "--method", method, *modalities, *RUN, *extra])
    return json.loads((out / "results.json").read_text())["test_top1"]


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_learns_in_three_epochs_at_its_defaults(prototypes, tmp_path, method):
    extra = []
    if method == "umt":  # online teachers: the uni-modal models at their defaults
        for view in "ab":
            train_main(["--data", str(prototypes), "--out", str(tmp_path / view), "--method", "unimodal",
                        "--modality", view, *RUN])
            extra += ["--teacher", f"{view}={tmp_path / view / 'model.pt'}"]
    top1 = _top1(prototypes, tmp_path / method, method, *extra)
    assert top1 >= FLOOR, f"{method} at its defaults: test top-1 {top1:.3f}, chance {1 / CLASSES}"


@pytest.mark.parametrize("method", ["mla", "greedy"])
def test_the_floor_refuses_sgd_at_adamws_rate(prototypes, tmp_path, method):
    """The floor tells a broken default apart: SGD at 2e-3 (AdamW's rate) stays below it."""
    assert _top1(prototypes, tmp_path / method, method, "--lr", "0.002") < FLOOR

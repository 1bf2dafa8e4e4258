"""Each method's rule against its definition: accumulation, OGM-GE, the probe, and the view and cache checks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from umt.cache.cli import main as cache_main
from umt.engine.methods.ogm_ge import modulate_gradients, ogm_coefficients
from umt.engine.cli import main as train_main
from umt.engine.evaluate import linear_probe
from umt.engine.guide import main as guide_main
from umt.engine.models import LateFusionNet, ModelConfig
from umt.loaders.cli import main as data_main

from conftest import MODEL_ARGS, train, ume


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> Path:
    """Two vector views of 96 training samples (no BatchNorm anywhere in the model)."""
    root = tmp_path_factory.mktemp("vectors")
    data_main(["synth-arrays", str(root / "raw"), "--train", "96", "--val", "32", "--test", "32", "--dim", "8",
               "--classes", "4"])
    data_main(["pack-arrays", f"--view=vfeat={root / 'raw' / 'vfeat.npy'}", f"--view=afeat={root / 'raw' / 'afeat.npy'}",
               "--labels", str(root / "raw" / "labels.csv"), "--out", str(root / "packed"), "--shard-size", "32"])
    return root / "packed"


def _vector_run(data: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    train_main(["--data", str(data), "--out", str(out), "--method", "joint", "--modality", "vfeat", "--modality",
                "afeat", "--width", "4", "--workers", "0", "--no-probe", "--epochs", "2", "--lr", "0.01", *extra])
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def test_accumulating_two_batches_of_b_equals_one_batch_of_2b(vectors, tmp_path):
    # 96 samples: 3 optimiser steps of 32 per epoch; 5 steps cross the epoch end, 2 epochs would give 6
    whole = _vector_run(vectors, tmp_path / "big", "--batch-size", "32", "--max-steps", "5")
    accumulated = _vector_run(vectors, tmp_path / "acc", "--batch-size", "16", "--grad-accum", "2", "--max-steps", "5")
    assert whole.keys() == accumulated.keys()
    for name in whole:
        assert torch.allclose(whole[name], accumulated[name], atol=1e-5, rtol=1e-4), name
    for out in ("big", "acc"):
        assert json.loads((tmp_path / out / "results.json").read_text())["steps"] == 5  # optimiser steps


def _ogm_net(fusion: str = "linear") -> tuple[LateFusionNet, dict, torch.Tensor]:
    """A conv (audio) and an MLP (vector) encoder, and a batch."""
    torch.manual_seed(0)
    net = LateFusionNet(ModelConfig(("audio", "vec"), 3, width=8, fusion=fusion,
                                    inputs={"vec": {"kind": "vector", "dim": 6}}))
    batch = {"audio": torch.randn(12, 1, 16, 16), "vec": torch.randn(12, 6)}
    return net, batch, torch.arange(12) % 3


def test_ogm_ge_scales_conv_and_linear_weights_and_adds_noise_of_the_unmodulated_std():
    net, batch, labels = _ogm_net()
    logits, feats = net(batch)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    coeffs = {"audio": 0.3, "vec": 0.6}
    modulate_gradients(net, coeffs, torch.Generator().manual_seed(1))
    modulated = {n for n, p in net.named_parameters()
                 if n.startswith("encoders.") and p.dim() == (4 if ".audio." in n else 2)}
    assert any(".audio." in n for n in modulated) and any(".vec." in n for n in modulated)
    standardised = []
    for name, p in net.named_parameters():
        if name not in modulated:  # biases, BatchNorm, heads: untouched
            assert torch.equal(p.grad, before[name]), name
            continue
        k = coeffs[name.split(".")[1]]
        standardised.append(((p.grad - k * before[name]) / before[name].std()).flatten())
    noise = torch.cat(standardised)
    assert noise.numel() > 5000
    assert noise.std().item() == pytest.approx(1.0, abs=0.05)  # N(0, σ of the unmodulated gradient)
    assert abs(noise.mean().item()) < 0.05


def test_ogm_coefficient_is_the_papers_k_on_fused_logit_shares():
    net, batch, labels = _ogm_net()
    with torch.no_grad():
        _, feats = net(batch)
        shares = net.modality_logits(feats)
    score = {m: s.softmax(1)[torch.arange(12), labels].sum().item() for m, s in shares.items()}
    strong, weak = sorted(score, key=score.get, reverse=True)
    k = ogm_coefficients(shares, labels, alpha=0.8)
    assert k[weak] == 1.0
    assert k[strong] == pytest.approx(1 - math.tanh(0.8 * score[strong] / score[weak]), rel=1e-5)


def test_linear_probe_ignores_a_unit_dead_on_the_training_set():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    signal = (labels.float() * 2 - 1)[:, None] * 2 + 0.3 * torch.randn(200, 1, generator=g)
    dead_train = torch.zeros(200, 1)
    live_test = 5 * torch.randn(200, 1, generator=g)  # the unit wakes up on the test split
    acc = linear_probe(torch.cat([signal, dead_train], 1), labels, torch.cat([signal, live_test], 1), labels, 2)
    assert acc == 1.0


@pytest.fixture(scope="module")
def other_views(data, tmp_path_factory) -> dict[str, Path]:
    """Uni-modal models trained on crop 12 (the shared teachers and MODEL_ARGS use crop 16)."""
    root = tmp_path_factory.mktemp("other")
    for m in ("video", "audio"):
        train_main(["--data", str(data), "--out", str(root / m), *MODEL_ARGS, "--crop", "12", "--method", "unimodal",
                    "--modality", m, "--max-steps", "1", "--no-probe"])
    return {m: root / m / "model.pt" for m in ("video", "audio")}


@pytest.fixture
def other_view_teacher(other_views) -> Path:
    return other_views["audio"]


def test_online_teacher_of_another_view_spec_is_refused(data, other_views, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(data, tmp_path / "umt", "--method", "umt", "--max-steps", "1", "--no-probe",
              *[f"--teacher={m}={p}" for m, p in other_views.items()])
    err = capsys.readouterr().err
    assert "teacher" in err and "crop 12" in err and "crop 16" in err


def test_ume_member_of_another_view_spec_is_refused(data, teachers, other_view_teacher, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ume(data, tmp_path / "ume", {"video": teachers["video"], "audio": other_view_teacher})
    err = capsys.readouterr().err
    assert "member" in err and "crop 12" in err and "crop 16" in err and str(other_view_teacher) in err


def test_guide_member_of_another_view_spec_is_refused(data, teachers, other_view_teacher, tmp_path, capsys):
    joint = train(data, tmp_path / "joint", "--method", "joint", "--max-steps", "1", "--no-probe") / "model.pt"
    with pytest.raises(SystemExit):
        guide_main(["--data", str(data), "--joint", str(joint), f"--member=video={teachers['video']}",
                    f"--member=audio={other_view_teacher}"])
    err = capsys.readouterr().err
    assert "member" in err and "crop 12" in err and "crop 16" in err and str(other_view_teacher) in err


def test_cache_of_another_split_is_refused(data, teachers, tmp_path, capsys):
    cache = tmp_path / "val.zarr"
    cache_main(["build", "--data", str(data), "--out", str(cache), "--views", "1", "--workers", "0", "--split", "val",
                *[f"--teacher={m}={p}" for m, p in teachers.items()]])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train(data, tmp_path / "umt", "--method", "umt", "--cache", str(cache), "--max-steps", "1", "--no-probe",
              "--view-seed", "0")
    err = capsys.readouterr().err
    assert "split 'val'" in err and "16" in err and "64" in err

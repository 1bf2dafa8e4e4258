import json
import math
import subprocess
import sys

import pytest
import torch

from umt.engine.guide import main as guide_main
from umt.engine.models import LateFusionNet, ModelConfig
from umt.engine.ume import combine, fit_weights

from conftest import MODEL_ARGS, train, ume as run_ume


def test_fusion_heads_and_projector_shapes():
    batch = {"video": torch.randint(0, 255, (2, 3, 16, 16, 3), dtype=torch.uint8), "audio": torch.randn(2, 1, 16, 26)}
    for fusion in ("linear", "mlp", "sum"):
        net = LateFusionNet(ModelConfig(("video", "audio"), 5, width=4, fusion=fusion, projector=("video", "audio")))
        logits, feats = net(batch)
        assert logits.shape == (2, 5) and feats["video"].shape == (2, 32)
        assert net.distilled("audio", feats["audio"]).shape == (2, 32)
    summed = LateFusionNet(ModelConfig(("video", "audio"), 5, width=4, fusion="sum"))
    logits, feats = summed(batch)
    expected = summed.head["video"](feats["video"]) + summed.head["audio"](feats["audio"])
    assert torch.allclose(logits, expected)


def test_ume_weights_fit_on_validation():
    labels = torch.arange(40) % 4
    good = torch.nn.functional.one_hot(labels, 4).float() * 3
    noise = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)) * 5
    stacked = torch.stack([noise, good], 1)  # member 0 useless, member 1 perfect
    w = fit_weights(stacked, labels, "logits")
    assert w[1] > w[0] and (combine(stacked, "logits", w).argmax(1) == labels).all()
    assert torch.allclose(fit_weights(torch.stack([good, good], 1), labels, "probs"), torch.tensor([0.5, 0.5]))


def test_umt_variants_and_ume_options_run(data, teachers, cache, tmp_path):
    run = train(data, tmp_path / "proj", "--method", "umt", "--cache", str(cache), "--projector", "--distill", "video",
                "--max-steps", "3", "--log-every", "1", "--no-probe")
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"distill"' in l]
    assert len(steps) == 3 and all(s["distill"] > 0 for s in steps)
    ume = run_ume(data, tmp_path / "ume", teachers, "--ume-combine", "probs", "--ume-fit-weights")
    res = json.loads((ume / "results.json").read_text())
    assert res["ume"]["combine"] == "probs" and sum(res["ume"]["weights"].values()) == pytest.approx(1.0)
    assert 0 <= res["test_top1"] <= res["test_top5"] <= 1 and len(res["per_class_top1"]) == 4


def test_a_loop_over_methods_with_shared_flags_runs_ume_and_warns_of_what_it_ignores(data, teachers, tmp_path,
                                                                                     capsys):
    ume = run_ume(data, tmp_path / "ume", teachers, "--modality", "video", "--modality", "audio", *MODEL_ARGS[:2],
                  "--epochs", "3")
    warning = "--method ume does not read --epochs (read by the trainable methods); ignored"
    assert f"umt-train: warning: {warning}" in capsys.readouterr().err.splitlines()
    assert json.loads((ume / "results.json").read_text())["ignored_flags"] == [warning]
    assert f"- **warning:** {warning}" in (ume / "report.md").read_text().splitlines()


def test_guide_reports_evidence_and_a_choice(data, teachers, tmp_path, capsys):
    joint = train(data, tmp_path / "joint", "--method", "joint", "--max-steps", "4", "--no-probe") / "model.pt"
    members = [f"--member={m}={p}" for m, p in teachers.items()]
    guide_main(["--data", str(data), "--joint", str(joint), "--out", str(tmp_path / "g"), *members])
    result = json.loads((tmp_path / "g" / "guide.json").read_text())
    assert set(result["evidence"]) == {"unimodal_audio", "unimodal_video", "ume", "joint"}
    assert result["choice"] == ("ume" if result["evidence"]["ume"] >= result["evidence"]["joint"] else "umt")
    assert "Recommendation (paper's rule" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        guide_main(["--data", str(data), "--joint", str(joint), "--split", "test", *members])
    assert "never on the test split" in capsys.readouterr().err


def test_paper_rule_wording_follows_the_fusion_head():
    from umt.engine.guide import paper_rule
    for fusion in ("linear", "sum"):
        choice, reason = paper_rule({"ume": 0.5, "joint": 0.6}, fusion, "val")
        assert choice == "umt" and "not from reading paired cues" in reason and "ensemble cannot" not in reason
    choice, reason = paper_rule({"ume": 0.5, "joint": 0.6}, "mlp", "val")
    assert "paired cues" in reason and "not from reading" not in reason
    assert paper_rule({"ume": 0.6, "joint": 0.6}, "mlp", "val")[0] == "ume"


@pytest.mark.parametrize("method", ["joint", "umt"])
def test_bf16_mixed_precision_on_cpu(data, cache, tmp_path, method):
    """In its own process: Accelerate fixes the precision once per process."""
    extra = ["--cache", str(cache)] if method == "umt" else []
    run = tmp_path / method
    subprocess.run([sys.executable, "-m", "umt.engine.cli", "--data", str(data), "--out", str(run), *MODEL_ARGS,
                    "--method", method, *extra, "--precision", "bf16", "--max-steps", "3", "--log-every", "1",
                    "--no-probe"], check=True, capture_output=True, timeout=300)
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(steps) == 3 and all(math.isfinite(s["loss"]) for s in steps)
    assert json.loads((run / "results.json").read_text())["steps"] == 3
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))  # the default tracker got the metrics


def test_ogm_coefficients_on_a_constructed_batch():
    from umt.engine.methods.ogm_ge import ogm_coefficients
    labels = torch.tensor([0, 1])
    confident = torch.tensor([[4.0, 0.0], [0.0, 4.0]])   # p(y) = 0.982 on both samples
    unsure = torch.zeros(2, 2)                            # p(y) = 0.5
    k = ogm_coefficients({"audio": confident, "video": unsure}, labels, alpha=0.5)
    ratio = 2 * 0.98201379 / 1.0
    assert k["audio"] == pytest.approx(1 - math.tanh(0.5 * ratio), rel=1e-5)  # the dominant modality is slowed
    assert k["video"] == 1.0
    net = LateFusionNet(ModelConfig(("video", "audio"), 2, width=4, fusion="linear"))
    feats = {"video": torch.randn(3, 32), "audio": torch.randn(3, 32)}
    shares = net.modality_logits(feats)
    assert torch.allclose(shares["video"] + shares["audio"], net.head(torch.cat([feats["video"], feats["audio"]], 1)), atol=1e-6)


def test_gradient_blending_weights_follow_g_over_o_squared():
    from umt.engine.methods.gblend import blend_weights
    prev = {"fused": (2.0, 2.0), "audio": (2.0, 2.0), "video": (2.0, 2.0)}
    now = {"fused": (1.0, 1.5),    # G = 0.5, O = 0.5  → 2.0
           "audio": (0.5, 1.9),    # G = 0.1, O = 1.4  → 0.051
           "video": (1.8, 2.1)}    # G = -0.1 → 0
    w = blend_weights(prev, now)
    assert w["video"] == 0 and w["fused"] > w["audio"] > 0 and sum(w.values()) == pytest.approx(1)
    assert w["fused"] / w["audio"] == pytest.approx((0.5 / 0.25) / (0.1 / 1.96), rel=1e-4)


@pytest.mark.parametrize("method", ["ogm-ge", "gblend"])
def test_balancing_methods_train(data, tmp_path, method):
    run = train(data, tmp_path / method, "--method", method, "--epochs", "2", "--log-every", "1", "--no-probe",
                *(["--ogm-alpha", "0.8"] if method == "ogm-ge" else []))
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(math.isfinite(r["loss"]) for r in steps)
    if method == "ogm-ge":
        assert all(0 < r["ogm_k_video"] <= 1 and 0 < r["ogm_k_audio"] <= 1 for r in steps)
        assert any(min(r["ogm_k_video"], r["ogm_k_audio"]) < 1 for r in steps)
    else:
        weights = [r["blend_weights"] for r in records if "blend_weights" in r]
        assert len(weights) == 2 and weights[0] == pytest.approx({"fused": 1 / 3, "audio": 1 / 3, "video": 1 / 3})
        assert sum(weights[1].values()) == pytest.approx(1)


def test_guide_trains_what_is_missing(data, teachers, tmp_path):
    from pathlib import Path
    config = Path(__file__).resolve().parent.parent / "configs" / "synth-demo.yaml"
    out = tmp_path / "guide"
    argv = ["--data", str(data), "--out", str(out), f"--member=video={teachers['video']}", "--train-missing",
            str(config), "--set", "optim.max_steps=3", "--set", "run.probe=false", "--set", "model.width=4",
            "--set", "optim.batch_size=8", "--set", "data.workers=0",
            "--set", "data.view={frames: 3, stride: 2, crop: 16, audio_seconds: 0.25, mel_bins: 16}"]
    guide_main(argv)
    assert all((out / name / "model.pt").is_file() for name in ("audio", "joint", "umt"))
    assert not (out / "video").exists()  # given, not trained
    first = (out / "joint" / "model.pt").stat().st_mtime_ns
    guide_main(argv)  # a rerun reuses what it trained
    assert (out / "joint" / "model.pt").stat().st_mtime_ns == first
    result = json.loads((out / "guide.json").read_text())
    assert result["choice"] in ("ume", "umt") and result["umt"] == str(out / "umt" / "model.pt")
    best = max(result["evidence"][k] for k in ("ume", "joint", "umt"))
    assert result["evidence"][result["recommendation"]] == best
    assert "Paper's rule (UME vs joint)" in (out / "guide.md").read_text()

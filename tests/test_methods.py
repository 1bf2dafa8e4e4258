import json

import pytest
import torch

from umt.engine.guide import main as guide_main
from umt.engine.models import LateFusionNet, ModelConfig
from umt.engine.ume import combine, fit_weights

from conftest import train


def test_fusion_heads_and_projector_shapes():
    batch = {"video": torch.randint(0, 255, (2, 3, 16, 16, 3), dtype=torch.uint8), "audio": torch.randn(2, 1, 16, 26)}
    for fusion in ("linear", "mlp", "sum"):
        net = LateFusionNet(ModelConfig(("video", "audio"), 5, width=4, fusion=fusion, projector=True))
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
    ume = train(data, tmp_path / "ume", "--method", "ume", "--ume-combine", "probs", "--ume-fit-weights",
                *[f"--member={m}={p}" for m, p in teachers.items()])
    res = json.loads((ume / "results.json").read_text())
    assert res["ume"]["combine"] == "probs" and sum(res["ume"]["weights"].values()) == pytest.approx(1.0)
    assert 0 <= res["test_top1"] <= res["test_top5"] <= 1 and len(res["per_class_top1"]) == 4


def test_guide_reports_evidence_and_a_choice(data, teachers, tmp_path, capsys):
    joint = train(data, tmp_path / "joint", "--method", "joint", "--max-steps", "4", "--no-probe") / "model.pt"
    guide_main(["--data", str(data), "--joint", str(joint), "--out", str(tmp_path / "g"),
                *[f"--member={m}={p}" for m, p in teachers.items()]])
    result = json.loads((tmp_path / "g" / "guide.json").read_text())
    assert set(result["evidence"]) == {"unimodal_audio", "unimodal_video", "ume", "joint"}
    assert result["choice"] == ("ume" if result["evidence"]["ume"] >= result["evidence"]["joint"] else "umt")
    assert "Recommendation" in capsys.readouterr().out

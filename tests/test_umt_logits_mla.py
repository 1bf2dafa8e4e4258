"""UMT's logit targets (cached beside the features, KL distillation) and MLA."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import accelerate.utils
import numpy as np
import pytest
import torch
import webdataset as wds
import zarr
from hypothesis import given, settings, strategies as st

from umt.cache.builder import ShardViews
from umt.loaders.stored.cache_store import CacheError
from umt.engine import config_files, resume
from umt.engine.checkpoint import load_model
from umt.engine.cli import main as train_main
from umt.engine.config import ConfigError, TrainConfig
from umt.engine.methods import method_for, resolved
from umt.engine.methods.mla import Mla, owm_update
from umt.engine.methods.umt import kd_loss
from umt.engine.models import LateFusionNet, ModelConfig, entropy_weights
from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.shards import load_manifest, modality_inputs
from umt.loaders.stored.views import ViewPolicy, ViewSpec

from conftest import accelerate_launch, kill_and_resume


def test_cached_logits_equal_the_teachers_logits_on_the_same_views(data, teachers, cache):
    group = zarr.open_group(str(cache), mode="r")
    assert group.attrs["format"] == "umt-cache/4"
    decode = ShardViews(ViewSpec.of(group.attrs["view_spec"]), ["audio", "video"], group.attrs["seed"],
                        group.attrs["num_views"])
    models = {m: load_model(p)[0].eval() for m, p in teachers.items()}
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(data / "train-000001.tar")]), wds.tarfile_to_samples()))
    for sample in samples[:5]:
        item = decode(sample)
        for m, model in models.items():
            with torch.no_grad():
                logits, _ = model({m: item[m]})  # the teacher's whole forward on the V views
            cached = torch.from_numpy(group[f"logits/{m}"][item["row"]]).float()
            assert cached.shape == logits.shape == (2, 4)
            assert ((cached - logits).abs() <= logits.abs() * 2 ** -11 + 1e-4).all()  # float16 rounding


def test_kd_term_by_hand():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    t = 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    kl = [sum(p * math.log(p / q) for p, q in zip(softmax(tr), softmax(sr)))
          for sr, tr in zip(student.tolist(), teacher.tolist())]
    assert kd_loss(student, teacher, t).item() == pytest.approx(t * t * sum(kl) / 2, rel=1e-6)
    assert kd_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def _steps(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_cached_and_online_logit_distillation_give_the_same_loss(data, teachers, cache):
    spec = ViewSpec(**zarr.open_group(str(cache), mode="r").attrs["view_spec"])
    mods = ("video", "audio")
    losses = {}
    for source in ({"cache": str(cache)}, {"teachers": {m: str(p) for m, p in teachers.items()}}):
        cfg = TrainConfig(data=str(data), out="", method="umt", modalities=mods, width=4, view=spec,
                          distill_targets="both", **source)
        method = method_for(cfg)
        torch.manual_seed(0)
        net = LateFusionNet(ModelConfig(mods, 4, 4, inputs=modality_inputs(load_manifest(data), mods, data),
                                        **method.model_options()))
        seed, views = method.prepare(net, torch.device("cpu"))
        batch = next(iter(make_loader(data, "train", spec=spec, modalities=list(mods), policy=ViewPolicy(0, 0, True, 2),
                                      batch_size=8)))
        assert (seed, views) == (0, 2) or "teachers" in source
        logits, feats = net(batch)
        losses[next(iter(source))] = method.loss(net, batch, logits, feats)[1]
    cached, online = losses["cache"], losses["teachers"]
    assert cached["distill_kl"] > 0 and cached["distill"] > 0
    assert cached["ce"] == online["ce"]  # same weights and batch
    assert cached["distill_kl"].item() == pytest.approx(online["distill_kl"].item(), rel=1e-3)  # float16 cache
    assert cached["distill"].item() == pytest.approx(online["distill"].item(), rel=1e-3)


# --- MLA -------------------------------------------------------------------------------------------



MLA_ARGS = ["--method", "mla", "--modality", "strong", "--modality", "weak",  # no --fusion: mla picks shared
            "--batch-size", "16", "--width", "4", "--workers", "0", "--no-probe", "--log-with", "none"]


def test_mla_alternates_modalities_and_learns_above_chance(strong_weak, tmp_path):
    train_main(["--data", str(strong_weak), "--out", str(tmp_path / "run"), *MLA_ARGS, "--epochs", "4",
                "--log-every", "1", "--lr", "0.01"])
    steps = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    trained = [next(k[3:] for k in r if k.startswith("ce_")) for r in steps]
    assert trained == ["strong", "weak"] * (len(steps) // 2) + ["strong"] * (len(steps) % 2)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_top1"] > 0.6  # 3 classes: chance 1/3; the strong view alone allows ~0.8
    assert results["fusion"] == "shared"  # the method's, as no --fusion was given
    assert config_files.load(str(tmp_path / "run" / "config.yaml"), []).optimizer == "sgd"  # the official code's


def test_mla_refuses_a_head_it_cannot_share(strong_weak, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--data", str(strong_weak), "--out", str(tmp_path / "x"), *MLA_ARGS, "--fusion", "linear"])
    assert "use --fusion shared, or name none (got 'linear')" in capsys.readouterr().err


def test_owm_projection_by_hand():
    # P = I, r = (1, 0), α = 0.1: k = (1, 0), P − k kᵀ/(α + 1) = diag(1 − 1/1.1, 1), then / its Frobenius norm
    p = owm_update(torch.eye(2), torch.tensor([1.0, 0.0]), 0.1)
    a = 1 - 1 / 1.1
    assert torch.allclose(p, torch.tensor([[a, 0.0], [0.0, 1.0]]) / math.hypot(a, 1.0), atol=1e-7)


def test_mla_step_projects_the_shared_head_gradient_away_from_protected_features():
    """With mla_projection (textbook OWM): after steps on features r1 then r2, the head's update ΔW ∝ −G Pᵀ
    leaves W·r1 and W·r2 (nearly) alone. By default, as the official results, the gradient is left as it is."""
    cfg = TrainConfig(data="", out="", method="mla", modalities=("a", "b"), fusion="shared", width=1,
                      mla_projection=True)
    method, plain = Mla(cfg), Mla(TrainConfig(data="", out="", method="mla", modalities=("a", "b"), width=1))
    torch.manual_seed(0)
    net = LateFusionNet(ModelConfig(("a", "b"), 3, 1, "shared", inputs={m: {"kind": "vector", "dim": 8} for m in "ab"}))
    # Accelerate's own reduce (one process: the identity), without an Accelerator: that would fix the
    # process's device and precision for the in-process training runs of later tests
    accelerator = SimpleNamespace(reduce=accelerate.utils.reduce)
    method.begin_epoch(0, range(0, 4))
    gen = torch.Generator().manual_seed(0)
    expected = torch.eye(8)
    seen = []
    for step in range(3):
        feats = net.features({m: 100 * torch.rand(5, 8, generator=gen) for m in "ab"})  # rᵀPr ≫ α
        logits = net.fuse(feats)
        loss, _ = method.loss(net, {"label": torch.tensor([0, 1, 2, 0, 1])}, logits, feats)
        net.zero_grad()
        loss.backward()
        g = net.head.weight.grad.clone()
        plain.begin_epoch(0, range(0, 4))
        plain.loss(net, {"label": torch.tensor([0, 1, 2, 0, 1])}, logits, feats)
        plain.after_backward(net, {}, feats, 0, step, accelerator)
        assert torch.equal(net.head.weight.grad, g) and plain.projector is None  # the default: no projection
        method.after_backward(net, {}, feats, 0, step, accelerator)
        r = feats["ab"[step % 2]].detach().mean(0).double()
        if step == 0:  # the first step of a run is neither projected nor recorded
            assert torch.equal(net.head.weight.grad, g)
            assert all(p.grad is not None for p in net.encoders["a"].parameters())
            assert all(p.grad is None for p in net.encoders["b"].parameters())  # idle encoder: no update
            continue
        alpha = 0.1 ** (1 + step / 4)
        k = expected.double() @ r
        expected = expected.double() - torch.outer(k, k) / (alpha + r @ k)
        expected = (expected / expected.norm()).float()
        seen.append(r.float())
        assert torch.allclose(net.head.weight.grad, g @ expected.T, atol=1e-6)
        # ΔW ∝ −G Pᵀ moves W·r by −G P r: tiny along the recorded features, unlike along a direction u ⟂ them
        basis = torch.linalg.qr(torch.stack(seen).T).Q
        u = torch.linalg.qr(torch.cat([basis, torch.rand(8, 1, generator=gen)], 1)).Q[:, -1]
        for protected in seen:
            assert (expected @ protected).norm() / protected.norm() < 0.1 * (expected @ u).norm()
    assert method.steps == 3


def test_entropy_fusion_weights_by_hand():
    net = LateFusionNet(ModelConfig(("a", "b"), 2, 1, "shared", inputs={m: {"kind": "vector", "dim": 4} for m in "ab"}))
    with torch.no_grad():  # the shared head reads the first two feature units as the logits
        net.head.weight.copy_(torch.eye(2, 8))
        net.head.bias.zero_()
    feats = {"a": torch.tensor([[2.0, 0.0] + [0.0] * 6, [0.0, 0.0] + [0.0] * 6]),
             "b": torch.tensor([[0.0, 1.0] + [0.0] * 6, [0.0, 3.0] + [0.0] * 6])}

    def entropy(logits):
        z = [math.exp(v) for v in logits]
        return -sum(v / sum(z) * math.log(v / sum(z)) for v in z)

    fused = net.fuse(feats)
    for i in range(2):
        za, zb = feats["a"][i, :2].tolist(), feats["b"][i, :2].tolist()
        wa, wb = math.exp(-entropy(za)), math.exp(-entropy(zb))
        wa, wb = wa / (wa + wb), wb / (wa + wb)
        assert fused[i].tolist() == pytest.approx([wa * x + wb * y for x, y in zip(za, zb)], rel=1e-6)
    # sample 1: modality a is uninformative (uniform, weight smallest possible), b is confident
    assert fused[1, 1] > 0.5 * 3.0


def test_killed_mla_run_resumes_bit_for_bit(strong_weak, tmp_path):
    """The projector P and the alternation counter are checkpointed: killed in epoch 2, resumed, equal."""
    args = ["--data", str(strong_weak), *MLA_ARGS, "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "1"]
    kill_and_resume(tmp_path, args, epochs=2, kill_at=25)


def test_a_checkpoint_saved_before_the_new_settings_still_resumes(tmp_path):
    """Settings added by this issue default to the old behaviour, so an older checkpoint's config matches."""
    cfg = TrainConfig(data="d", out=str(tmp_path), resume="latest")
    cfg = resolved(cfg)
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ("distill_targets", "logit_temperature", "logit_weight", "mla_projection", "optimizer",
                        "momentum", "nesterov")}
    resume.checkpoint_path(tmp_path).parent.mkdir(parents=True)
    torch.save({"config": old}, resume.checkpoint_path(tmp_path))
    assert resume.load(cfg)["config"] == old
    with pytest.raises(ConfigError, match=r"other settings \(distill_targets\)"):
        resume.load(dataclasses.replace(cfg, distill_targets="both"))
    with pytest.raises(ConfigError, match=r"other settings \(optimizer\)"):  # older runs all trained with AdamW
        resume.load(dataclasses.replace(cfg, optimizer="sgd"))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=12, max_size=12), st.floats(0.01, 0.1))
def test_owm_and_entropy_rules_hold_for_any_input(values, alpha):
    r = torch.tensor(values[:4], dtype=torch.float64)
    p = torch.eye(4, dtype=torch.float64) + 0.1 * torch.outer(r.flip(0), r.flip(0))  # symmetric, positive definite
    new = owm_update(p, r, alpha)
    # still a projector-like matrix: symmetric, positive semi-definite, unit Frobenius norm
    assert torch.allclose(new, new.T) and new.norm().item() == pytest.approx(1.0)
    assert torch.linalg.eigvalsh(new).min() >= -1e-9
    logits = torch.tensor(values, dtype=torch.float64).view(2, 2, 3)  # 2 modalities, 2 samples, 3 classes
    w = entropy_weights(logits).double()
    assert torch.allclose(w.sum(0), torch.ones(2, dtype=torch.float64)) and (w > 0).all()
    probs = logits.softmax(-1)
    entropy = -(probs * probs.log()).sum(-1)
    for i in range(2):  # the more certain modality never weighs less
        assert (w[0, i] >= w[1, i]) == (entropy[0, i] <= entropy[1, i]) or torch.isclose(entropy[0, i], entropy[1, i])

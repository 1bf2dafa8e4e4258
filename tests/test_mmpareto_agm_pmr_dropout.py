"""MMPareto, AGM, PMR and modality dropout: each method's defining quantity on a constructed case,
computed here by hand; then all four trained by 2 processes on a vector set (above chance, replicas
identical); PMR (SGD) killed and resumed bit for bit, G-Blending on 2 processes too; each method's
optimiser and fusion when the run names none."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from umt.engine.config import ConfigError, TrainConfig
from umt.engine.evaluate import collect
from umt.engine.methods import REGISTRY, method_for, resolved
from umt.engine.methods.agm import Agm, agm_coefficients, mono_responses
from umt.engine.methods.dropout import ModalityDropout, dropped_modality
from umt.engine.methods.mmpareto import MMPareto, combine, pareto_weights
from umt.engine.methods.pmr import Pmr, class_means, updated_prototypes
from umt.engine.models import LateFusionNet, ModelConfig
from umt.loaders.stored.shards import load_manifest, modality_inputs

from conftest import accelerate_launch, kill_and_resume

ROOT = Path(__file__).resolve().parents[1]
MODS = ("a", "b")


def small_net(fusion: str = "linear", **options) -> LateFusionNet:
    torch.manual_seed(0)
    inputs = {m: {"kind": "vector", "dim": 3} for m in MODS}
    return LateFusionNet(ModelConfig(MODS, 3, width=1, fusion=fusion, inputs=inputs, **options))


def config(method: str, **settings) -> TrainConfig:
    return TrainConfig(data="unused", out="unused", method=method, modalities=MODS, **settings)




def test_each_method_trains_with_its_official_optimiser_and_fusion_unless_told():
    sgd = {"ogm-ge", "mmpareto", "pmr", "mla"}  # their official code: SGD, momentum 0.9
    for method in ("joint", "unimodal", "umt", "ogm-ge", "gblend", "mmpareto", "agm", "pmr", "dropout", "mla"):
        cfg = resolved(config(method))
        assert (cfg.optimizer, cfg.fusion) == ("sgd" if method in sgd else "adamw",
                                               "shared" if method == "mla" else "linear"), method
    told = resolved(config("pmr", optimizer="adamw", fusion="sum"))
    assert (told.optimizer, told.fusion) == ("adamw", "sum")
    assert resolved(config("ume")).fusion is None  # evaluation only: no head to pick
    with pytest.raises(ConfigError, match="use --fusion shared, or name none"):
        method_for(config("mla", fusion="linear"))


# --- MMPareto ---------------------------------------------------------------------------------

def test_pareto_rule_on_conflicting_gradients_by_hand():
    # one encoder of two tensors: g = ((3, 0), (0)), h = ((-1, 2), (1)); g·h = -3 < 0: they conflict
    g = [torch.tensor([3.0, 0.0]), torch.tensor([0.0])]
    h = [torch.tensor([-1.0, 2.0]), torch.tensor([1.0])]
    # min over k of |k g + (1-k) h|^2 = k^2 gg + 2k(1-k) gh + (1-k)^2 hh, gg = 9, gh = -3, hh = 6:
    # derivative 0 at k = (hh - gh) / (gg + hh - 2 gh) = 9 / 21
    k = 9 / 21
    assert pareto_weights(9.0, -3.0, 6.0) == pytest.approx((k, 1 - k))
    new, cos, k_g = combine(g, h, gamma=1.5)
    assert k_g == pytest.approx(k) and cos == pytest.approx(-3 / math.sqrt(9 * 6))
    c1 = [2 * (k * 3 + (1 - k) * -1), 2 * (1 - k) * 2]         # 2 k g + 2 (1-k) h, first tensor: (10/7, 16/7)
    c2 = 2 * (1 - k) * 1                                       # second tensor: 8/7
    scale1 = max(1.0, math.hypot(2, 2) / math.hypot(*c1))     # ‖g+h‖ / ‖c‖ per tensor, at least 1
    scale2 = max(1.0, 1 / c2)                                  # 8/7 > 1 = ‖g+h‖: no enlargement
    assert new[0].tolist() == pytest.approx([1.5 * scale1 * c for c in c1])
    assert new[1].tolist() == pytest.approx([1.5 * scale2 * c2])
    combined = torch.cat(new)
    assert combined @ torch.cat(g) >= 0 and combined @ torch.cat(h) >= 0  # the Pareto property
    # agreeing gradients: equal weights, so the summed gradient, times γ
    agree, _, k_agree = combine([torch.tensor([1.0, 2.0])], [torch.tensor([2.0, 1.0])], gamma=1.5)
    assert k_agree == 0.5 and agree[0].tolist() == pytest.approx([4.5, 4.5])


def test_mmpareto_step_on_a_real_net_is_pareto_for_each_encoder():
    net = small_net(aux_heads=True)
    method = MMPareto(config("mmpareto"))
    torch.manual_seed(0)  # a batch on which encoder a's two gradients conflict and b's agree
    batch = {"a": torch.randn(32, 3), "b": torch.randn(32, 3), "label": torch.randint(0, 3, (32,))}
    # the two losses' gradients of each encoder, separately, by plain autograd
    logits, feats = net(batch)
    fused_loss = F.cross_entropy(logits, batch["label"])
    expected = {}
    for m in MODS:
        params = list(net.encoders[m].parameters())
        g = torch.autograd.grad(fused_loss, params, retain_graph=True)
        h = torch.autograd.grad(F.cross_entropy(net.aux_heads[m](feats[m]), batch["label"]), params,
                                retain_graph=True)
        expected[m] = (g, h)
    logits, feats = net(batch)
    loss, _ = method.loss(net, batch, logits, feats)
    loss.backward()
    parts = method.after_backward(net, batch, feats, 0, 0, Accelerator(cpu=True))
    assert parts["pareto_cos_a"] < 0 < parts["pareto_cos_b"]  # both branches of the rule
    for m in MODS:
        tensors_g, tensors_h = expected[m]
        g, h = torch.cat([x.flatten() for x in tensors_g]), torch.cat([x.flatten() for x in tensors_h])
        grad = torch.cat([p.grad.flatten() for p in net.encoders[m].parameters()])
        assert grad @ g >= 0 and grad @ h >= 0
        gg, gh, hh = float(g @ g), float(g @ h), float(h @ h)
        k = 0.5 if gh > 0 else (hh - gh) / (gg + hh - 2 * gh)
        assert parts[f"pareto_k_{m}"].item() == pytest.approx(k, rel=1e-4)
        assert parts[f"pareto_cos_{m}"].item() == pytest.approx(gh / math.sqrt(gg * hh), rel=1e-4)
        for p, gp, hp in zip(net.encoders[m].parameters(), tensors_g, tensors_h):
            c = 2 * k * gp + 2 * (1 - k) * hp
            assert torch.allclose(p.grad, 1.5 * c * max(1.0, float((gp + hp).norm() / c.norm())), rtol=1e-4, atol=1e-7)


def test_refused_configurations():
    for method, settings, message in (("mmpareto", {"grad_accum": 2}, "grad_accum 1"),
                                      ("mmpareto", {"precision": "fp16"}, "fp16"),
                                      ("agm", {"grad_accum": 2}, "grad_accum 1"),
                                      ("dropout", {"dropout_p": 1.5}, r"\[0, 1\]"),
                                      ("pmr", {"pmr_momentum": -0.1}, r"\[0, 1\]")):
        with pytest.raises(ConfigError, match=message):
            method_for(config(method, **settings))


# --- AGM ------------------------------------------------------------------------------------------

def test_agm_mono_responses_are_shapley_shares():
    torch.manual_seed(2)
    feats = {m: torch.randn(5, 8) for m in MODS}
    linear = small_net("linear")
    w, b = linear.head.weight.detach(), linear.head.bias.detach()
    responses = mono_responses(linear, feats)
    assert torch.allclose(responses["a"], feats["a"] @ w[:, :8].T + b / 2, atol=1e-6)  # W_a f_a + b/2
    assert torch.allclose(responses["b"], feats["b"] @ w[:, 8:].T + b / 2, atol=1e-6)
    mlp = small_net("mlp")
    zero = torch.zeros(5, 8)
    both, only_a, only_b = (mlp.head(torch.cat(x, 1)) for x in ((feats["a"], feats["b"]), (feats["a"], zero),
                                                                 (zero, feats["b"])))
    assert torch.allclose(mono_responses(mlp, feats)["a"], (both - only_b + only_a) / 2, atol=1e-6)


def test_agm_coefficients_and_running_scores_by_hand():
    alpha = 0.5
    net = small_net("linear")
    w, b = net.head.weight.detach(), net.head.bias.detach()
    method = Agm(config("agm", agm_alpha=alpha))
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    averages = {"a": 0.0, "b": 0.0}
    for t in (1, 2):
        feats = {"a": torch.randn(6, 8) * 3, "b": torch.randn(6, 8) * 0.1}
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        parts = method.after_backward(net, {"label": labels}, feats, 0, t - 1, accelerator)
        s = {"a": F.cross_entropy(feats["a"] @ w[:, :8].T + b / 2, labels).item(),
             "b": F.cross_entropy(feats["b"] @ w[:, 8:].T + b / 2, labels).item()}
        k = {"a": math.exp(alpha * min(math.exp(averages["b"] - averages["a"]) - math.exp(s["b"] - s["a"]), 10)),
             "b": math.exp(alpha * min(math.exp(averages["a"] - averages["b"]) - math.exp(s["a"] - s["b"]), 10))}
        for m in MODS:
            assert parts[f"agm_k_{m}"].item() == pytest.approx(k[m], rel=1e-5)
            weight, bias = net.encoders[m].net[0].weight.grad, net.encoders[m].net[0].bias.grad
            assert torch.allclose(weight, torch.full_like(weight, k[m])) and torch.equal(bias, torch.ones_like(bias))
        averages = {m: averages[m] * (t - 1) / t + s[m] / t for m in MODS}
        assert method.averages == pytest.approx(averages)
    # the cap: η_a = e^20 against r_a = 1 gives exp(0.1 · min(e^20 - 1, 10)) = e
    assert agm_coefficients({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 20.0}, 0.1)["a"] == pytest.approx(math.e)


# --- PMR ------------------------------------------------------------------------------------------

def test_pmr_prototypes_and_their_momentum_update_by_hand():
    means, present = class_means(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 1]), 3)
    first = updated_prototypes(None, means, present, 0.2)
    assert first.tolist() == [[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]  # class 2 has no sample: zero
    means, present = class_means(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1]), 3)
    second = updated_prototypes(first, means, present, 0.2)
    # 0.8 · new mean + 0.2 · old; class 2 again absent: keeps its old prototype
    assert second.flatten().tolist() == pytest.approx([0.8 * 4 + 0.2 * 2, 0.0, 0.0, 0.8 * 4 + 0.2 * 2, 0.0, 0.0])


def test_pmr_loss_rebalances_toward_the_weaker_modality_by_hand():
    alpha = 0.75  # exact in float32
    method = Pmr(config("pmr", pmr_alpha=alpha))
    method.prototypes = {"a": torch.tensor([[0.0, 0.0], [4.0, 0.0]]), "b": torch.tensor([[0.0, 0.0], [1.0, 0.0]])}
    labels = torch.tensor([0, 1])
    feats = {"a": torch.tensor([[0.0, 0.0], [4.0, 0.0]]),   # at their own class's prototype: a is strong
             "b": torch.tensor([[0.5, 0.0], [0.5, 0.0]])}   # halfway between b's two prototypes
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    loss, parts = method.loss(small_net(), {"label": labels}, logits, feats)
    # a: distances (0, 4) and (4, 0): softmax of the true class e^0 / (e^0 + e^-4) for both samples
    p_a = 1 / (1 + math.exp(-4))
    # b: distances (0.5, 0.5) for both samples: softmax 1/2 each
    s_a, s_b = 2 * p_a, 2 * 0.5
    assert s_a / s_b > 1  # a dominates: only b gets the prototypical loss
    assert parts["pmr_beta_a"].item() == 0.0 and parts["pmr_beta_b"].item() == alpha
    ce = (-math.log(math.exp(1) / (math.exp(1) + 1)) - math.log(math.exp(2) / (math.exp(2) + 1))) / 2
    assert loss.item() == pytest.approx(ce + alpha * -math.log(0.5))
    late = Pmr(config("pmr", pmr_start=1))  # before the rebalancing epochs: the fused cross-entropy alone
    late.prototypes = method.prototypes
    assert late.loss(small_net(), {"label": labels}, logits, feats)[0].item() == pytest.approx(ce)


def test_pmr_first_prototype_refresh_takes_plain_class_means_then_blends(strong_weak):
    """Official main_Prototype_grad.py: means before training and after epoch 0 (`epoch <= 0`), then the blend."""
    mods = ("strong", "weak")
    cfg = TrainConfig(data=str(strong_weak), out="unused", method="pmr", modalities=mods, epochs=3, width=1,
                      num_workers=0)
    method = method_for(cfg)
    torch.manual_seed(0)
    net = LateFusionNet(ModelConfig(mods, 3, 1, inputs=modality_inputs(load_manifest(strong_weak), mods, strong_weak)))
    method.prepare(net, torch.device("cpu"))
    accelerator = Accelerator(cpu=True)

    def refresh_after(epoch: int) -> dict[str, torch.Tensor]:
        """Move the encoders (new features), end `epoch`; the training split's class means, by hand."""
        with torch.no_grad():
            for p in net.encoders.parameters():
                p.add_(0.3)
        method.begin_epoch(epoch, range(0, 1))
        method.end_of_epoch(net, {}, accelerator)
        train = collect(net, cfg.data, "train", cfg.view, list(mods), 64, 0, torch.device("cpu"))
        return {m: torch.stack([train["features"][m][train["labels"] == c].mean(0) for c in range(3)]) for m in mods}

    first = refresh_after(0)
    for m in mods:
        assert torch.allclose(method.prototypes[m], first[m], rtol=1e-6, atol=1e-6), m
    second = refresh_after(1)
    for m in mods:
        assert not torch.allclose(second[m], first[m], atol=1e-3)  # the blend below is not the means again
        assert torch.allclose(method.prototypes[m], 0.8 * second[m] + 0.2 * first[m], rtol=1e-6, atol=1e-6), m


# --- modality dropout -----------------------------------------------------------------------------

def test_dropout_masks_share_p_never_all_and_do_not_depend_on_batching():
    rows, p = torch.arange(20_000), 0.3
    dropped = dropped_modality(7, 2, rows, 2, p)
    share = (dropped >= 0).float().mean().item()
    sigma = math.sqrt(p * (1 - p) / len(rows))
    assert abs(share - p) < 5 * sigma  # binomial: 5 standard deviations
    for j in range(2):  # each modality from p/2 of the samples
        assert abs((dropped == j).float().mean().item() - p / 2) < 5 * math.sqrt(p / 2 * (1 - p / 2) / len(rows))
    assert set(dropped.tolist()) == {-1, 0, 1}  # one index per sample: none loses both modalities
    halves = torch.cat([dropped_modality(7, 2, rows[1::2], 2, p), dropped_modality(7, 2, rows[::2], 2, p)])
    assert torch.equal(halves, torch.cat([dropped[1::2], dropped[::2]]))  # per sample, not per batch or rank
    assert not torch.equal(dropped_modality(7, 3, rows, 2, p), dropped)  # a new draw each epoch
    method = ModalityDropout(config("dropout", seed=7, dropout_p=p))
    method.begin_epoch(0, range(0, 4))
    net = small_net("linear")
    feats = {m: torch.randn(64, 8) for m in MODS}
    batch = {"row": torch.arange(64), "label": torch.randint(0, 3, (64,))}
    loss, _ = method.loss(net, batch, net.fuse(feats), feats)
    gone = dropped_modality(7, 0, batch["row"], 2, p)
    kept = {m: torch.where((gone == i)[:, None], 0.0, feats[m]) for i, m in enumerate(MODS)}
    assert loss.item() == pytest.approx(F.cross_entropy(net.fuse(kept), batch["label"]).item())


# --- training ------------------------------------------------------------------------------------

def gblend_args(data: Path) -> list[str]:
    """21 optimiser steps an epoch on 2 processes, 2 epochs."""
    return ["--data", str(data), "--method", "gblend", "--modality", "strong", "--modality", "weak", "--epochs", "2",
            "--batch-size", "4", "--width", "4", "--workers", "0", "--checkpoint-every", "1", "--no-probe",
            "--log-with", "none"]


# SGD at the default 0.025 per 64 samples is 0.0125 for these 2 x 16: a few methods need more in 6 epochs of 5 steps.
# LFM starts at BalanceBenchmark's alignment weight: at the authors' its cross-entropy weighs 0.1 (0.58 here at 0.05)
PEERS = {"mmpareto": "--lr 0.05", "agm": "", "pmr": "--lr 0.05", "dropout": "", "mla": "--grad-accum 2 --lr 0.05",
         "mmcosine": "", "opm": "", "cml": "", "mbsd": "", "relearning": "--relearn-every 2", "amco": "",
         "lfm": "--lr 0.05 --lfm-alpha 0.05", "reconboost": "--lr 0.05", "greedy": "--lr 0.05",
         "valuation": "--valuation-warmup 1"}


@pytest.fixture(scope="module")
def two_process_runs(strong_weak, tmp_path_factory) -> Path:
    """One 2-process launch: the peers trained to above chance, and G-Blending's uninterrupted run."""
    out = tmp_path_factory.mktemp("two-processes")
    common = (f"--data {strong_weak} --modality strong --modality weak --epochs 6 --batch-size 16 --width 4 "
              "--workers 0 --no-probe --log-with none")
    accelerate_launch(str(ROOT / "tests" / "several_runs.py"),
                      *(f"{common} --method {m} {extra} --out {out / m}" for m, extra in PEERS.items()),
                      shlex.join([*gblend_args(strong_weak), "--out", str(out / "gblend")]))
    return out


def test_two_processes_train_each_method_above_chance_with_identical_replicas(two_process_runs):
    for m in PEERS:
        results = json.loads((two_process_runs / m / "results.json").read_text())
        assert results["processes"] == 2 and results["replica_max_abs_diff"] == 0.0, m
        if m != "amco":  # AMCo as BalanceBenchmark builds it masks the dependent (strong) modality's whole logit
            # share from the 4th batch of epoch 1 on, so the strong view stops learning: 0.44 here
            assert results["test_top1"] > 0.6, (m, results["test_top1"])  # 3 classes: chance is 1/3
    assert json.loads((two_process_runs / "mla" / "results.json").read_text())["fusion"] == "shared"  # not named


def test_gblend_killed_on_two_processes_resumes_bit_for_bit(strong_weak, two_process_runs, tmp_path):
    """Killed in epoch 2: the blend weights at its end come from losses measured at the epochs' ends alike on
    every rank, so they do not depend on where the run was killed nor on which rank's state was saved."""
    kill_and_resume(tmp_path, gblend_args(strong_weak), epochs=2, kill_at=23, processes=2,
                    whole=two_process_runs / "gblend")
    records = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
               if '"val_top1"' in l]
    assert records[-1]["blend_weights"] != records[0]["blend_weights"]  # weights moved: the check had teeth


# prototypes per epoch; AGM's running scores per step; pmr: SGD (its default) with Nesterov momentum; the
# BalanceBenchmark methods (test_balancebenchmark_methods.py, test_greedy_valuation.py), Re-learning re-initialising after the kill; Greedy
# (SGD, its default) with BalanceBenchmark's ε 0.001, whose re-balancing windows (one branch's gate a running
# mean) then run from step 22 on, so the kill lands in or near one; Modality-valuation copying in epoch 2
@pytest.mark.parametrize("method, extra", [pytest.param(m, extra, id=m) for m, extra in (
    ("pmr", ["--nesterov"]), ("agm", []), ("mmcosine", []), ("opm", []), ("cml", []), ("mbsd", []),
    ("relearning", ["--relearn-every", "1"]), ("amco", []), ("lfm", []), ("reconboost", ["--fusion", "shared"]),
    ("greedy", ["--greedy-epsilon", "0.001"]), ("valuation", ["--valuation-warmup", "1"]))])
def test_killed_peer_training_resumes_to_the_same_final_weights(strong_weak, tmp_path, method, extra):
    epochs = 3 if method == "relearning" else 2  # no re-initialisation follows the last epoch
    kill_and_resume(tmp_path, ["--data", str(strong_weak), "--method", method, "--modality", "strong", "--modality",
                               "weak", "--epochs", str(epochs), "--batch-size", "8", "--width", "4", "--workers", "0",
                               "--checkpoint-every", "1", "--no-probe", "--log-with", "none", *extra],
                    epochs=epochs, kill_at=25)  # 21 steps an epoch: killed in the second, after one prototype update,
    # with 17 steps to spare before its end (a vector step takes milliseconds: the kill must not miss the epoch)
    saved = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    group, state = saved["optimizer"]["param_groups"][0], saved["optimizer"]["state"]
    if REGISTRY[method].optimizer == "sgd":  # SGD's state is its momentum buffers
        assert (group["momentum"], group["nesterov"]) == (0.9, method == "pmr") and "momentum_buffer" in state[0]
    else:
        assert "exp_avg" in state[0] and "momentum" not in group  # AdamW

"""BalanceBenchmark's other methods (MMCosine, OPM, CML, MBSD, Re-learning, AMCo, LFM, ReconBoost): each one's
defining quantity on a constructed case, computed here by hand. Their 2-process runs and kill-and-resume tests share test_mmpareto_agm_pmr_dropout.py's."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
import torch.nn.functional as F

from umt.engine.config import ConfigError, TrainConfig
from umt.engine.methods import method_for
from umt.engine.methods.amco import class_mask
from umt.engine.methods.cml import confidence_penalty
from umt.engine.methods.lfm import Lfm, alignment, alpha_gradient
from umt.engine.methods.opm import drop_probabilities, keep_masks
from umt.engine.evaluate import collect
from umt.engine.methods.relearning import Relearning, kmeans, minmax_scaled, purity
from umt.engine.models import LateFusionNet, ModelConfig
from umt.loaders.stored.shards import load_manifest, modality_inputs

MODS = ("a", "b")


def config(method: str, **settings) -> TrainConfig:
    return TrainConfig(data="unused", out="unused", method=method, modalities=MODS, **settings)


def two_dim_net(**options) -> LateFusionNet:
    """Vector encoders whose features are 8-d (width 1); the head's blocks are set by each test."""
    torch.manual_seed(0)
    return LateFusionNet(ModelConfig(MODS, 2, width=1, inputs={m: {"kind": "vector", "dim": 3} for m in MODS},
                                     **options))


# --- MMCosine -------------------------------------------------------------------------------------

def test_mmcosine_logits_are_scaled_sums_of_per_modality_cosines_by_hand():
    method = method_for(config("mmcosine", mmcosine_scale=2.0))
    net = two_dim_net(**method.model_options())
    assert net.head.bias is None
    with torch.no_grad():  # block a reads units 0-1 of f_a, block b units 0-1 of f_b
        net.head.weight.zero_()
        net.head.weight[:, :2] = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
        net.head.weight[:, 8:10] = torch.tensor([[0.0, 5.0], [2.0, 2.0]])
    f_a = torch.tensor([[6.0, 8.0] + [0.0] * 6])     # unit (0.6, 0.8)
    f_b = torch.tensor([[1.0, 0.0] + [0.0] * 6])     # unit (1, 0)
    logits = net.fuse({"a": f_a, "b": f_b})
    # class 0: cos((.6,.8),(.6,.8)) = 1 and cos((1,0),(0,1)) = 0; class 1: cos = .6 and 1/√2
    assert logits[0].tolist() == pytest.approx([2 * (1 + 0), 2 * (0.6 + 1 / math.sqrt(2))], rel=1e-6)
    # ten times the feature or a class's row: the same logits (the norm no longer counts)
    with torch.no_grad():
        net.head.weight[1, :2] *= 10
    assert net.fuse({"a": 10 * f_a, "b": f_b})[0].tolist() == pytest.approx(logits[0].tolist(), rel=1e-6)
    # the loss is the cross-entropy of these logits, and evaluation uses them (the model's own forward)
    loss, _ = method.loss(net, {"label": torch.tensor([1])}, logits, {})
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(2 - 2 * (0.6 + 1 / math.sqrt(2))))), rel=1e-6)


def test_refused_configurations():
    for method, settings, message in (("mmcosine", {"fusion": "mlp"}, "--fusion linear"),
                                      ("mmcosine", {"mmcosine_scale": 0.0}, "> 0"),
                                      ("opm", {"fusion": "mlp"}, "--fusion linear or sum"),
                                      ("opm", {"opm_p_exe": 1.5}, r"\[0, 1\]"),
                                      ("cml", {"fusion": "shared"}, "--fusion linear, sum or mlp"),
                                      ("mbsd", {"fusion": "mlp"}, "--fusion linear or sum"),
                                      ("relearning", {"relearn_every": 0}, "every >= 1"),
                                      ("amco", {"fusion": "mlp"}, "--fusion linear or sum"),
                                      ("lfm", {"fusion": "mlp"}, "--fusion linear or sum"),
                                      ("reconboost", {"fusion": "linear"}, "--fusion shared")):
        with pytest.raises(ConfigError, match=message):
            method_for(config(method, **settings))


# --- OPM ------------------------------------------------------------------------------------------

def test_opm_drop_probabilities_by_hand():
    q = drop_probabilities({"a": 3.0, "b": 1.0}, q_base=0.4, alpha=0.5)
    assert q == pytest.approx({"a": 0.4 * (1 + 0.5 * math.tanh(3 / 1 - 1)), "b": 0.0})  # b trails: never dropped
    # three modalities: a's ratio is over the others' sum, 5 / (1 + 2) − 1; none of b, c leads
    q = drop_probabilities({"a": 5.0, "b": 1.0, "c": 2.0}, q_base=0.4, alpha=0.5)
    assert q == pytest.approx({"a": 0.4 * (1 + 0.5 * math.tanh(5 / 3 - 1)), "b": 0.0, "c": 0.0})
    assert drop_probabilities({"a": 9.0, "b": 1.0}, q_base=0.9, alpha=1.0)["a"] == 1.0  # clipped to 1
    assert drop_probabilities({"a": 1.0, "b": 1.0}, q_base=0.4, alpha=0.5) == {"a": 0.0, "b": 0.0}  # a tie


def test_opm_loss_drops_the_leading_modality_and_rescales_by_hand():
    seed, labels = 3, torch.tensor([0, 1, 2, 0, 1, 2])
    net = LateFusionNet(ModelConfig(MODS, 3, width=1, inputs={m: {"kind": "vector", "dim": 3} for m in MODS}))
    with torch.no_grad():  # the head reads units 0-2 of f_a as the logits; f_b is not read; no bias
        net.head.weight.zero_()
        net.head.weight[:, :3] = torch.eye(3)
        net.head.bias.zero_()
    feats = {"a": torch.cat([5 * torch.eye(3)[labels], torch.zeros(6, 5)], 1), "b": torch.ones(6, 8)}
    logits = net.fuse(feats)
    method = method_for(config("opm", seed=seed, opm_p_exe=1.0, opm_q_base=0.4))
    loss, parts = method.loss(net, {"label": labels, "row": torch.arange(6)}, logits, feats)
    # shares: a's true-class softmax e^5 / (e^5 + 2) per sample; b's shares are b/2 = 0: 1/3 each
    s_a, s_b = 6 * math.exp(5) / (math.exp(5) + 2), 6 / 3
    q_a = 0.4 * (1 + 0.5 * math.tanh(s_a / s_b - 1))
    assert parts["opm_q_a"].item() == pytest.approx(q_a) and parts["opm_q_b"].item() == 0.0
    kept_a = [np.random.default_rng([seed, 0, row]).random(2)[0] >= q_a for row in range(6)]
    assert 0 < sum(kept_a) < 6  # this seed keeps a on some samples and drops it on others
    theta = 8 * q_a / 16  # both features 8-d
    # b is always kept, so no sample leaves; a kept: logit 5/(1 − θ) on the true class, else all logits 0
    z = 5 / (1 - theta)
    expected = sum(-math.log(math.exp(z) / (math.exp(z) + 2)) if k else math.log(3) for k in kept_a) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # p_exe 0: never modulated, the fused cross-entropy
    plain = method_for(config("opm", seed=seed, opm_p_exe=0.0))
    loss, _ = plain.loss(net, {"label": labels, "row": torch.arange(6)}, logits, feats)
    assert loss.item() == pytest.approx(-math.log(math.exp(5) / (math.exp(5) + 2)), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 50), min_size=2, max_size=4), st.floats(0, 1), st.floats(0, 2))
def test_opm_drops_at_most_the_one_leading_modality(scores, q_base, alpha):
    named = {f"m{i}": s for i, s in enumerate(scores)}
    q = drop_probabilities(named, q_base, alpha)
    dropped = [m for m, v in q.items() if v > 0]
    assert len(dropped) <= 1  # leading the others' sum: only one modality can
    for m in dropped:
        assert named[m] > sum(named.values()) - named[m] and q[m] >= q_base
    more = drop_probabilities({**named, "m0": named["m0"] * 2}, q_base, alpha)["m0"]
    assert more >= q["m0"]  # a larger lead never lowers the drop probability


def test_opm_masks_depend_on_the_sample_not_on_its_batch():
    rows, q = torch.arange(40), [0.6, 0.0]
    whole = keep_masks(1, 7, rows, q)
    assert torch.equal(torch.cat([keep_masks(1, 7, rows[::2], q), keep_masks(1, 7, rows[1::2], q)]),
                       torch.cat([whole[::2], whole[1::2]]))
    assert whole[:, 1].eq(1).all() and 0 < whole[:, 0].sum() < 40  # q = 0: always kept
    assert not torch.equal(keep_masks(1, 8, rows, q), whole)  # a new draw each step


# --- CML ------------------------------------------------------------------------------------------

def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_cml_loss_removes_a_modality_and_penalises_gained_confidence_by_hand():
    net = two_dim_net()
    with torch.no_grad():  # logits = f_a[:, :2] + f_b[:, :2] + (0.5, 0)
        net.head.weight.zero_()
        net.head.weight[:, :2] = torch.eye(2)
        net.head.weight[:, 8:10] = torch.eye(2)
        net.head.bias.copy_(torch.tensor([0.5, 0.0]))
    # each modality contradicts the other on one sample: removing either makes the rest surer
    feats = {"a": torch.tensor([[3.0, 0.0] + [0.0] * 6, [0.0, 1.0] + [0.0] * 6]),
             "b": torch.tensor([[0.0, 2.0] + [0.0] * 6, [1.0, 0.0] + [0.0] * 6])}
    labels = [0, 1]
    full = [[3.5, 2.0], [1.5, 1.0]]
    without = {"a": [[0.5, 2.0], [1.5, 0.0]], "b": [[3.5, 0.0], [0.5, 1.0]]}  # f_b + bias, f_a + bias
    method = method_for(config("cml", cml_lambda=0.25, seed=0))
    orders = set()
    for epoch in range(6):
        method.begin_epoch(epoch, range(0))
        orders.add(tuple(method.order))
        removed = method.order[0]
        loss, parts = method.loss(net, {"label": torch.tensor(labels)}, net.fuse(feats), feats)
        ce = lambda z: sum(-math.log(_softmax(row)[y]) for row, y in zip(z, labels)) / 2
        gain = sum(max(_softmax(p)) - max(_softmax(f)) for p, f in zip(without[removed], full))
        assert loss.item() == pytest.approx((ce(full) + ce(without[removed])) / 2 + 0.25 * gain, rel=1e-6)
        assert gain > 0 and parts["cml_penalty"].item() == pytest.approx(gain, rel=1e-6)
    assert orders == {("a", "b"), ("b", "a")}  # a random order per epoch
    more, fewer = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 0.0]])
    assert confidence_penalty(more, fewer, torch.tensor([0]), False).item() == 0.0  # less confident without


def test_cml_penalty_is_clamped_per_sample_and_masked_as_the_authors():
    """The authors' rank_loss on a hand-computed batch: each sample's gain clamped at 0, summed; a sample whose
    prediction the removal turned from wrong to right adds nothing (trick 1). BalanceBenchmark's clamps the sum."""
    sure = lambda a, b: 1 / (1 + math.exp(-abs(a - b)))  # max softmax of two logits
    # sample 0: without the modality surer of the same right class (+0.222); sample 1: much less sure (−0.493);
    # sample 2: wrong with it (class 1 at 0.731), right without it (class 0 at 0.953): masked
    fewer = torch.tensor([[3.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    more = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 0])
    gains = [sure(3, 0) - sure(1, 0), sure(0, 0) - sure(5, 0), sure(3, 0) - sure(0, 1)]
    assert gains[0] > 0 > gains[1] and gains[2] > 0
    authors = confidence_penalty(fewer, more, labels, batch_clamp=False).item()
    assert authors == pytest.approx(gains[0], rel=1e-6)  # gains[1] clamped alone, gains[2] masked
    assert confidence_penalty(fewer, more, torch.tensor([0, 0, 1]), False).item() == \
        pytest.approx(gains[0] + gains[2], rel=1e-6)  # sample 2 wrong without too: penalised
    assert confidence_penalty(fewer, more, labels, batch_clamp=True).item() == \
        pytest.approx(max(0.0, sum(gains)), rel=1e-6)


# --- MBSD -----------------------------------------------------------------------------------------

def test_mbsd_loss_by_hand():
    net = two_dim_net()
    with torch.no_grad():  # u_a = f_a[:, :2] + (0.2, 0), u_b = f_b[:, :2] + (0.2, 0)
        net.head.weight.zero_()
        net.head.weight[:, :2] = torch.eye(2)
        net.head.weight[:, 8:10] = torch.eye(2)
        net.head.bias.copy_(torch.tensor([0.4, 0.0]))
    pad = [0.0] * 6
    # sample 0: both right; sample 1: only b right; sample 2: neither (no agreement terms)
    feats = {"a": torch.tensor([[2.0, 0.0] + pad, [1.0, 0.0] + pad, [0.0, 0.0] + pad]),
             "b": torch.tensor([[0.5, 0.0] + pad, [0.0, 2.0] + pad, [0.0, -1.0] + pad])}
    labels = [0, 1, 1]
    u = {"a": [[2.2, 0.0], [1.2, 0.0], [0.2, 0.0]], "b": [[0.7, 0.0], [0.2, 2.0], [0.2, -1.0]]}
    fused = [[2.9, 0.0], [1.4, 2.0], [0.4, -1.0]]  # f_a + f_b + bias
    ce = lambda z: sum(-math.log(_softmax(row)[y]) for row, y in zip(z, labels)) / 3
    rs = kl = 0.0
    for i, y in enumerate(labels):
        pa, pb = _softmax(u["a"][i]), _softmax(u["b"][i])
        right = pa.index(max(pa)) == y or pb.index(max(pb)) == y
        w = abs(pa[y] - pb[y]) if right else 0.0
        assert (w > 0) == (i < 2)
        s, v = max(pa[y], pb[y]), min(pa[y], pb[y])
        rs += w * sum((x - z) ** 2 for x, z in zip(u["a"][i], u["b"][i])) / 2 / 3
        kl += w * v * (math.log(v) - s) / 3
    method = method_for(config("mbsd"))
    loss, parts = method.loss(net, {"label": torch.tensor(labels)}, net.fuse(feats), feats)
    assert parts["mbsd_rs"].item() == pytest.approx(rs, rel=1e-6)
    assert parts["mbsd_kl"].item() == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(ce(fused) + ce(u["a"]) + ce(u["b"]) + rs + kl, rel=1e-6)


# --- Re-learning ----------------------------------------------------------------------------------

def test_relearning_purity_kmeans_and_scaling_by_hand():
    # cluster 0 holds labels (0, 0, 1), cluster 1 (1, 1, 2): 2 + 2 of 6 samples carry their cluster's label
    assert purity(torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 1])) == 4 / 6
    assert minmax_scaled(torch.tensor([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])).tolist() == [[-1, -1], [0, -1], [1, -1]]
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(60) % 3
    points = centres[labels] + torch.rand(60, 2, generator=g)  # three well-separated blobs
    clusters = kmeans(points, 3, torch.Generator().manual_seed(1))
    assert purity(labels, clusters) == 1.0 and len(clusters.unique()) == 3


def test_relearning_schedule_is_the_authors_scaled_to_the_run():
    """The authors re-initialise after epochs 20, 40 and 60 of 90: scaled, a 30-epoch run re-initialises 3 times,
    a 10-epoch run too; never after the last epoch. --relearn-every keeps absolute epochs (BalanceBenchmark's 15)."""
    def fired(epochs: int, **settings) -> list[int]:
        method = Relearning(config("relearning", epochs=epochs, **settings))
        return [e for e in range(epochs) if method.due(e)]

    assert fired(90) == [20, 40, 60]
    assert fired(30) == [7, 14, 21]
    assert fired(10) == [2, 4, 6]
    assert fired(3) == [1]  # every epoch, but none after the last
    assert fired(30, relearn_every=15, relearn_times=2) == [15]


def test_relearning_moves_each_encoder_toward_its_initial_weights(strong_weak):
    mods = ("strong", "weak")
    cfg = TrainConfig(data=str(strong_weak), out="unused", method="relearning", modalities=mods, width=2,
                      batch_size=64, num_workers=0, relearn_every=2, relearn_times=1)
    method = method_for(cfg)
    assert [method.due(e) for e in range(6)] == [False, False, True, False, False, False]
    torch.manual_seed(0)
    net = LateFusionNet(ModelConfig(mods, 3, 2, inputs=modality_inputs(load_manifest(strong_weak), mods, strong_weak)))
    method.prepare(net, torch.device("cpu"))
    initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():  # "training": every weight moves
        for p in net.parameters():
            p.add_(torch.randn(p.shape))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, num_processes=1, process_index=0)
    val = collect(net, str(strong_weak), "val", cfg.view, list(mods), 64, 0, torch.device("cpu"))
    method.begin_epoch(1, range(0))
    assert method.end_of_epoch(net, val, accelerator) == {}  # not due: nothing moves
    method.begin_epoch(2, range(0))
    record = method.end_of_epoch(net, val, accelerator)["relearn"]
    for name, p in net.named_parameters():
        if not name.startswith("encoders."):
            assert torch.equal(p, before[name]), name  # the head is not re-initialised
            continue
        m = name.split(".")[1]
        w = record[m]["weight"]
        assert w == pytest.approx(math.tanh(3 * abs(record[m]["train"] - record[m]["val"])))
        assert torch.allclose(p, w * initial[name] + (1 - w) * before[name], rtol=0, atol=1e-6), name
    assert any(r["weight"] > 0 for r in record.values())  # the check above saw a real move


# --- AMCo -----------------------------------------------------------------------------------------

def test_amco_mask_ratio_follows_the_sine_ramp():
    masked = lambda epoch, batch: int(4 - class_mask(5, epoch, batch, 4, 0.3).sum())
    assert [masked(0, j) for j in range(5)] == [0] * 5                 # epoch 0: j·0/10 = 0, nothing masked
    # p = sin(π/2·l/ε), l = j·e/10: ⌊sin(π/6)·4⌋ = 2 classes, ⌊sin(π/3)·4⌋ = ⌊3.46⌋ = 3
    assert masked(1, 1) == 2 and masked(1, 2) == 3
    assert masked(1, 3) == masked(2, 9) == 4                           # ε reached: every class


def test_amco_loss_masks_the_dependent_modality_by_hand():
    seed, labels = 2, [0, 1]
    method = method_for(config("amco", seed=seed))
    net = two_dim_net(**method.model_options())
    with torch.no_grad():  # u_a = f_a[:, :2], u_b = f_b[:, :2]; A z = (z_0 + 0.5 z_1 + 0.1, 2 z_1)
        net.head.weight.zero_()
        net.head.weight[:, :2] = torch.eye(2)
        net.head.weight[:, 8:10] = torch.eye(2)
        net.head.bias.zero_()
        net.logit_map.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, 2.0]]))
        net.logit_map.bias.copy_(torch.tensor([0.1, 0.0]))
    pad = [0.0] * 6
    feats = {"a": torch.tensor([[4.0, 0.0] + pad, [3.0, 1.0] + pad]),
             "b": torch.tensor([[0.0, 0.5] + pad, [0.2, 0.0] + pad])}
    u = {"a": [[4.0, 0.0], [3.0, 1.0]], "b": [[0.0, 0.5], [0.2, 0.0]]}
    ce = lambda z: sum(-math.log(_softmax(row)[y]) for row, y in zip(z, labels)) / 2
    mapped = lambda z: [[r[0] + 0.5 * r[1] + 0.1, 2 * r[1]] for r in z]
    method.begin_epoch(1, range(0))
    expected_masks = [[1.0, 1.0]]  # batch 0 of epoch 1: p = 0
    dropped = np.random.default_rng([seed, 1, 1]).permutation(2)[0]  # batch 1: p = sin(π/6), one class of 2
    expected_masks.append([0.0 if c == dropped else 1.0 for c in range(2)])
    dependent = {"a": False, "b": False}
    for j, mask in enumerate(expected_masks):
        loss, parts = method.loss(net, {"label": torch.tensor(labels)}, torch.zeros(2, 2), feats)
        shares = {m: [[v * k for v, k in zip(row, mask)] if dependent[m] else row for row in u[m]] for m in u}
        fused = [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(shares["a"], shares["b"])]
        assert loss.item() == pytest.approx(ce(mapped(fused)) + ce(shares["a"]) + ce(shares["b"]), rel=1e-6), j
        assert parts["amco_dependent_a"].item() == float(dependent["a"])
        mass_a = sum(sum(_softmax(ra + rb)[:2]) for ra, rb in zip(shares["a"], shares["b"])) / 2
        dependent = {"a": mass_a > 0.5, "b": 1 - mass_a > 0.5}
        assert method.dependent == dependent
    assert dependent == {"a": True, "b": False}  # a carries most of the mass: masked in batch 1 already


# --- LFM ------------------------------------------------------------------------------------------

def test_lfm_alignment_and_loss_by_hand():
    u_a, u_b = [[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [0.5, 0.5]]
    total = 0.0
    for ra, rb in zip(u_a, u_b):
        p, q = _softmax(ra), _softmax(rb)
        n = [(x + y) / 2 for x, y in zip(p, q)]
        total += 0.5 * (sum(c * math.log(c / x) for c, x in zip(n, p)) + sum(c * math.log(c / y) for c, y in zip(n, q)))
    assert alignment(torch.tensor(u_a), torch.tensor(u_b)).item() == pytest.approx(total / 2, rel=1e-6)
    net = two_dim_net()
    with torch.no_grad():  # u_a = f_a[:, :2] + b/2, u_b = f_b[:, :2] + b/2 with b = 0
        net.head.weight.zero_()
        net.head.weight[:, :2] = torch.eye(2)
        net.head.weight[:, 8:10] = torch.eye(2)
        net.head.bias.zero_()
    pad = [0.0] * 6
    feats = {"a": torch.tensor([r + pad for r in u_a]), "b": torch.tensor([r + pad for r in u_b])}
    method = Lfm(config("lfm"))
    method.alpha = 0.25
    labels = [1, 0]
    fused = [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(u_a, u_b)]
    ce = sum(-math.log(_softmax(row)[y]) for row, y in zip(fused, labels)) / 2
    loss, _ = method.loss(net, {"label": torch.tensor(labels)}, net.fuse(feats), feats)
    assert loss.item() == pytest.approx(2 * (0.75 * ce + 0.25 * total / 2), rel=1e-6)


def test_lfm_alignment_weight_starts_where_the_authors_does():
    """Crema_epoch_learnable.py: cls_k = [0.05, 0.95], the alignment term weighted 0.95 before the first update;
    BalanceBenchmark swaps the two (0.05), offered as lfm.alpha."""
    assert Lfm(config("lfm")).alpha == 0.95
    assert Lfm(config("lfm", lfm_alpha=0.05)).alpha == 0.05
    with pytest.raises(ConfigError, match="lfm alpha must lie in"):
        method_for(config("lfm", lfm_alpha=0.98))  # outside the update's clip: it would jump at the first update


def test_lfm_alpha_gradient_is_the_first_tensors_block_of_the_hessian_vector_product():
    torch.manual_seed(0)  # a 1-d input for a: the first parameter tensor is 8 × 1 (8 Hessian rows to compute)
    net = LateFusionNet(ModelConfig(MODS, 2, width=1, inputs={"a": {"kind": "vector", "dim": 1},
                                                              "b": {"kind": "vector", "dim": 3}}))
    batch = {"a": torch.randn(5, 1), "b": torch.randn(5, 3),
             "label": torch.tensor([0, 1, 1, 0, 1])}
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])

    def terms(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = dict(zip(names, (t.view(s) for t, s in zip(theta.split([s.numel() for s in shapes]), shapes))))
        logits, feats = torch.func.functional_call(net, params, (batch,))
        w, b = params["head.weight"], params["head.bias"]
        u = {"a": feats["a"] @ w[:, :8].T + b / 2, "b": feats["b"] @ w[:, 8:].T + b / 2}
        p, q = u["a"].softmax(1), u["b"].softmax(1)
        n = (p + q) / 2
        js = 0.5 * ((n * (n / p).log()).sum(1) + (n * (n / q).log()).sum(1)).mean()
        return F.cross_entropy(logits, batch["label"]), js

    alpha = 0.3
    def objective(theta: torch.Tensor) -> torch.Tensor:
        ce, js = terms(theta)
        return (1 - alpha) * ce + alpha * js

    first = shapes[0].numel()  # encoders.a.net.0.weight, the model's first parameter tensor
    assert names[0] == "encoders.a.net.0.weight"
    # the Hessian's rows of that tensor, one second-order backward pass each, times g
    theta = flat.clone().requires_grad_()
    gradient = torch.autograd.grad(objective(theta), theta, create_graph=True)[0]
    rows = torch.stack([torch.autograd.grad(gradient[i], theta, retain_graph=True)[0] for i in range(first)])
    g = torch.autograd.grad(terms(theta)[0], theta)[0]
    expected = (rows @ g).mean().item()
    assert expected != 0 and alpha_gradient(net, batch, alpha) == pytest.approx(expected, rel=1e-4)
    method = Lfm(config("lfm", lfm_lr_alpha=1e-4))
    method.batch, method.alpha = batch, alpha
    method._update(net, 20)  # epoch 20: the step size halves first
    assert method.lr_alpha == 5e-5 and method.alpha == pytest.approx(alpha - 5e-5 * expected, rel=1e-9)
    method.lr_alpha = 1e9  # a huge step: clipped into [0.05, 0.95]
    method._update(net, 21)
    assert method.alpha in (0.05, 0.95)


# --- ReconBoost -----------------------------------------------------------------------------------

def test_reconboost_model_and_schedule_are_the_authors():
    """dynamic_net.py's Head (512 → 256 → C) scaled to the width, ρ from 1.0, 4-epoch phases (shortened when a run
    is too short for one cycle), and a fresh optimiser state at each phase's start."""
    method = method_for(config("reconboost", epochs=30))
    net = two_dim_net(fusion="shared", **method.model_options())  # width 1: 8-d features
    assert [tuple(m.weight.shape) for m in net.head if isinstance(m, torch.nn.Linear)] == [(4, 8), (2, 4)]
    assert net.rate.item() == 1.0
    assert [method.phase(e)[0] for e in range(17)] == ["a"] * 4 + [None] * 4 + ["b"] * 4 + [None] * 4 + ["a"]
    assert [e for e in range(17) if method.fresh_optimizer(e)] == [0, 4, 8, 12, 16]
    assert [method_for(config("reconboost", epochs=e)).phase_epochs for e in (3, 10, 16, 90)] == [1, 2, 4, 4]
    bb = method_for(config("reconboost", reconboost_rate=0.01, reconboost_epochs=1, reconboost_head="linear"))
    net = two_dim_net(fusion="shared", **bb.model_options())
    assert isinstance(net.head, torch.nn.Linear) and net.rate.item() == pytest.approx(0.01)


def test_reconboost_phases_and_boosting_loss_by_hand():
    method = method_for(config("reconboost", fusion="shared", reconboost_epochs=1, reconboost_head="linear"))
    assert [method.phase(e) for e in range(6)] == [("a", "b", 0), (None, "b", 0), ("b", "a", 0), (None, "a", 0),
                                                   ("a", "b", 1), (None, "b", 1)]
    net = two_dim_net(fusion="shared", **method.model_options())
    with torch.no_grad():  # the shared head reads units 0-1 of a feature
        net.head.weight.zero_()
        net.head.weight[:, :2] = torch.eye(2)
        net.head.bias.zero_()
        net.rate.fill_(0.5)
    pad = [0.0] * 6
    feats = {"a": torch.tensor([[1.0, 0.0] + pad, [0.0, 2.0] + pad]),
             "b": torch.tensor([[2.0, 0.0] + pad, [1.0, 0.0] + pad])}
    labels = [0, 1]
    assert net.fuse(feats).tolist() == [[1.5, 0.0], [0.5, 1.0]]  # ρ · (h(f_a) + h(f_b))
    own, others = [[1.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.5, 0.0]]  # h(f_a); ρ·h(f_b)
    boost = sum(-5 * math.log(_softmax(o)[y]) / 2 + 1 * _softmax(e)[y] * math.log(_softmax(o)[y]) / 2
                for o, e, y in zip(own, others, labels)) / 2  # means over the 2 classes, then the 2 samples
    for epoch, ga in ((0, 0.0), (4, sum((x - z) ** 2 for o, b in zip(own, [[2.0, 0.0], [1.0, 0.0]])
                                        for x, z in zip(_softmax(o), _softmax(b))) / 4)):
        method.begin_epoch(epoch, range(0))
        loss, parts = method.loss(net, {"label": torch.tensor(labels)}, net.fuse(feats), feats)
        assert loss.item() == pytest.approx(boost + 0.5 * ga, rel=1e-6), epoch  # ga from the second cycle on
        for p in net.parameters():  # as after a backward pass of the whole model (DDP's zero gradients)
            p.grad = torch.ones_like(p)
        method.after_backward(net, {}, feats, epoch, 0, None)  # only a's learner keeps its gradient
        assert net.rate.grad is None and all(p.grad is None for p in net.encoders["b"].parameters())
        assert all(p.grad is not None for p in (*net.encoders["a"].parameters(), *net.head.parameters()))
    method.begin_epoch(1, range(0))  # a global phase: the ensemble's cross-entropy, everything learns
    loss, _ = method.loss(net, {"label": torch.tensor(labels)}, net.fuse(feats), feats)
    assert loss.item() == pytest.approx((-math.log(_softmax([1.5, 0])[0]) - math.log(_softmax([0.5, 1])[1])) / 2)

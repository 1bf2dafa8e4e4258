"""Greedy and Modality-valuation: each one's defining quantity on a constructed case, computed here by hand.
Their 2-process runs and kill-and-resume tests share test_mmpareto_agm_pmr_dropout.py's."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from umt.engine.config import ConfigError, TrainConfig
from umt.engine.evaluate import collect
from umt.engine.methods import method_for, resolved
from umt.engine.methods.greedy import MMTM, bdr_gap, learning_speed
from umt.engine.methods.valuation import copies, shapley_values
from umt.engine.models import LateFusionNet, ModelConfig
from umt.loaders.stored.shards import load_manifest, modality_inputs

MODS = ("a", "b")
CPU = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, num_processes=1, process_index=0)


def config(method: str, **settings) -> TrainConfig:
    return TrainConfig(data="unused", out="unused", method=method, modalities=MODS, **settings)


def vector_net(fusion: str, **options) -> LateFusionNet:
    """Vector encoders with 8-d features (width 1), 2 classes."""
    torch.manual_seed(0)
    return LateFusionNet(ModelConfig(MODS, 2, width=1, fusion=fusion,
                                     inputs={m: {"kind": "vector", "dim": 3} for m in MODS}, **options))


def close(tensor: torch.Tensor, nested: list) -> bool:
    return torch.allclose(tensor, torch.tensor(nested))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_defaults_and_refused_configurations():
    assert (resolved(config("greedy")).optimizer, resolved(config("greedy")).fusion) == ("sgd", "sum")
    assert (resolved(config("valuation")).optimizer, resolved(config("valuation")).fusion) == ("adamw", "linear")
    for method, settings, message in (("greedy", {"fusion": "linear"}, "--fusion sum"),
                                      ("greedy", {"modalities": ("a", "b", "c")}, "two modalities"),
                                      ("greedy", {"greedy_window": 0}, "window >= 1"),
                                      ("greedy", {"precision": "fp16"}, "fp16"),
                                      ("valuation", {"fusion": "shared"}, "--fusion linear, sum or mlp"),
                                      ("valuation", {"valuation_warmup": 0}, "warmup must be >= 1")):
        with pytest.raises(ConfigError, match=message):
            method_for(TrainConfig(**{**vars(config(method)), **settings}))


# --- Greedy ---------------------------------------------------------------------------------------

def test_mmtm_gates_features_and_the_rebalanced_branch_gets_the_running_mean_by_hand():
    mmtm = MMTM({"a": 2, "b": 1}, ratio=3)  # 2·3/3 = 2 hidden units
    with torch.no_grad():  # h = ReLU(f_a0 − f_b, f_a1 + 1); g_a = σ(h_0, −h_1); g_b = σ(h_0 + h_1 − 1)
        mmtm.squeeze.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
        mmtm.squeeze.bias.copy_(torch.tensor([0.0, 1.0]))
        mmtm.excite["a"].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        mmtm.excite["a"].bias.zero_()
        mmtm.excite["b"].weight.copy_(torch.tensor([[1.0, 1.0]]))
        mmtm.excite["b"].bias.fill_(-1.0)
    feats = {"a": torch.tensor([[2.0, -3.0], [0.5, 1.0]]), "b": torch.tensor([[1.0], [2.0]])}
    # sample 0: h = (ReLU(1), ReLU(−2)) = (1, 0); sample 1: h = (ReLU(−1.5), ReLU(2)) = (0, 2)
    g_a = [[sigmoid(1), sigmoid(0)], [sigmoid(0), sigmoid(-2)]]
    g_b = [[sigmoid(0)], [sigmoid(1)]]
    out = mmtm(feats)
    assert close(out["a"], [[2 * g_a[0][0], -3 * g_a[0][1]], [0.5 * g_a[1][0], g_a[1][1]]])
    assert close(out["b"], [[g_b[0][0]], [2 * g_b[1][0]]])
    # the running mean of the batch-mean gates over the micro-batches seen
    first = torch.tensor([0.2, 0.4, 0.6])
    mmtm.remember(first)
    mmtm.remember(torch.tensor([0.4, 0.0, 1.0]))
    assert mmtm.running.tolist() == pytest.approx([0.3, 0.2, 0.8]) and int(mmtm.seen) == 2
    mmtm.caring = "a"  # re-balancing a: its gate is the running mean, b's is still computed
    out = mmtm.train()(feats)
    assert close(out["a"], [[2 * 0.3, -3 * 0.2], [0.5 * 0.3, 0.2]])
    assert close(out["b"], [[g_b[0][0]], [2 * g_b[1][0]]])
    assert close(mmtm.eval()(feats)["a"], [[2 * g_a[0][0], -3 * g_a[0][1]],
                                                               [0.5 * g_a[1][0], g_a[1][1]]])  # evaluation: never


def test_greedy_loss_sums_the_branch_cross_entropies_and_remembers_the_gates():
    method = method_for(config("greedy"))
    net = vector_net("sum", **method.model_options())
    method.prepare(net, torch.device("cpu"))
    feats = {m: torch.randn(4, 8) for m in MODS}
    labels = torch.tensor([0, 1, 1, 0])
    loss, parts = method.loss(net, {"label": labels}, net.fuse(feats), feats)
    gates = net.mmtm.gates(feats)
    branch = {m: net.head[m](feats[m] * gates[m]) for m in MODS}
    assert loss.item() == pytest.approx(sum(F.cross_entropy(branch[m], labels).item() for m in MODS), rel=1e-6)
    assert parts["ce"].item() == pytest.approx(F.cross_entropy(branch["a"] + branch["b"], labels).item(), rel=1e-6)
    assert torch.allclose(net.mmtm.running, torch.cat([gates["a"].mean(0), gates["b"].mean(0)]))


def test_learning_speed_and_bdr_gap_by_hand():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ‖θ‖² = 25
    q = torch.nn.Parameter(torch.tensor([0.0]))
    p.grad = torch.tensor([1.0, 2.0])                  # ‖∇‖² = 5; q has no gradient
    assert learning_speed([p, q]) == pytest.approx(5 / 25)
    # BDR_a = log10(10 / 1) = 1, BDR_b = log10(2 / 20) = −1
    assert bdr_gap({"a": [1.0, 10.0], "b": [20.0, 2.0]}, ["a", "b"]) == pytest.approx(2.0)


def test_greedy_measures_d_bdr_opens_windows_on_the_faster_bypass_and_skips_measuring_in_them():
    method = method_for(config("greedy", greedy_window=2, greedy_start=1))
    net = vector_net("sum", **method.model_options())
    method.prepare(net, torch.device("cpu"))
    main = {m: [*net.encoders[m].parameters(), *net.head[m].parameters()] for m in MODS}
    gap = math.log10(1 / 4) - math.log10(1 / 1)  # BDR_a − BDR_b < −ε: b's bypass is relatively faster
    rebalanced = []

    def step() -> dict:
        """A step's gradients, each a multiple of its weight, so μ = multiple²: main a 4, main b 1, bypasses 1."""
        for scale, params in ((2.0, main["a"]), (1.0, main["b"]), (1.0, list(net.mmtm.parameters()))):
            for p in params:
                p.grad = scale * p.detach().clone()
        parts = method.after_backward(net, {}, {}, 0, 0, CPU)
        rebalanced.append(net.mmtm.excite["b"].weight.grad is None)  # the replaced gate's layer: no update
        return parts

    method.begin_epoch(0, range(0))  # before `start`: measured, no window
    parts = step()
    assert parts["greedy_d_bdr"].item() == pytest.approx(gap) and net.mmtm.caring is None
    assert parts["greedy_rebalancing"].item() == -1
    method.begin_epoch(1, range(0))
    caring = []
    for _ in range(7):
        caring.append(step()["greedy_rebalancing"].item())
        assert net.mmtm.caring == (None if caring[-1] < 0 else MODS[int(caring[-1])])
    # measured at steps 0, 3 and 6 (each opening a 2-step window for b), never inside a window
    assert caring == [1, 1, -1, 1, 1, -1, 1]
    assert rebalanced == [False, False, True, True, False, True, True, False]  # steps after a window opened
    assert method.sums["a"] == pytest.approx([4 * 4, 4 * 1]) and method.sums["b"] == pytest.approx([4, 4])
    assert method.gap == pytest.approx(gap)
    state = method.state_dict()  # a resumed run re-balances the same branch from its first step
    resumed = method_for(config("greedy", greedy_window=2, greedy_start=1))
    fresh = vector_net("sum", **method.model_options())
    resumed.prepare(fresh, torch.device("cpu"))
    resumed.load_state_dict(state)
    assert fresh.mmtm.caring == "b" and resumed.state_dict() == state


# --- Modality-valuation ---------------------------------------------------------------------------

def test_shapley_values_of_two_modalities_are_the_authors_contributions_for_every_outcome():
    outcomes = list(itertools.product([False, True], repeat=3))  # (a alone, b alone, both) right or not
    correct = {frozenset("a"): torch.tensor([o[0] for o in outcomes]),
               frozenset("b"): torch.tensor([o[1] for o in outcomes]),
               frozenset("ab"): torch.tensor([o[2] for o in outcomes])}
    values = shapley_values(correct, ["a", "b"])
    for i, (a, b, both) in enumerate(outcomes):  # v = 1 for one right modality, 2 for both: (v_a + v_all − v_b)/2
        assert values[i].tolist() == pytest.approx([(a + 2 * both - b) / 2, (b + 2 * both - a) / 2])
    # copies: 1 for 0.5, 2 for 0, 3 for −0.5, none for 1 and 1.5
    assert copies(torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5])).tolist() == [3, 2, 1, 0, 0]


def test_shapley_values_of_three_modalities_by_hand():
    # right with {a}, {a, b} and {a, b, c} only: v(a) = 1, v(ab) = 2, v(abc) = 3, every other v = 0
    right = {"a", "ab", "abc"}
    correct = {frozenset(s): torch.tensor([s in right]) for r in (1, 2, 3)
               for s in map("".join, itertools.combinations("abc", r))}
    values = shapley_values(correct, ["a", "b", "c"])[0].tolist()
    # weights |S|!(3 − |S| − 1)!/3!: 1/3 for S = ∅, 1/6 for one other, 1/3 for both others
    phi_a = 1 / 3 * 1 + 1 / 6 * (2 - 0) + 1 / 6 * (0 - 0) + 1 / 3 * (3 - 0)
    phi_b = 1 / 3 * 0 + 1 / 6 * (2 - 1) + 1 / 6 * (0 - 0) + 1 / 3 * (3 - 0)
    phi_c = 1 / 3 * 0 + 1 / 6 * (0 - 1) + 1 / 6 * (0 - 0) + 1 / 3 * (3 - 2)
    assert values == pytest.approx([phi_a, phi_b, phi_c]) and sum(values) == pytest.approx(3)  # efficiency


def test_valuation_loss_adds_the_weighted_copies_with_one_modality_present_by_hand():
    method = method_for(config("valuation", valuation_warmup=1))
    net = vector_net("linear")
    feats = {m: torch.randn(3, 8) for m in MODS}
    batch = {"label": torch.tensor([0, 1, 1]), "row": torch.tensor([4, 0, 2])}
    logits = net.fuse(feats)
    method.copies = torch.tensor([[1, 0], [0, 0], [3, 2], [0, 0], [2, 1]], dtype=torch.int8)  # rows 0..4
    method.begin_epoch(0, range(0))  # warm-up: the fused cross-entropy alone
    ce = F.cross_entropy(logits, batch["label"], reduction="none")
    assert method.loss(net, batch, logits, feats)[0].item() == pytest.approx(ce.mean().item())
    method.begin_epoch(1, range(0))
    zero = torch.zeros(3, 8)
    only_a = F.cross_entropy(net.fuse({"a": feats["a"], "b": zero}), batch["label"], reduction="none")
    only_b = F.cross_entropy(net.fuse({"a": zero, "b": feats["b"]}), batch["label"], reduction="none")
    # rows 4, 0, 2: copies (2, 1), (1, 0), (3, 2)
    extra = (2 * only_a[0] + only_b[0] + only_a[1] + 3 * only_a[2] + 2 * only_b[2]) / 3
    loss, parts = method.loss(net, batch, logits, feats)
    assert loss.item() == pytest.approx((ce.mean() + extra).item(), rel=1e-6)
    assert parts["valuation_copies"].item() == pytest.approx(9 / 3)


def test_valuation_values_every_training_sample_after_the_warm_up(strong_weak):
    mods = ("strong", "weak")
    cfg = TrainConfig(data=str(strong_weak), out="unused", method="valuation", modalities=mods, width=2, epochs=4,
                      batch_size=64, num_workers=0, valuation_warmup=2)
    method = method_for(cfg)
    torch.manual_seed(0)
    net = LateFusionNet(ModelConfig(mods, 3, 2, inputs=modality_inputs(load_manifest(strong_weak), mods, strong_weak)))
    method.begin_epoch(0, range(0))
    assert method.end_of_epoch(net, {}, CPU) == {} and method.copies is None  # before warm-up − 1: nothing
    method.begin_epoch(1, range(0))
    record = method.end_of_epoch(net, {}, CPU)
    train = collect(net, str(strong_weak), "train", cfg.view, list(mods), 64, 0, torch.device("cpu"))
    feats, zero = train["features"], {m: torch.zeros_like(f) for m, f in train["features"].items()}
    with torch.no_grad():  # v = 2 for a right prediction from both, 1 from one alone (the authors' code)
        v = {s: len(s) * (net.fuse({m: feats[m] if m in s else zero[m] for m in mods}).argmax(1) == train["labels"])
             for s in (("strong",), ("weak",), mods)}
    phi = {m: (v[(m,)] + v[mods] - v[tuple(o for o in mods if o != m)]) / 2 for m in mods}
    for j, m in enumerate(mods):  # row r of the copies is training row r: collect reads the split in row order
        expected = torch.where((phi[m] > 0.4) & (phi[m] < 0.9), 1, torch.where((phi[m] > -0.1) & (phi[m] < 0.4), 2,
                                                                               torch.where(phi[m] < -0.1, 3, 0)))
        assert torch.equal(method.copies[:, j].long(), expected), m
        assert record["valuation_copies"][m] == int(expected.sum())
        assert record["valuation_mean"][m] == pytest.approx(phi[m].mean().item())
    assert len(method.copies) == len(train["labels"]) and method.copies.any()
    method.begin_epoch(3, range(0))
    assert method.end_of_epoch(net, {}, CPU) == {}  # the last epoch: no epoch left to use new values

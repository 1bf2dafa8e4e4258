"""BalanceBenchmark's other methods (issue 21, part 2): each one's defining quantity on a constructed case,
computed here by hand. Their 2-process runs and kill-and-resume tests share test_peer_methods_a.py's."""
from __future__ import annotations

import math

import pytest
import torch

from umt.engine.config import ConfigError, TrainConfig
from umt.engine.methods import method_for
from umt.engine.models import LateFusionNet, ModelConfig

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
                                      ("mmcosine", {"mmcosine_scale": 0.0}, "> 0")):
        with pytest.raises(ConfigError, match=message):
            method_for(config(method, **settings))

"""AGM, adaptive gradient modulation (Li et al., ICCV 2023): joint training whose encoders' gradients are
scaled each step by how far each modality's mono-modal response strays from its running average.

Mono-modal responses (Shapley values of the fused logits over modalities): with f(S) the fused
logits when only the modalities in S are present (the others' features zeroed before the fusion head),
    r_m = Σ_{S ⊆ M∖{m}} |S|!(|M|−|S|−1)!/|M|! · (f(S ∪ {m}) − f(S)) + f(∅)/|M|,
so that Σ_m r_m = f(M) (for two modalities the official r_a = ½(f(av) − f(v) + f(a))).
Per step, the score of modality m is its response's mean cross-entropy over the batch,
    s_m = mean_i −log max(softmax(r_m,i)_{y_i}, 1e-8),
and with the running averages ŝ_m of the scores over all previous steps (ŝ = 0 before the first),
    ratio_m   = exp(mean_{o≠m} s_o − s_m)        (two modalities: exp(s_v − s_a), the official r)
    optimal_m = exp(mean_{o≠m} ŝ_o − ŝ_m)        (the official η)
    k_m       = exp(α · min(optimal_m − ratio_m, 10)),
then ŝ_m ← ŝ_m (t−1)/t + s_m/t at step t. Inside the modulation epochs, the gradients of encoder m's
weight tensors (every parameter of two or more dimensions: convolution and linear weights, not
biases or norms) are multiplied by k_m.

Source: lihongcs/AGM (the official code; not in our reference index) as carried over for two modalities
in GeWu-Lab/BalanceBenchmark, balancemm/trainer/AGM_trainer.py (α = 0.1 in configs/trainer_config.yaml;
the cap 10 and the sign of ratio from its two-modality branch, whose general branch flips the sign).
Deviations: a modality is made absent by zeroing its pooled feature before the fusion head (the reference
implementations pad it inside the model's forward, with extra no-grad passes; where lihongcs/AGM pads
could not be checked here): 2^|M| head evaluations and no extra encoder pass; the encoders' weight gradients
are scaled after the backward pass (as BalanceBenchmark), not through hooks on the responses; no
gradient clipping. Scores are averaged over all ranks' samples, so every replica applies the same k.
Refused: grad_accum > 1 (k comes from one batch and scales the whole window's gradients).
Optimiser: AdamW by default, BalanceBenchmark's (configs/global_config.yaml); lihongcs/AGM's could not be
checked here. Under Adam k is largely normalised away (engine/methods/base.py): `--optim sgd` keeps it.
"""
from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..options import ConfigError, MethodOptions, option
from ..models import LateFusionNet
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def mono_responses(net: LateFusionNet, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's Shapley share of the fused logits, plus an equal share of the empty set's."""
    mods = list(net.cfg.modalities)
    n = len(mods)
    outputs = {}
    for size in range(n + 1):
        for subset in itertools.combinations(mods, size):
            outputs[frozenset(subset)] = net.fuse({m: feats[m] if m in subset else torch.zeros_like(feats[m])
                                                   for m in mods})
    empty = outputs[frozenset()]
    responses = {}
    for m in mods:
        others = [o for o in mods if o != m]
        total = empty / n
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                total = total + weight * (outputs[frozenset(subset) | {m}] - outputs[frozenset(subset)])
        responses[m] = total
    return responses


def agm_coefficients(scores: dict[str, float], averages: dict[str, float], alpha: float) -> dict[str, float]:
    """k_m from this step's scores and the running averages of the previous steps' scores."""
    def ratio(values: dict[str, float], m: str) -> float:
        others = [v for o, v in values.items() if o != m]
        return math.exp(sum(others) / len(others) - values[m])
    return {m: math.exp(alpha * min(ratio(averages, m) - ratio(scores, m), 10.0)) for m in scores}


class Agm(Method):
    name = "agm"
    summary = ("joint + adaptive gradient modulation (Li et al., ICCV 2023): each encoder's weight gradients\n"
               "            scaled by exp(α·(η_m − r_m)) from its Shapley mono-modal response's cross-entropy")

    class Options(MethodOptions):
        alpha: float = option(0.1, "AGM modulation strength α (BalanceBenchmark: 0.1)")
        start: int = option(0, "AGM: first modulated epoch")
        end: int | None = option(None, "AGM: epoch at which modulation stops (default: never)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.averages = {m: 0.0 for m in cfg.modalities}  # ŝ_m, the running mean of the scores
        self.steps = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.grad_accum > 1:
            raise ConfigError("agm needs grad_accum 1: it scales each step's gradients by that batch's coefficients")

    @torch.no_grad()
    def after_backward(self, net, batch, feats, epoch, step, accelerator) -> Parts:
        responses = mono_responses(net, {m: f.detach().float() for m, f in feats.items()})
        labels = batch["label"]
        mods = list(net.cfg.modalities)
        sums = torch.stack([-F.softmax(responses[m], 1).gather(1, labels[:, None]).clamp(min=1e-8).log().sum()
                            for m in mods] + [torch.tensor(float(len(labels)), device=labels.device)])
        sums = accelerator.reduce(sums, "sum")
        scores = {m: (sums[i] / sums[-1]).item() for i, m in enumerate(mods)}
        coeffs = agm_coefficients(scores, self.averages, self.cfg.agm_alpha)
        self.steps += 1
        self.averages = {m: self.averages[m] * (self.steps - 1) / self.steps + scores[m] / self.steps for m in mods}
        if not self.cfg.agm_start <= epoch < (self.cfg.agm_end if self.cfg.agm_end is not None else math.inf):
            return {f"agm_score_{m}": torch.tensor(scores[m]) for m in mods}
        for m in mods:
            for p in net.encoders[m].parameters():
                if p.dim() > 1 and p.grad is not None:
                    p.grad.mul_(coeffs[m])
        return {**{f"agm_k_{m}": torch.tensor(k) for m, k in coeffs.items()},
                **{f"agm_score_{m}": torch.tensor(scores[m]) for m in mods}}

    def state_dict(self) -> dict[str, Any]:
        return {"averages": dict(self.averages), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averages, self.steps = dict(state["averages"]), state["steps"]

"""AMCo, adaptive mask co-optimisation (Zhou et al., ICASSP 2023, "Adaptive Mask Co-Optimization for Modal
Dependence in Multimodal Learning"), as GeWu-Lab/BalanceBenchmark implements it: the modality the model
depends on has a growing share of its logit classes masked out of the fused prediction, and every
modality's share is also trained on its own.

With u_m = W_m f_m + b/M modality m's additive share of the fused logits (LateFusionNet.modality_logits) and a
learned C×C map A after fusion (ModelConfig.logit_map, the official `linear_star`), in epoch e at the
epoch's micro-batch j (from 0):
    p = sin(π/2 · min(ε, j·e/10) / ε),   N = ⌊p·C⌋,   mask: N of the C classes (drawn per batch) set to 0,
    ũ_m = u_m ⊙ mask if m is dependent, else u_m,
    L = CE(A(Σ_m ũ_m), y) + Σ_m CE(ũ_m, y),
and after the batch, with q the softmax over the concatenated shares [ũ_1, ..., ũ_M] (M·C entries),
modality m is dependent for the next batch when (1/B) Σ_i Σ_{c in m's block} q_i,c > σ. No modality is
dependent at an epoch's start; at evaluation nothing is masked: the prediction is A(fused logits), the
map the fused loss trains (`--amco-score-sum`, `amco.score_sum`: the fused logits Σ_m u_m without A, as
BalanceBenchmark's validation scores: its `validation_step`, avclassify_model.py:302-324, re-runs
`unimodality_calculate` after the forward, which overwrites `linear_star`'s output with Σ_m u_m).
ε = 0.3, σ = 0.5 (BalanceBenchmark configs/trainer_config.yaml; its `alpha` 0.1 and `U` 512 are read but
never used by its trainer, so they are not knobs here).

Source: GeWu-Lab/BalanceBenchmark, balancemm/trainer/AMCo_trainer.py (`train_loop`: p, N, the mask and
l_t += epoch/10; `training_step`: the losses and the dependence test) and
balancemm/models/avclassify_model.py (`BaseClassifierAMCoModel` 326-372: the masked shares and `linear_star`).
No code of the authors (Zhou et al.) turned up in a search of public repositories, so
BalanceBenchmark's is the reference; its scoring of Σu instead of A(Σu) reads as a side effect, not a
choice, hence the default.
Deviations: the official mask has shape [2, C] (`mask_t.unsqueeze(0).expand(2, -1)`) and is multiplied
with shares of shape [B, C], which broadcasts only for a batch of 2; here the one class mask applies to
every sample of the batch, which is what its construction (one shuffled vector per batch) describes.
The mask is drawn from (seed, epoch, j) rather than numpy's global generator, the same on every rank
and on resume; the dependence test sums the softmax mass over all ranks' samples, so every rank
masks the same modality. j counts micro-batches (with gradient accumulation, each its own batch).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import reduce
from torch import nn

from ..models import PARTS, LateFusionNet, ModelPart
from ..options import ConfigError, MethodOptions, option
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


class LogitMap(ModelPart):
    """ModelConfig.logit_map: the learned C×C map A after the fusion head (the official `linear_star`), whose
    output is the prediction unless ModelConfig.logit_map_scored is off."""

    def build(self, net: LateFusionNet) -> None:
        net.logit_map = nn.Linear(net.cfg.num_classes, net.cfg.num_classes)

    def scored(self, net: LateFusionNet, logits: torch.Tensor) -> torch.Tensor:
        return net.logit_map(logits) if net.cfg.logit_map_scored else logits


PARTS["logit_map"] = LogitMap()


def class_mask(seed: int, epoch: int, batch: int, num_classes: int, eps: float) -> torch.Tensor:
    """[C] ones with ⌊p·C⌋ classes zeroed, p = sin(π/2·min(ε, batch·epoch/10)/ε)."""
    p = math.sin(math.pi / 2 * min(eps, batch * epoch / 10) / eps)
    masked = np.random.default_rng([seed, epoch, batch]).permutation(num_classes)[:int(p * num_classes)]
    mask = torch.ones(num_classes)
    mask[torch.from_numpy(masked)] = 0
    return mask


class Amco(Method):
    name = "amco"
    summary = ("joint + uni-modal losses; the modality the model depends on has a growing share of its logit\n"
               "            classes masked from the fused prediction (Zhou et al., ICASSP 2023; needs --fusion linear\n"
               "            or sum)")
    fusions = ("linear", "sum")
    fusion_needs = "masks each modality's share of the fused logits"

    class Options(MethodOptions):
        sigma: float = option(0.5, "AMCo: share of the softmax mass above which a modality counts as depended on "
                              "(and is masked in the next batch)")
        eps: float = option(0.3, "AMCo: ε of the mask ratio's sine ramp")
        score_sum: bool = option(False, "AMCo: evaluate the fused logits Σu, as BalanceBenchmark's validation step "
                                 "(default: A(Σu), the map the fused loss trains)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.epoch = -1
        self.batch = 0                                   # micro-batches of the epoch so far (j)
        self.dependent = {m: False for m in cfg.modalities}

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.amco_eps <= 0:
            raise ConfigError(f"amco eps must be > 0, got {cfg.amco_eps}")

    def model_options(self) -> dict[str, Any]:
        return {"logit_map": True, "logit_map_scored": not self.cfg.amco_score_sum}

    def begin_epoch(self, epoch: int, steps: range) -> None:
        if epoch != self.epoch:  # a new epoch (a resumed one keeps its restored position and flags)
            self.epoch, self.batch = epoch, 0
            self.dependent = {m: False for m in self.cfg.modalities}

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        cfg, labels, mods = self.cfg, batch["label"], list(net.cfg.modalities)
        num_classes = net.cfg.num_classes
        mask = class_mask(cfg.seed, self.epoch, self.batch, num_classes, cfg.amco_eps).to(labels.device)
        shares = net.modality_logits(feats)
        shares = {m: u * mask if self.dependent[m] else u for m, u in shares.items()}
        ce = F.cross_entropy(net.logit_map(sum(shares.values())), labels)
        uni = sum(F.cross_entropy(u, labels) for u in shares.values())
        parts = {"ce": ce.detach(), "ce_unimodal": uni.detach(), "amco_masked": num_classes - mask.sum(),
                 **{f"amco_dependent_{m}": torch.tensor(float(self.dependent[m])) for m in mods}}
        with torch.no_grad():
            mass = torch.cat([shares[m] for m in mods], 1).softmax(1).view(len(labels), len(mods), num_classes)
            sums = reduce(torch.cat([mass.sum((0, 2)), mass.new_tensor([len(labels)])]), "sum")
        self.dependent = {m: bool(sums[i] / sums[-1] > cfg.amco_sigma) for i, m in enumerate(mods)}
        self.batch += 1
        return ce + uni, parts

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "dependent": dict(self.dependent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch, self.dependent = state["epoch"], state["batch"], dict(state["dependent"])

"""CML, calibrating multimodal learning (Ma, Zhang, Zhang, Wu, Fu, Zhou, Hu, ICML 2023): joint training
plus a penalty whenever the prediction from fewer modalities is more confident than the prediction
from more, so that the model's confidence never grows when a modality is removed.

Per epoch the modalities are put in a random order r_1, ..., r_M; with z^0 the fused logits and z^k the
fused logits once r_1..r_k are removed (their features zeroed before the fusion head: for the linear
head, z^k = z^(k−1) − W_{r_k} f_{r_k}, the official `out_s − unimodal_result[removed] + bias/M`),
for k = 1 .. M − 1,
    conf(z)_i = max_c softmax(z_i)_c,   ŷ(z)_i = argmax_c z_i,c,
    s^k_i = 0 if ŷ(z^k)_i = y_i ≠ ŷ(z^(k−1))_i else 1     ("trick 1": no penalty where the removal
                                                          turned a wrong prediction right),
    L = (CE(z^0) + Σ_k CE(z^k)) / M + λ · Σ_k Σ_i max(0, s^k_i · (conf(z^k)_i − conf(z^(k−1))_i)),   λ = 0.1,
the confidence penalty clamped per sample and summed (not averaged) over the batch's samples.

Source: the authors' QingyangZhang/CML, cpm/CPM_Nets.py (`rank_loss` 98-124: the mask at 122, the per-sample
ReLU summed over the batch at 123); GeWu-Lab/BalanceBenchmark, balancemm/trainer/CML_trainer.py (`conf_loss`,
`lam` 0.1 in configs/trainer_config.yaml; λ as BalanceBenchmark, the authors' `belta` being their data
sets' own). BalanceBenchmark differs: it clamps the batch's summed gain, max(0, Σ_i (conf(z^k)_i −
conf(z^(k−1))_i)), and computes but never applies the trick-1 sign: `--cml-batch-clamp` (`cml.batch_clamp`).
Deviations: the order is drawn per epoch from (seed, epoch), the same on every rank and on resume
(BalanceBenchmark: Python's `random.shuffle` at each epoch's start); a removed modality's feature is
zeroed before the fusion head, which for a linear or sum head equals the official subtraction of its
logit share and also defines removal for the MLP head. Under several processes each rank's penalty is
its own samples' sum, and DDP averages the gradients: the penalty's scale is a rank's batch, as the
official single-process batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..options import MethodOptions, option
from .base import ZEROING_FUSIONS, ZEROING_NEEDS, Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def confidence_penalty(fewer: torch.Tensor, more: torch.Tensor, labels: torch.Tensor,
                       batch_clamp: bool) -> torch.Tensor:
    """The batch's confidence gained by removing modalities: per sample max(0, s·(conf(fewer) − conf(more))), s the
    trick-1 mask, summed (the authors'); or, with `batch_clamp`, max(0, Σ_i conf(fewer)_i − conf(more)_i)."""
    gain = fewer.softmax(1).max(1).values - more.softmax(1).max(1).values
    if batch_clamp:
        return gain.sum().clamp(min=0)
    with torch.no_grad():
        kept = ~((fewer.argmax(1) == labels) & (more.argmax(1) != labels))
    return (gain * kept).clamp(min=0).sum()


class Cml(Method):
    name = "cml"
    summary = ("joint + cross-entropy of the fused logits with modalities removed in a random order, and a\n"
               "            penalty when removing one makes the prediction more confident (Ma et al., ICML 2023)")
    fusions = ZEROING_FUSIONS
    fusion_needs = ZEROING_NEEDS

    class Options(MethodOptions):
        lambda_: float = option(0.1, "CML: weight λ of the penalty on confidence gained by removing modalities "
                                "(BalanceBenchmark: 0.1)")
        batch_clamp: bool = option(False, "CML: BalanceBenchmark's penalty, the batch's summed confidence gain "
                                   "clamped at 0 (default: the authors', each sample's gain clamped, samples whose "
                                   "removal turned a wrong prediction right left out)", before=True)

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.order = list(cfg.modalities)

    def begin_epoch(self, epoch: int, steps: range) -> None:
        mods = list(self.cfg.modalities)
        self.order = [mods[i] for i in np.random.default_rng([self.cfg.seed, epoch]).permutation(len(mods))]

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        labels = batch["label"]
        ce, penalty = F.cross_entropy(logits, labels), logits.new_zeros(())
        present, more = dict(feats), logits
        for removed in self.order[:-1]:
            present[removed] = torch.zeros_like(feats[removed])
            fewer = net.fuse(present)
            ce = ce + F.cross_entropy(fewer, labels)
            penalty = penalty + confidence_penalty(fewer, more, labels, self.cfg.cml_batch_clamp)
            more = fewer
        loss = ce / len(self.order) + self.cfg.cml_lambda * penalty
        return loss, {"ce": ce.detach() / len(self.order), "cml_penalty": penalty.detach()}

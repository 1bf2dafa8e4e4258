"""MLA: Multimodal Learning with Alternating unimodal adaptation (Zhang, Yoon, Bansal, Yao, CVPR 2024,
"Multimodal Representation Learning by Alternating Unimodal Adaptation"; official code
Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, main.py `train_epoch` (gs_flag) and
`valid` (dynamic), utils/utils.py `GSPlugin`; also GeWu-Lab/BalanceBenchmark trainer/MLA_trainer.py).

Training alternates uni-modal steps through one linear head W shared by every modality (the model's
`fusion: shared`, which the method picks when the run names no fusion): optimiser step s trains
modality m = modalities[s mod M] alone on L = CE(W f_m(x) + b, y). At test time the model fuses the
modalities' logits W f_m + b per sample with weights exp(−H_m) / Σ_k exp(−H_k), H_m the entropy of
softmax(W f_m + b) (models.entropy_weights). Optimiser: the official main.py trains with SGD, momentum
0.9, weight decay 1e-4 (lr 1e-3, StepLR 70 × 0.1; Adam only for its CAV-MAE backbone option): the
method's default here (with umt's cosine schedule).

Gradient modification (`mla_projection`, default off). The paper protects what the shared head learnt
from earlier steps by orthogonal weight modification (OWM). The official code's results were produced
without it: `GSPlugin.before_update` projects only a parameter named `module.weight`, and main.py passes
it the head `fusion_module.fc_out`, a plain nn.Linear whose parameters are `weight` and `bias`, so no
gradient was ever changed. The default follows the official results. `mla_projection: true` adds
textbook OWM: with r the mean feature of the step's batch (over the optimiser step's micro-batches and
all ranks) and α = 0.1^(1 + i/n) (i the step's index in its epoch of n steps),

    k = P r,   P ← P − k kᵀ / (α + rᵀ k),   P ← P / ‖P‖_F,   ∇W ← ∇W Pᵀ

from P = I; P shrinks along every mean feature seen so far, so W's update ΔW = −η ∇W Pᵀ barely moves
W r for those r. The first step of a run is neither projected nor recorded (the official
`exp_count != 0`). Not copied: the official update (and BalanceBenchmark's) divides k kᵀ element-wise by
the D×D matrix α + k r (torch.mm of a column and a row), not by the scalar α + rᵀ k of OWM, which
makes P no longer a projector-like matrix; the official `w.grad = grad Pᵀ` replaces the gradient
(followed here), BalanceBenchmark adds the projection to it (`grad += grad Pᵀ`).

Deviations, because umt's loop takes one loss per micro-batch and one optimiser step per window:
- the official code trains every modality on each batch in turn (M optimiser steps per batch); here
  the modalities take turns over consecutive optimiser steps, each on its own batch, so per epoch each
  modality sees 1/M of the batches (train M times the epochs for the official number of steps);
- the test-time weights are per sample (see models.entropy_weights); the official `valid` takes the
  softmax over the batch axis.
The encoders idle in a step take no gradient, as in the official code (whose optimiser skips their
`None` gradients): the loss adds 0·(fused logits), so DDP reduces a zero gradient for every parameter
(replicas stay in lock-step without find_unused_parameters), and `after_backward` sets the idle
encoders' gradients to None so the optimiser leaves them, their momentum (Adam's moments) and their
weight decay untouched.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..options import MethodOptions, option
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def owm_update(projector: torch.Tensor, mean_feature: torch.Tensor, alpha: float) -> torch.Tensor:
    """P ← (P − k kᵀ / (α + rᵀ k)) / ‖·‖_F with k = P r: one more direction r to protect."""
    k = projector @ mean_feature
    updated = projector - torch.outer(k, k) / (alpha + mean_feature @ k)
    return updated / torch.linalg.matrix_norm(updated)


class Mla(Method):
    name = "mla"
    summary = ("alternating uni-modal steps through one shared head (--fusion shared, its default);\n"
               "            entropy-weighted fusion at test time (Zhang et al., CVPR 2024); SGD by default")
    fusions = ("shared",)
    fusion_needs = "trains one linear head shared by every modality and fuses by entropy at test time"
    optimizer = "sgd"
    authors_lr = 0.001

    class Options(MethodOptions):
        projection: bool = option(False, "MLA: project the shared head's gradient by textbook OWM (the paper's "
                                  "gradient modification; the official code's results had none)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.steps = 0                     # optimiser steps done: step s trains modalities[s mod M]
        self.projector: torch.Tensor | None = None  # P, [D, D]
        self.epoch_steps = range(0)
        self._sum: torch.Tensor | None = None        # the window's feature sum and sample count so far
        self._count = 0

    @property
    def active(self) -> str:
        return self.cfg.modalities[self.steps % len(self.cfg.modalities)]

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch_steps = steps

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        m = self.active
        loss = F.cross_entropy(net.head(feats[m]), batch["label"])
        if self.cfg.mla_projection:
            feature = feats[m].detach().float()
            self._sum = feature.sum(0) if self._sum is None else self._sum + feature.sum(0)
            self._count += len(feature)
        # 0·(fused logits): every parameter gets a (zero) gradient, so DDP's buckets fill on every rank
        return loss + 0.0 * logits.sum(), {f"ce_{m}": loss.detach()}

    @torch.no_grad()
    def after_backward(self, net, batch, feats, epoch, step, accelerator) -> Parts:
        m = self.active
        for other, encoder in net.encoders.items():
            if other != m:
                for p in encoder.parameters():
                    p.grad = None
        if self.cfg.mla_projection:
            self._project(net, step, accelerator)
        self.steps = step + 1
        return {}

    def _project(self, net, step: int, accelerator) -> None:
        """OWM: record the step's mean feature in P, and project the shared head's gradient by it."""
        total = accelerator.reduce(torch.cat([self._sum, self._sum.new_tensor([self._count])]), "sum")
        mean_feature = total[:-1] / total[-1]
        self._sum, self._count = None, 0
        if self.projector is None:
            self.projector = torch.eye(len(mean_feature))
        self.projector = self.projector.to(mean_feature.device)
        if step > 0:
            position = (step - self.epoch_steps.start) / max(len(self.epoch_steps), 1)
            self.projector = owm_update(self.projector, mean_feature, 0.1 ** (1 + position))
            grad = net.head.weight.grad
            grad.copy_(grad @ self.projector.T)

    def describe(self) -> str:
        order = " → ".join(self.cfg.modalities)
        projection = "projected (OWM)" if self.cfg.mla_projection else "not projected (as the official results)"
        return f"- MLA: alternating {order}; shared-head gradient {projection}; entropy-weighted test-time fusion\n"

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "projector": None if self.projector is None else self.projector.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.projector = state["projector"]

"""PMR, prototypical modal rebalance (Fan et al., CVPR 2023): joint training plus a prototypical
cross-entropy that pulls the weaker modality's features toward their class prototypes.

Prototypes: for each modality m and class c, the mean feature of the class, p_m,c = mean_{i: y_i=c} f_m(x_i),
over the training split (centre views, model in eval mode) before training and again after the first
epoch (the official `epoch <= 0` branch: plain means, no blend), then after every later epoch
    p_m ← (1 − μ) · mean + μ · p_m_old          (μ = momentum_coef = 0.2)
(a class absent from the split keeps its old prototype, or zero at the start).
Prototypical logits are negative Euclidean distances, z_m,i,c = −‖f_m(x_i) − p_m,c‖, and per batch
    s_m = Σ_i softmax(z_m,i)_{y_i},   ρ_m = s_m / mean_{o≠m} s_o    (two modalities: the official ratio_a_p),
    β_m = α if ρ_m < 1 else 0,        L = CE(fused logits) + Σ_m β_m · CE(z_m, y)
inside the rebalancing epochs (outside them L is the fused cross-entropy alone).

Source: fanyunfeng-bit/Modal-Imbalance-PMR, main_Prototype_grad.py (`calculate_prototype`, `EU_dist`, the
`Proto` branch of `train_epoch`; defaults α = 1.0, momentum_coef = 0.2, modulation epochs 0-100; SGD,
momentum 0.9, weight decay 1e-4, lr 1e-4, StepLR 70 × 0.1: SGD is the method's default here, with umt's
cosine schedule and lr). That
code uses neither a temperature nor the paper's entropy regulariser on the dominant modality, and sets
β to 0 or α (the paper's β grows with the imbalance); so does this module.
Deviations: the prototypes average the whole training split (the official code stops after a tenth
of the loader's batches), and every rank computes them from the same gathered features; the scores
s_m are summed over all ranks' samples, so every replica weights the losses alike. With gradient
accumulation, each micro-batch's β comes from its own samples (as separate batches would).
Cost: one forward pass over the training split per epoch (and one before training). That pass reads
the split as evaluation does, so a damaged training sample stops a PMR run even with --bad-samples skip.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import reduce

from ..options import ConfigError, MethodOptions, option
from ..evaluate import evaluate_split
from ..models import LateFusionNet
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean features [C, D] and which classes had samples [C]."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes)
    return sums / counts.clamp(min=1)[:, None].to(features.dtype), counts > 0


def updated_prototypes(old: torch.Tensor | None, means: torch.Tensor, present: torch.Tensor,
                       momentum: float) -> torch.Tensor:
    """(1 − μ)·mean + μ·old; the first prototypes are the means (absent classes: old, or zero)."""
    if old is None:
        return torch.where(present[:, None], means, torch.zeros_like(means))
    return torch.where(present[:, None], (1 - momentum) * means + momentum * old, old)


def rebalance_coefficients(scores: dict[str, float], alpha: float) -> dict[str, float]:
    """β_m = α for a modality whose prototype score falls below the others' mean, else 0."""
    coeffs = {}
    for m, s in scores.items():
        others = [v for o, v in scores.items() if o != m]
        coeffs[m] = alpha if s / (sum(others) / len(others)) < 1 else 0.0
    return coeffs


class Pmr(Method):
    name = "pmr"
    summary = ("joint + prototypical cross-entropy on the weaker modality (Fan et al., CVPR 2023):\n"
               "            class prototypes per modality, updated with momentum each epoch; SGD by default")
    optimizer = "sgd"
    authors_lr = 0.0001

    class Options(MethodOptions):
        alpha: float = option(1.0, "PMR: weight α of the weaker modality's prototypical cross-entropy "
                              "(main_Prototype_grad.py: --alpha 1.0)")
        momentum: float = option(0.2, "PMR: share of the previous prototypes kept at each epoch's update "
                                 "(--momentum_coef 0.2)")
        start: int = option(0, "PMR: first rebalanced epoch (--modulation_starts 0)")
        end: int | None = option(None, "PMR: epoch at which rebalancing stops (default: never)")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.prototypes: dict[str, torch.Tensor] = {}
        self.epoch = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if not 0 <= cfg.pmr_momentum <= 1:
            raise ConfigError(f"pmr momentum must lie in [0, 1], got {cfg.pmr_momentum}")

    def prepare(self, net, device) -> tuple[int, int | None]:
        self._update(net, device, None, momentum=0.0)
        return super().prepare(net, device)

    @torch.no_grad()
    def _update(self, net: LateFusionNet, device: torch.device, accelerator, momentum: float) -> None:
        """Prototypes from the training split's features (every rank gets the same gathered features)."""
        cfg = self.cfg
        net.eval()
        train = evaluate_split(cfg, net, "train", device, accelerator)
        net.train()
        for m in cfg.modalities:
            means, present = class_means(train["features"][m], train["labels"], net.cfg.num_classes)
            old = self.prototypes.get(m)
            self.prototypes[m] = updated_prototypes(None if old is None else old.cpu(), means, present,
                                                    momentum).to(device)

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        cfg = self.cfg
        loss = F.cross_entropy(logits, batch["label"])
        parts = {"ce": loss.detach()}
        if not cfg.pmr_start <= self.epoch < (cfg.pmr_end if cfg.pmr_end is not None else math.inf):
            return loss, parts
        labels = batch["label"]
        proto_logits = {m: -torch.cdist(feats[m], self.prototypes[m], compute_mode="donot_use_mm_for_euclid_dist")
                        for m in cfg.modalities}
        sums = reduce(torch.stack([z.detach().softmax(1).gather(1, labels[:, None]).sum()
                                   for z in proto_logits.values()]), "sum")
        coeffs = rebalance_coefficients(dict(zip(cfg.modalities, sums.tolist())), cfg.pmr_alpha)
        for m, z in proto_logits.items():
            proto = F.cross_entropy(z, labels)
            loss = loss + coeffs[m] * proto
            parts[f"pmr_ce_{m}"], parts[f"pmr_beta_{m}"] = proto.detach(), torch.tensor(coeffs[m])
        return loss, parts

    def end_of_epoch(self, net, val, accelerator) -> dict[str, Any]:
        if self.epoch + 1 < self.cfg.epochs:  # after the last epoch no step would use them
            # after the first epoch plain means, as the official `epoch <= 0`; then the momentum blend
            self._update(net, accelerator.device, accelerator, self.cfg.pmr_momentum if self.epoch > 0 else 0.0)
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": {m: p.cpu() for m, p in self.prototypes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(iter(self.prototypes.values())).device
        self.prototypes = {m: p.to(device) for m, p in state["prototypes"].items()}

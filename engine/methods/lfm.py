"""LFM (Yang et al., NeurIPS 2024, "Facilitating Multimodal Classification via Dynamically Learning Modality
Gap"), as its authors' code: the fused cross-entropy and an alignment term between the modalities'
predictions, traded off by a weight learnt once per epoch from a hypergradient.

With u_m = W_m f_m + b/M modality m's additive share of the fused logits (LateFusionNet.modality_logits),
p_m = softmax(u_m), and for a pair (a, b), n = (p_a + p_b)/2,
    J(a, b) = ½ (KL(n ‖ p_a) + KL(n ‖ p_b))      (batch means; the official `Alignment`, whose
                                                  kl_div(p.log(), n) is KL(n ‖ p), not KL(p ‖ n))
    L = 2 (α_0 · CE(fused logits, y) + α_1 · mean over pairs J),   α_0 = 1 − α_1, α_1 = 0.95 at the start.
Before each epoch, on one fixed batch (the first quarter of the validation split's first batch, model
in training mode), with L_α = α_0 CE + α_1 · mean J and g = ∇_θ CE over all parameters θ:
    h = ∇_θ (∇_θ L_α · g)  (the Hessian of L_α times g, g held fixed),
    α_1 ← clip(α_1 − η_α · mean(h_first), 0.05, 0.95),
h_first being h's block for the model's first parameter tensor only (the official
`hessian_vector_prod[0].mean()`), and η_α (1e-4) halved before the update of every epoch e > 0 with
e mod 20 = 0.

Source: the authors' MohammedRakib/LFM, Crema_epoch_learnable.py at its latest commit ad44fa0 (`Alignment`
37-44; `getAlpha_Learnable` 55-97: mean of the first block, lr_alpha halved at every 20th epoch, clip [0.05,
0.95]; 236-257: SGD lr 1e-2, momentum 0.9, weight decay 1e-4 from data/crema.json, batch 64, cls_k = [0.05,
0.95], i.e. α_1 = 0.95 — an earlier commit, 1b96e26, started at 0.98 with the clip [0.1, 0.9], lr_alpha 1e-7
and the sum of the block); GeWu-Lab/BalanceBenchmark, balancemm/trainer/LFM_trainer.py (the same update;
lr_alpha 0.0001 in configs/trainer_config.yaml). BalanceBenchmark differs in the start, α = {0: 0.95, 1:
0.05} (LFM_trainer.py:146), the roles of the authors' two weights swapped, so its loss stays close to
joint's: `--lfm-alpha 0.05` (`lfm.alpha`).
Deviations: the fixed batch is a quarter of the validation split's first batch as this run's evaluation
reads it (batch size --batch-size, centre views; the authors hold out 16 random training samples and use
half of them, BalanceBenchmark a quarter of its first validation batch), the same on every rank, and the
new α is rank 0's, broadcast. The learning rate is umt's SGD default with its cosine schedule (the authors':
0.01, ×0.1 at epoch 70; with α_1 = 0.95 the cross-entropy weighs 0.1, and 3 epochs at 0.01 reach 0.23
top-1 on 10-class vectors, chance 0.10).
Cost: two extra backward passes (one of second order) through the whole model on a quarter batch per
epoch.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list

from umt.loaders.loading.loader import finish_device, make_loader
from umt.loaders.stored.views import ViewPolicy

from ..options import ConfigError, MethodOptions, option
from ..models import LateFusionNet
from .base import Method, Parts

if TYPE_CHECKING:
    from ..config import TrainConfig


def alignment(u_a: torch.Tensor, u_b: torch.Tensor) -> torch.Tensor:
    """½ (KL(n ‖ p_a) + KL(n ‖ p_b)), n the mean of the two softmaxes, averaged over the batch."""
    p, q = u_a.softmax(-1), u_b.softmax(-1)
    n = (p + q) / 2
    return 0.5 * (F.kl_div(p.log(), n, reduction="batchmean") + F.kl_div(q.log(), n, reduction="batchmean"))


def lfm_terms(net: LateFusionNet, logits: torch.Tensor, feats: dict[str, torch.Tensor],
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE of the fused logits, mean alignment over the pairs of modalities)."""
    shares = net.modality_logits(feats)
    pairs = list(itertools.combinations(net.cfg.modalities, 2))
    return F.cross_entropy(logits, labels), sum(alignment(shares[a], shares[b]) for a, b in pairs) / len(pairs)


def alpha_gradient(net: LateFusionNet, batch: dict[str, torch.Tensor], alpha: float) -> float:
    """mean over the first parameter tensor of ∇_θ(∇_θ L_α · ∇_θ CE), L_α = (1 − α) CE + α J."""
    params = list(net.parameters())
    logits, feats = net(batch)
    ce, align = lfm_terms(net, logits, feats, batch["label"])
    total = torch.autograd.grad((1 - alpha) * ce + alpha * align, params, create_graph=True)
    cls = torch.autograd.grad(ce, params, retain_graph=True)
    hvp = torch.autograd.grad(total, params, grad_outputs=cls)
    return hvp[0].mean().item()


class Lfm(Method):
    name = "lfm"
    summary = ("joint with an alignment term between the modalities' predictions, its weight learnt per epoch\n"
               "            from a hypergradient (Yang et al., NeurIPS 2024; needs --fusion linear or sum)")
    fusions = ("linear", "sum")
    fusion_needs = "aligns each modality's share of the fused logits"
    optimizer = "sgd"
    authors_lr = 0.01

    class Options(MethodOptions):
        lr_alpha: float = option(1e-4, "LFM: step size of the per-epoch update of the alignment weight (halved "
                                 "every 20 epochs; the authors' lr_alpha)")
        alpha: float = option(0.95, "LFM: the alignment weight's start (the authors' cls_k [0.05, 0.95]; "
                              "BalanceBenchmark: 0.05)", before=0.05)

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.alpha = cfg.lfm_alpha    # α_1, the alignment weight
        self.lr_alpha = cfg.lfm_lr_alpha
        self.epoch = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if not 0.05 <= cfg.lfm_alpha <= 0.95:
            raise ConfigError(f"lfm alpha must lie in the update's range [0.05, 0.95], got {cfg.lfm_alpha}")

    def prepare(self, net, device) -> tuple[int, int | None]:
        cfg = self.cfg
        first = next(iter(make_loader(cfg.data, "val", spec=cfg.view, modalities=cfg.modalities, policy=ViewPolicy(0),
                                      batch_size=cfg.batch_size, num_workers=0,
                                      finish_on=finish_device(cfg.finish, device))))
        quarter = len(first["label"]) // 4
        if quarter == 0:
            raise ConfigError(f"lfm learns its weight on a quarter of the first validation batch: {cfg.data}'s holds "
                              f"{len(first['label'])} sample(s); use a batch size of 4 or more")
        self.batch = {k: v[:quarter].to(device) for k, v in first.items()}
        self._update(net, 0)
        return super().prepare(net, device)

    def _update(self, net: LateFusionNet, epoch: int) -> None:
        """The official update before epoch `epoch`, from rank 0's numbers."""
        if epoch % 20 == 0 and epoch != 0:
            self.lr_alpha /= 2
        alpha = min(0.95, max(0.05, self.alpha - self.lr_alpha * alpha_gradient(net, self.batch, self.alpha)))
        self.alpha = broadcast_object_list([alpha])[0]

    def begin_epoch(self, epoch: int, steps: range) -> None:
        self.epoch = epoch

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        ce, align = lfm_terms(net, logits, feats, batch["label"])
        loss = 2 * ((1 - self.alpha) * ce + self.alpha * align)
        return loss, {"ce": ce.detach(), "lfm_alignment": align.detach(), "lfm_alpha": torch.tensor(self.alpha)}

    def end_of_epoch(self, net, val, accelerator) -> dict[str, Any]:
        if self.epoch + 1 < self.cfg.epochs:  # the weight of the next epoch
            self._update(net, self.epoch + 1)
        return {"lfm_alpha": self.alpha}

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lr_alpha": self.lr_alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.lr_alpha = state["alpha"], state["lr_alpha"]

"""Gradient Blending (Wang, Tran, Feiszli, CVPR 2020): fused and auxiliary heads' losses, weighted
per epoch by w_k ∝ G_k / O_k².

Loss = Σ_k w_k · CE_k over the fused head and
one auxiliary linear head per modality. After each epoch, with train and validation losses of each
head at the previous and current epoch: generalisation G_k = L^val_prev − L^val_now, overfitting
O_k = (L^val_now − L^train_now) − (L^val_prev − L^train_prev), and w_k ∝ G_k / O_k² (negative G
clipped to 0; normalised to sum 1). Uniform weights until two epochs have been measured.

At each epoch's end both losses of each head, L^train and L^val, are measured the same way: the
mean cross-entropy over the whole split (centre views, model in eval mode, no gradient), as the
paper's overfitting-to-generalisation ratio compares the two on one footing (a running mean of the
epoch's micro-batch losses in train mode would mix models that changed during the epoch, and
dropout or batch statistics, into L^train only). Every rank computes them from the same gathered
outputs and takes rank 0's, so the method's state (weights, last epoch's losses) is the same on
every rank, holds nothing mid-epoch, and a resumed run continues exactly on any number of processes.
Cost: one forward pass over the training split per epoch. Optimiser: AdamW by default (the paper's
video models were trained with SGD in Caffe2, whose code was not checked here).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list

from ..evaluate import evaluate_split
from ..models import LateFusionNet
from .base import Method, Parts


class GBlend(Method):
    name = "gblend"
    summary = "joint + auxiliary uni-modal heads, losses weighted by gradient blending (Wang et al., CVPR 2020)"

    def __init__(self, cfg):
        super().__init__(cfg)
        heads = ("fused", *cfg.modalities)
        self.weights = {k: 1 / len(heads) for k in heads}
        self.previous: dict[str, tuple[float, float]] | None = None  # (train, val) loss per head, last epoch

    def model_options(self) -> dict[str, Any]:
        return {"aux_heads": True}

    def loss(self, net, batch, logits, feats) -> tuple[torch.Tensor, Parts]:
        losses = head_losses(net, logits, feats, batch["label"])
        return sum(self.weights[k] * v for k, v in losses.items()), {f"ce_{k}": v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def end_of_epoch(self, net, val, accelerator) -> dict[str, Any]:
        """The next epoch's weights from this and the previous epoch's (train, val) head losses."""
        cfg, device = self.cfg, accelerator.device
        net.eval()
        train = evaluate_split(cfg, net, "train", device, accelerator)
        net.train()

        def losses(split: dict) -> dict[str, float]:
            feats = {m: f.to(device) for m, f in split["features"].items()}
            return {k: v.item() for k, v in head_losses(net, split["logits"].to(device), feats,
                                                                  split["labels"].to(device)).items()}

        train_loss, val_loss = losses(train), losses(val)
        now = {k: (train_loss[k], val_loss[k]) for k in train_loss}
        now = broadcast_object_list([now])[0]  # rank 0's numbers on every rank, whatever its arithmetic
        if self.previous is not None:
            self.weights = blend_weights(self.previous, now)
        self.previous = now
        return {"blend_weights": dict(self.weights)}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights, self.previous = state["weights"], state["previous"]


def head_losses(net: LateFusionNet, logits: torch.Tensor, feats: dict[str, torch.Tensor],
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy of the fused head and of each modality's auxiliary head (G-Blending)."""
    losses = {"fused": F.cross_entropy(logits, labels)}
    for m, head in net.aux_heads.items():
        losses[m] = F.cross_entropy(head(feats[m]), labels)
    return losses


def blend_weights(prev: dict[str, tuple[float, float]], now: dict[str, tuple[float, float]]) -> dict[str, float]:
    """w_k ∝ G_k / O_k² from (train, val) losses per head at two epochs."""
    raw = {}
    for k, (train_now, val_now) in now.items():
        train_prev, val_prev = prev[k]
        gain = max(val_prev - val_now, 0.0)
        overfit = (val_now - train_now) - (val_prev - train_prev)
        raw[k] = gain / (overfit ** 2 + 1e-8)
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()} if total > 0 else {k: 1 / len(raw) for k in raw}
